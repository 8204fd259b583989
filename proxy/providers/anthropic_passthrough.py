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
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
import orjson

from proxy.anthropic.response import error_from_event, usage_from_anthropic
from proxy.context import JSONReply, StreamReply
from proxy.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamTruncated
from proxy.sse import SSEEvent

if TYPE_CHECKING:
    from proxy.context import RequestContext
    from proxy.providers.anthropic import AnthropicProvider


def _url(provider: "AnthropicProvider", path: str, ctx: "RequestContext") -> str:
    base = (provider.config.base_url or "https://api.anthropic.com").rstrip("/")
    query = ctx.request.query_string
    return f"{base}{path}?{query}" if query else base + path


def _headers(provider: "AnthropicProvider", ctx: "RequestContext") -> dict[str, str]:
    """The client's anthropic-version and betas over the provider's session headers (which
    carry its key and configured headers)."""
    client = ctx.request.headers
    headers = {"content-type": "application/json"}
    version = client.get("anthropic-version")
    if version:
        headers["anthropic-version"] = version
    betas = [h for h in client.getall("anthropic-beta", ()) if h.strip()]
    configured = provider.headers.get("anthropic-beta")
    if betas:
        headers["anthropic-beta"] = ",".join(([configured] if configured else []) + betas)
    return headers


async def _post(provider: "AnthropicProvider", ctx: "RequestContext", path: str, body: dict) -> aiohttp.ClientResponse:
    """Send through the provider's HTTP base: a success status, or the upstream's error as a
    typed, redacted GatewayError."""
    return await provider.post(_url(provider, path, ctx), body, _headers(provider, ctx))


async def complete(ctx: "RequestContext", provider: "AnthropicProvider", body: dict,
                   path: str = "/v1/messages") -> JSONReply:
    """A non-streamed request (messages, or count_tokens with path=.../count_tokens): the JSON
    answer's bytes as they came (bounded by the provider's max_response_mb); usage read from
    a message."""
    raw = await provider.read_body(await _post(provider, ctx, path, body))
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponse(f"provider {provider.name!r} sent malformed JSON") from exc
    if not isinstance(message, dict) or message.get("type") == "error":
        raise error_from_event(message, provider=provider.name, redact=provider.redact)
    if path == "/v1/messages":
        ctx.usage = usage_from_anthropic(message.get("usage"))
        ctx.finalize_cost()
    return JSONReply(body=bytes(raw))


async def messages(ctx: "RequestContext", provider: "AnthropicProvider", body: dict):
    if not body.get("stream"):
        return await complete(ctx, provider, body)
    usage: dict = {}
    resp = await _post(provider, ctx, "/v1/messages", body)
    events = _events(provider, resp)
    try:
        async with asyncio.timeout(provider.config.timeouts.first_byte):
            head = await _peek(provider, events, usage)
    except TimeoutError as exc:
        await events.aclose()
        raise UpstreamTimeout(f"provider {provider.name!r} sent no message_start in time") from exc
    except BaseException:
        await events.aclose()
        raise
    return StreamReply(_forward(ctx, provider, events, head, usage))


async def _events(provider: "AnthropicProvider", resp: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """The stream's data events one by one (the HTTP base's idle rule and typed errors); the
    connection released at the end."""
    try:
        async for batch in provider.events(resp):
            for event in batch:
                yield event
    finally:
        resp.close()


async def _peek(provider, events: AsyncIterator[SSEEvent], usage: dict) -> list[bytes]:
    """The events up to message_start (pings before it included); an error first is raised."""
    head: list[bytes] = []
    async for event in events:
        head.append(event.raw)
        kind, data = _parse(provider, event)
        if kind == "error":
            raise error_from_event(data, provider=provider.name, redact=provider.redact)
        if kind == "message_start":
            _track(usage, kind, data)
            return head
    raise UpstreamTruncated(f"provider {provider.name!r}: stream ended before message_start")


async def _forward(ctx: "RequestContext", provider, events: AsyncIterator[SSEEvent], head: list[bytes],
                   usage: dict) -> AsyncIterator[bytes]:
    stopped = False
    try:
        ctx.usage = usage_from_anthropic(usage)
        ctx.finalize_cost()
        yield b"".join(head)
        async for event in events:
            kind, data = _parse(provider, event)
            raw = event.raw
            if kind in ("message_delta", "message_start"):
                _track(usage, kind, data)
                ctx.usage = usage_from_anthropic(usage)
                ctx.finalize_cost()
            elif kind == "error":       # sent on, with the provider's secrets taken out; the ledger records it
                err = error_from_event(data, provider=provider.name, redact=provider.redact)
                ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
                raw = provider.redact(raw.decode("utf-8", "replace")).encode()
                stopped = True
            elif kind == "message_stop":
                stopped = True
            yield raw
            if stopped:
                break
        if not stopped:
            raise UpstreamTruncated(f"provider {provider.name!r}: stream ended before message_stop")
    finally:
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
        raise UpstreamBadResponse(f"provider {provider.name!r}: stream sent an event that is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamBadResponse(f"provider {provider.name!r}: stream sent an event that is not an object")
    return str(data.get("type") or event.event or ""), data


def _track(usage: dict, kind: str, data: dict) -> None:
    """Fold the usage of message_start (input, cache) and message_delta (output, cumulative)."""
    found = (data.get("message") or {}).get("usage") if kind == "message_start" else data.get("usage")
    if isinstance(found, dict):
        usage.update((k, v) for k, v in found.items() if v is not None)


async def count_tokens(ctx: "RequestContext", provider: "AnthropicProvider", body: dict) -> JSONReply:
    """POST /v1/messages/count_tokens forwarded; the answer ({"input_tokens": N}) as it came."""
    return await complete(ctx, provider, body, "/v1/messages/count_tokens")
