"""Claude targets behind /v1/messages and /v1/messages/count_tokens: the client's request as sent.

The body goes to Anthropic unchanged but for `model` (the target's upstream name) and the
gateway's own fields (removed by proxy.native); the client's `anthropic-beta` and
`anthropic-version` headers and the query string (`?beta=true`) go with it; the provider's key
replaces the client's. The answer comes back as it came: the JSON bytes, or each SSE event's
bytes. Only the usage is read (message_start, message_delta) for the ledger and cost.

Errors before the first event are gateway errors (retries, fallbacks, Anthropic's shape at the
edge); a stream is peeked up to its `message_start`, so an `error` event sent first (e.g.
overloaded_error) is still a real status. Later `error` events go to the client as sent and
mark the request failed (502) in the ledger.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncGenerator, AsyncIterator

import aiohttp
import orjson

from proxy.anthropic.response import error_from_event, error_from_response, usage_from_anthropic
from proxy.context import JSONReply, StreamReply
from proxy.errors import ProviderError
from proxy.sse import SSEEvent, iter_events

if TYPE_CHECKING:
    from proxy.context import RequestContext
    from proxy.providers.anthropic import AnthropicProvider

API_VERSION = "2023-06-01"         # when the client sends no anthropic-version
MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024


def _url(provider: "AnthropicProvider", path: str, ctx: "RequestContext") -> str:
    base = (provider.config.base_url or "https://api.anthropic.com").rstrip("/")
    query = ctx.request.query_string
    return f"{base}{path}?{query}" if query else base + path


def _headers(provider: "AnthropicProvider", ctx: "RequestContext") -> dict[str, str]:
    client = ctx.request.headers
    headers = {"content-type": "application/json",
               "anthropic-version": client.get("anthropic-version") or API_VERSION}
    headers.update(provider.config.headers or {})
    betas = [h for h in client.getall("anthropic-beta", ()) if h.strip()]
    configured = headers.get("anthropic-beta")
    if betas:
        headers["anthropic-beta"] = ",".join(([configured] if configured else []) + betas)
    if provider.config.api_key:
        headers["x-api-key"] = provider.config.api_key
    return headers


async def _post(provider: "AnthropicProvider", ctx: "RequestContext", path: str, body: dict,
                timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    """Send; a response with a success status, or the upstream's error as a GatewayError."""
    resp = await provider._session_or_fail().post(_url(provider, path, ctx), data=orjson.dumps(body),
                                                  headers=_headers(provider, ctx), timeout=timeout)
    if resp.status >= 400:
        try:
            raw = await resp.content.read(MAX_ERROR_BODY)
        finally:
            resp.close()
        raise error_from_response(resp.status, raw, provider=provider.name,
                                  retry_after=resp.headers.get("retry-after"))
    return resp


def _transport_error(provider, exc: BaseException, stage: str) -> ProviderError:
    if isinstance(exc, TimeoutError):
        return ProviderError(f"{provider.name}: timed out {stage}", code="upstream_timeout")
    return ProviderError(f"{provider.name}: connection failed {stage} ({type(exc).__name__})",
                         code="upstream_unreachable")


async def complete(ctx: "RequestContext", provider: "AnthropicProvider", body: dict,
                   path: str = "/v1/messages") -> JSONReply:
    """A non-streamed request (messages, or count_tokens with path=.../count_tokens): the JSON
    answer's bytes as they came; usage read from a message."""
    t = provider.config.timeouts
    timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.idle)
    try:
        async with asyncio.timeout(t.total):
            resp = await _post(provider, ctx, path, body, timeout)
            try:
                raw = await resp.content.read(MAX_RESPONSE_BODY + 1)
                while not resp.content.at_eof() and len(raw) <= MAX_RESPONSE_BODY:
                    raw += await resp.content.read(MAX_RESPONSE_BODY + 1 - len(raw))
            finally:
                resp.close()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_error(provider, exc, "waiting for the response") from exc
    if len(raw) > MAX_RESPONSE_BODY:
        raise ProviderError(f"{provider.name}: response over the size limit", code="upstream_too_large")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"{provider.name}: response is not JSON", code="upstream_malformed") from exc
    if not isinstance(message, dict) or message.get("type") == "error":
        raise error_from_response(502, message, provider=provider.name)
    if path == "/v1/messages":
        ctx.usage = usage_from_anthropic(message.get("usage"))
        ctx.finalize_cost()
    return JSONReply(body=raw)


