"""The response cache for answers that go back as they came (proxy.native: a Claude target's
/v1/messages answer), used by middlewares/cache.py.

The canonical request of an endpoint with a native body also holds that body (without `model`,
`stream`, `metadata` and the gateway's fields) and its `anthropic-beta` header, so fields the
translation drops (`context_management`, ...) still tell requests apart. A native answer is
stored as it came — the JSON bytes, or the whole event stream — once complete (stop_reason
end_turn, tool_use, stop_sequence or pause_turn; a stream with its message_stop), with its
usage, and a hit replays those bytes. A stored JSON answer serves only plain requests and a
stored stream only streamed ones; the other kind is a miss (and then stored in its own form).
"""
from __future__ import annotations

from typing import AsyncIterator

import orjson

from proxy.context import JSONReply, StreamReply, Usage
from proxy.native import NATIVE_BODY, NATIVE_REPLY
from proxy.sse import split_events

IGNORED = frozenset(("model", "stream", "metadata", "preset", "cache", "models"))
COMPLETE = frozenset(("end_turn", "tool_use", "stop_sequence", "pause_turn"))


def key_part(ctx) -> list | None:
    """What the native request adds to the cache key (None without one)."""
    native = ctx.extra.get(NATIVE_BODY) if ctx.extra else None
    if native is None:
        return None
    return [{k: v for k, v in native.items() if k not in IGNORED},
            ctx.request.headers.getall("anthropic-beta", [])]


def is_native(ctx) -> bool:
    return bool(ctx.extra) and bool(ctx.extra.get(NATIVE_REPLY))


def stored_json(ctx, reply: JSONReply) -> bytes | None:
    """The entry for a complete native JSON answer, else None."""
    if reply.status != 200 or not isinstance(reply.body, bytes):
        return None
    message = orjson.loads(reply.body)
    if not isinstance(message, dict) or message.get("stop_reason") not in COMPLETE:
        return None
    return _entry(ctx, "json", reply.body.decode())


def _entry(ctx, kind: str, data: str) -> bytes:
    return orjson.dumps({"native": kind, "data": data, "usage": ctx.usage.to_openai(),
                         "provider": ctx.provider, "upstream_model": ctx.upstream_model})


async def tee(ctx, events, put) -> AsyncIterator[bytes]:
    """Pass a native stream on; once it is complete, `put(entry)` stores it."""
    parts: list[bytes] = []
    stop_reason = None
    stopped = False
    try:
        async for item in events:
            parts.append(item)
            for event in split_events(item):
                if event.startswith(b"event: message_delta"):
                    data = orjson.loads(event[event.index(b"data: ") + 6:])
                    stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                elif event.startswith(b"event: message_stop"):
                    stopped = True
            yield item
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if stopped and stop_reason in COMPLETE and ctx.status == 200:
        put(_entry(ctx, "stream", b"".join(parts).decode()))


def hit(ctx, stored: dict):
    """The reply for a stored native answer, or None when it is of the other kind."""
    kind = stored["native"]
    if (kind == "stream") != ctx.stream:
        return None
    ctx.extra[NATIVE_REPLY] = True
    ctx.provider, ctx.upstream_model = stored.get("provider"), stored.get("upstream_model")
    ctx.usage = Usage.from_openai(stored.get("usage"))
    data = stored["data"].encode()
    if kind == "json":
        return JSONReply(data)
    return StreamReply(_once(data))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
