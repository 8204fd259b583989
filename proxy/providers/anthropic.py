"""Anthropic Messages API provider: OpenAI chat requests in, OpenAI responses and chunks out.

The translation lives in proxy.anthropic (pure functions); this module is the I/O: one pooled
ClientSession, the request, status and error mapping, and a thin stream loop. A stream is peeked
up to its first chunk before `chat` returns, so an `error` event sent right after the 200
(e.g. overloaded_error) is still a real HTTP status that fallbacks can act on.

Timeouts (provider `timeouts`): `connect` for the TCP/TLS connection, `first_byte` for the
streaming response's first event, `idle` between stream reads, `total` for the whole exchange.
Provider option `structured_outputs`: auto (by model name) | native | tool.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, ClassVar

import aiohttp
import orjson

from proxy.anthropic.request import Options, Translated, to_anthropic
from proxy.anthropic.response import error_from_response, to_openai, usage_from_anthropic
from proxy.anthropic.stream import StreamTranslator
from proxy.context import JSONReply, StreamReply
from proxy.errors import GatewayError, ProviderError
from proxy.providers.base import Provider
from proxy.sse import DONE, SSEEvent, data_event, iter_events

if TYPE_CHECKING:
    from proxy.context import Reply, RequestContext

API_VERSION = "2023-06-01"
MAX_ERROR_BODY = 64 * 1024
_STRUCTURED = {"auto": None, "native": True, "tool": False}


class AnthropicProvider(Provider):
    type: ClassVar[str] = "anthropic"
    default_capabilities: ClassVar[dict[str, bool]] = {
        "vision": True, "tools": True, "structured_outputs": True, "reasoning": True,
        "prompt_caching": True, "pdf": True, "audio": False}
    OPTIONS: ClassVar[dict[str, tuple]] = {"structured_outputs": ("string", "auto")}

    def __init__(self, config: Any):
        super().__init__(config)
        mode = (getattr(config, "options", None) or {}).get("structured_outputs") or "auto"
        if mode not in _STRUCTURED:
            raise ValueError(f"provider {self.name!r}: options.structured_outputs must be auto, native or tool")
        self._native_structured: bool | None = _STRUCTURED[mode]
        self._session: aiohttp.ClientSession | None = None
        self._url = (config.base_url or "https://api.anthropic.com").rstrip("/") + "/v1/messages"

    async def start(self) -> None:
        if self._session is None:
            limit = getattr(self.config, "max_connections", 256)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- helpers -------------------------------------------------------------------------

    def _timeouts(self) -> tuple[float, float, float, float]:
        t = getattr(self.config, "timeouts", None)
        return (float(getattr(t, "connect", 10.0)), float(getattr(t, "first_byte", 120.0)),
                float(getattr(t, "idle", 60.0)), float(getattr(t, "total", 600.0)))

    def _headers(self, betas: tuple[str, ...]) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        headers.update(getattr(self.config, "headers", None) or {})
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        if betas:
            configured = headers.get("anthropic-beta")
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

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ProviderError(f"provider {self.name!r} is not started", code="provider_not_started")
        return self._session

    async def _error(self, resp: aiohttp.ClientResponse) -> GatewayError:
        body = bytearray()
        while len(body) < MAX_ERROR_BODY:      # read() may return early: loop up to the cap
            piece = await resp.content.read(MAX_ERROR_BODY - len(body))
            if not piece:
                break
            body += piece
        return error_from_response(resp.status, bytes(body), provider=self.name,
                                   retry_after=resp.headers.get("retry-after"))

    def _transport_error(self, exc: BaseException, stage: str) -> ProviderError:
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return ProviderError(f"{self.name}: timed out {stage}", code="upstream_timeout")
        return ProviderError(f"{self.name}: connection failed {stage} ({type(exc).__name__})",
                             code="upstream_unreachable")

    # --- chat ----------------------------------------------------------------------------

    async def chat(self, ctx: "RequestContext", body: dict) -> "Reply":
        translated = to_anthropic(body, self.options_for(ctx))
        stream = bool(body.get("stream"))
        translated.body["stream"] = stream
        if stream:
            return await self._stream(ctx, translated)
        return await self._complete(ctx, translated)

    async def _complete(self, ctx: "RequestContext", tr: Translated) -> JSONReply:
        session = self._session_or_fail()
        connect, _first, _idle, total = self._timeouts()
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        try:
            async with session.post(self._url, data=orjson.dumps(tr.body), headers=self._headers(tr.betas),
                                    timeout=timeout) as resp:
                if resp.status >= 400:
                    raise await self._error(resp)
                raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc, "waiting for the response") from exc
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(f"{self.name}: response is not JSON", code="upstream_bad_response") from exc
        if not isinstance(message, dict) or message.get("type") == "error":
            raise error_from_response(502, message, provider=self.name)
        out = to_openai(message, json_tool=tr.json_tool, created=int(ctx.created))
        ctx.usage = usage_from_anthropic(message.get("usage"))
        out["usage"] = ctx.usage.to_openai(ctx.finalize_cost())
        return JSONReply(body=out)

    async def _stream(self, ctx: "RequestContext", tr: Translated) -> StreamReply:
        session = self._session_or_fail()
        connect, first_byte, idle, total = self._timeouts()
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=idle)
        translator = StreamTranslator(json_tool=tr.json_tool, provider=self.name,
                                      model=str(tr.body.get("model") or ""), created=int(ctx.created))
        ctx.usage = translator.usage       # one live object, updated as events arrive
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_byte):
                resp = await session.post(self._url, data=orjson.dumps(tr.body),
                                          headers=self._headers(tr.betas), timeout=timeout)
                if resp.status >= 400:
                    raise await self._error(resp)
                events = iter_events(resp.content.iter_any())
                first = await self._peek(events, translator)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if resp is not None:
                resp.close()
            raise self._transport_error(exc, "before the first event") from exc
        except BaseException:
            if resp is not None:
                resp.close()
            raise
        return StreamReply(self._events(ctx, resp, events, translator, first))

    async def _peek(self, events: AsyncIterator[SSEEvent], translator: StreamTranslator) -> list[dict]:
        """Read events until the first chunk (message_start), so early errors are HTTP errors."""
        async for event in events:
            chunks = _feed(translator, event)
            if chunks or translator.done:
                return chunks
        raise ProviderError(f"{self.name}: stream ended before any event", code="upstream_bad_response")

    async def _events(self, ctx: "RequestContext", resp: aiohttp.ClientResponse,
                      events: AsyncGenerator[SSEEvent, None], translator: StreamTranslator,
                      first: list[dict]) -> AsyncIterator[bytes]:
        finished = False
        try:
            for chunk in first:
                yield data_event(orjson.dumps(chunk))
            try:
                while not translator.done:
                    event = await anext(events, None)
                    if event is None:
                        raise ProviderError(f"{self.name}: stream ended before message_stop",
                                            code="upstream_stream_truncated")
                    for chunk in _feed(translator, event):
                        yield data_event(orjson.dumps(chunk))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                raise self._transport_error(exc, "mid-stream") from exc
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
            await events.aclose()


def _feed(translator: StreamTranslator, event: SSEEvent) -> list[dict]:
    if not event.data:
        return []                  # comments and keep-alives
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError as exc:
        raise ProviderError("anthropic stream sent an event that is not JSON",
                            code="upstream_bad_response") from exc
    if not isinstance(data, dict):
        raise ProviderError("anthropic stream sent an event that is not an object", code="upstream_bad_response")
    try:
        return translator.feed(data.get("type") or event.event or "", data)
    except (AttributeError, KeyError, TypeError) as exc:     # a malformed event never ends a stream silently
        raise ProviderError(f"anthropic stream sent a malformed {data.get('type')!r} event",
                            code="upstream_bad_response") from exc