async def messages(ctx: "RequestContext", provider: "AnthropicProvider", body: dict):
    if not body.get("stream"):
        return await complete(ctx, provider, body)
    t = provider.config.timeouts
    timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.idle)
    usage: dict = {}
    resp = None
    try:
        async with asyncio.timeout(t.first_byte):
            resp = await _post(provider, ctx, "/v1/messages", body, timeout)
            events = iter_events(resp.content.iter_any())
            head = await _peek(provider, events, usage)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        if resp is not None:
            resp.close()
        raise _transport_error(provider, exc, "before the first event") from exc
    except BaseException:
        if resp is not None:
            resp.close()
        raise
    return StreamReply(_forward(ctx, provider, resp, events, head, usage))


async def _peek(provider, events: AsyncIterator[SSEEvent], usage: dict) -> list[bytes]:
    """The events up to message_start (pings before it included); an error first is raised."""
    head: list[bytes] = []
    async for event in events:
        head.append(event.raw)
        kind, data = _parse(provider, event)
        if kind == "error":
            raise error_from_event(data, provider=provider.name)
        if kind == "message_start":
            _track(usage, kind, data)
            return head
    raise ProviderError(f"{provider.name}: stream ended before message_start", code="upstream_broken")


async def _forward(ctx: "RequestContext", provider, resp: aiohttp.ClientResponse,
                   events: AsyncGenerator[SSEEvent, None], head: list[bytes], usage: dict) -> AsyncIterator[bytes]:
    stopped = False
    try:
        ctx.usage = usage_from_anthropic(usage)
        ctx.finalize_cost()
        yield b"".join(head)
        try:
            async for event in events:
                kind, data = _parse(provider, event)
                if kind in ("message_delta", "message_start"):
                    _track(usage, kind, data)
                    ctx.usage = usage_from_anthropic(usage)
                    ctx.finalize_cost()
                elif kind == "error":       # sent on as it came; the ledger records the failure
                    err = error_from_event(data, provider=provider.name)
                    ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
                    stopped = True
                elif kind == "message_stop":
                    stopped = True
                yield event.raw
                if stopped:
                    break
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _transport_error(provider, exc, "mid-stream") from exc
        if not stopped:
            raise ProviderError(f"{provider.name}: stream ended before message_stop", code="upstream_stream_truncated")
    finally:
        resp.close()
        await events.aclose()


def _parse(provider, event: SSEEvent) -> tuple[str, dict]:
    """(type, data) of an event; comments and data-less events are ('', {})."""
    if not event.data:
        return "", {}
    if event.event not in (None, "message_start", "message_delta", "error"):
        return event.event, {}          # content events: forwarded without parsing
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"{provider.name}: stream sent an event that is not JSON",
                            code="upstream_malformed") from exc
    if not isinstance(data, dict):
        raise ProviderError(f"{provider.name}: stream sent an event that is not an object", code="upstream_malformed")
    return str(data.get("type") or event.event or ""), data


def _track(usage: dict, kind: str, data: dict) -> None:
    """Fold the usage of message_start (input, cache) and message_delta (output, cumulative)."""
    found = (data.get("message") or {}).get("usage") if kind == "message_start" else data.get("usage")
    if isinstance(found, dict):
        usage.update((k, v) for k, v in found.items() if v is not None)


async def count_tokens(ctx: "RequestContext", provider: "AnthropicProvider", body: dict) -> JSONReply:
    """POST /v1/messages/count_tokens forwarded; the answer ({"input_tokens": N}) as it came."""
    return await complete(ctx, provider, body, "/v1/messages/count_tokens")
