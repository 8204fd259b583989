"""Anthropic Messages API provider: OpenAI chat requests in, OpenAI responses and chunks out.

The translation lives in proxy.anthropic (pure functions); this module maps a request and its
reply through it. The HTTP side (pooled session, statuses, timeouts, bounded reads, the SSE
idle rule, secrets) is HTTPProvider's. A stream is peeked up to its first chunk before `chat`
returns, so an `error` event sent right after the 200 (e.g. overloaded_error) is still a real
HTTP status that fallbacks can act on; `timeouts.first_byte` covers the answer and that event.
Provider option `structured_outputs`: auto (by model name) | native | tool.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator, ClassVar

import aiohttp
import orjson

from proxy.anthropic.request import Options, Translated, to_anthropic
from proxy.anthropic.response import error_from_response, to_openai, usage_from_anthropic
from proxy.anthropic.stream import StreamTranslator
from proxy.context import JSONReply, StreamReply
from proxy.errors import GatewayError, UpstreamBadResponse, UpstreamTimeout, UpstreamTruncated
from proxy.providers.http import HTTPProvider, error_message
from proxy.sse import DONE, SSEEvent, data_event

if TYPE_CHECKING:
    from proxy.config import ProviderConfig
    from proxy.context import Reply, RequestContext

API_VERSION = "2023-06-01"
_STRUCTURED = {"auto": None, "native": True, "tool": False}


class AnthropicProvider(HTTPProvider):
    type: ClassVar[str] = "anthropic"
    default_capabilities: ClassVar[dict[str, bool]] = {
        "vision": True, "tools": True, "structured_outputs": True, "reasoning": True,
        "prompt_caching": True, "pdf": True, "audio": False}
    OPTIONS: ClassVar[dict[str, tuple]] = {"structured_outputs": ("string", "auto")}

    def __init__(self, config: "ProviderConfig"):
        super().__init__(config)
        mode = config.options.get("structured_outputs") or "auto"
        if mode not in _STRUCTURED:
            raise ValueError(f"provider {self.name!r}: options.structured_outputs must be auto, native or tool")
        self._native_structured: bool | None = _STRUCTURED[mode]
        self._url = (config.base_url or "https://api.anthropic.com").rstrip("/") + "/v1/messages"

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def status_error(self, status: int, raw: bytes, retry_after: str | None) -> GatewayError:
        return error_from_response(status, raw, provider=self.name, retry_after=retry_after, redact=self.redact)

    def _headers(self, betas: tuple[str, ...]) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if betas:
            configured = self.headers.get("anthropic-beta")
            headers["anthropic-beta"] = ",".join(([configured] if configured else []) + list(betas))
        return headers

    def options_for(self, ctx: "RequestContext") -> Options:
        match = ctx.match
        route = match.route if match is not None else None
        return Options(max_tokens_default=getattr(route, "max_tokens_default", None),
                       auto_cache=bool(getattr(route, "auto_cache", False)),
                       capabilities=dict(getattr(route, "capabilities", None) or {}),
                       reasoning_effort=getattr(match, "reasoning_effort", None),
                       native_structured=self._native_structured)

    # --- chat ----------------------------------------------------------------------------

    async def chat(self, ctx: "RequestContext", body: dict) -> "Reply":
        translated = to_anthropic(body, self.options_for(ctx))
        stream = bool(body.get("stream"))
        translated.body["stream"] = stream
        if stream:
            return await self._stream(ctx, translated)
        return await self._complete(ctx, translated)

    async def _complete(self, ctx: "RequestContext", tr: Translated) -> JSONReply:
        message = await self.read_json(await self.post(self._url, tr.body, self._headers(tr.betas)))
        if not isinstance(message, dict) or message.get("type") == "error":
            raise UpstreamBadResponse(f"provider {self.name!r} answered 200 with an error: "
                                      f"{self.message(error_message(message))}", code="upstream_error_body")
        try:
            out = to_openai(message, json_tool=tr.json_tool, created=int(ctx.created))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamBadResponse(f"provider {self.name!r} sent a malformed message") from exc
        ctx.usage = usage_from_anthropic(message.get("usage"))
        out["usage"] = ctx.usage.to_openai(ctx.finalize_cost())
        return JSONReply(body=out)

    async def _stream(self, ctx: "RequestContext", tr: Translated) -> StreamReply:
        translator = StreamTranslator(json_tool=tr.json_tool, provider=self.name, redact=self.redact,
                                      model=str(tr.body.get("model") or ""), created=int(ctx.created))
        ctx.usage = translator.usage       # one live object, updated as events arrive
        first_byte = self.config.timeouts.first_byte
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_byte):
                resp = await self.post(self._url, tr.body, self._headers(tr.betas))
                batches = self.events(resp)
                head = await self._peek(batches, translator)
        except BaseException as exc:
            if resp is not None:
                resp.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"provider {self.name!r} sent no event within {first_byte:g}s") from exc
            raise
        return StreamReply(self._events(ctx, resp, batches, translator, head))

    async def _peek(self, batches: AsyncIterator[list[SSEEvent]], translator: StreamTranslator
                    ) -> tuple[list[bytes], list[SSEEvent]]:
        """Read events until the first chunk (message_start), so early errors are HTTP errors:
        (that chunk as SSE events, the rest of its upstream read)."""
        async for batch in batches:
            for i, event in enumerate(batch):
                chunks = self._feed(translator, event)
                if chunks or translator.done:
                    return [data_event(orjson.dumps(c)) for c in chunks], batch[i + 1:]
        raise UpstreamBadResponse(f"provider {self.name!r}: stream ended before any event")

    def _translate(self, translator: StreamTranslator, batch: list[SSEEvent], out: list[bytes]
                   ) -> GatewayError | None:
        """Append the chunks of these events to `out` as SSE events; the error that ended them
        if one did (the chunks before it still go out first)."""
        for event in batch:
            if translator.done:
                break
            try:
                chunks = self._feed(translator, event)
            except GatewayError as err:
                return err
            out.extend(data_event(orjson.dumps(chunk)) for chunk in chunks)
        return None

    async def _events(self, ctx: "RequestContext", resp: aiohttp.ClientResponse,
                      batches: AsyncIterator[list[SSEEvent]], translator: StreamTranslator,
                      head: tuple[list[bytes], list[SSEEvent]]) -> AsyncIterator[bytes]:
        """One item per upstream read (the first with the peeked chunk)."""
        finished = False
        out, pending = head
        try:
            while True:
                failure = self._translate(translator, pending, out)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
                    out = []
                if failure is not None:
                    raise failure
                if translator.done:
                    break
                pending = await anext(batches, None)
                if pending is None:
                    raise UpstreamTruncated(f"provider {self.name!r}: stream ended before message_stop")
            if ctx.include_usage:
                yield data_event(orjson.dumps({
                    "id": translator.id, "object": "chat.completion.chunk", "created": translator.created,
                    "model": translator.model, "choices": [],
                    "usage": ctx.usage.to_openai(ctx.finalize_cost())}))
            yield DONE
            finished = True
        finally:
            if finished:
                resp.release()
            else:
                resp.close()       # client gone or upstream broken: drop the connection now
            await batches.aclose()

    def _feed(self, translator: StreamTranslator, event: SSEEvent) -> list[dict]:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadResponse(f"provider {self.name!r} sent a stream event that is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamBadResponse(f"provider {self.name!r} sent a stream event that is not an object")
        try:
            return translator.feed(data.get("type") or event.event or "", data)
        except (AttributeError, KeyError, TypeError) as exc:     # a malformed event never ends a stream silently
            raise UpstreamBadResponse(f"provider {self.name!r} sent a malformed {data.get('type')!r} event") from exc
