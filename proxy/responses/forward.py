"""A native reply (proxy.native; proxy/providers/openai_responses.py) on its way to the client:
as the upstream sent it, stored by the endpoint once complete. A stream is watched only for its
final event (which the provider parsed into ctx.extra[FINAL_RESPONSE]): `response.failed` is
recorded as a failure; a stream that breaks after its first byte ends with an `error` event
numbered after the last event sent."""
from __future__ import annotations

import re
from typing import AsyncIterator, Awaitable, Callable

import orjson

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.errors import GatewayError
from proxy.providers.openai_responses import FINAL_RESPONSE

__all__ = ["forwarded"]

Store = Callable[[dict], Awaitable[None]]
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


async def forwarded(ctx: RequestContext, reply, store: Store):
    if isinstance(reply, JSONReply):
        if isinstance(reply.body, dict) and reply.body.get("id"):
            await store(reply.body)
        return reply
    return StreamReply(_events(ctx, reply.events, store), reply.headers)


async def _events(ctx: RequestContext, events, store: Store) -> AsyncIterator[bytes]:
    last = b""
    done = False
    try:
        async for item in events:
            final = ctx.extra.get(FINAL_RESPONSE) if not done else None
            if final is not None:       # before the client hears the response is done
                done = True
                if final.get("status") == "failed":
                    ctx.status, ctx.error_type, ctx.error_code, ctx.partial = (
                        502, "provider_error", "upstream_stream_error", True)
                if final.get("id"):
                    await store(final)
            last = item
            yield item
    except GatewayError as err:
        ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
        yield error_event(err, last)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def error_event(err: GatewayError, last: bytes) -> bytes:
    numbers = _SEQUENCE.findall(last)
    event = {"type": "error", "code": err.code, "message": err.message, "param": err.param,
             "sequence_number": int(numbers[-1]) + 1 if numbers else 0}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
