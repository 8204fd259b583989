"""POST /v1/messages and /v1/messages/count_tokens: Anthropic Messages in, any routed model out,
Anthropic's shape back.

The request is translated to OpenAI's shape before the chain (so presets, cache and
accounting see one format) and kept as sent for Claude targets (proxy.native); a translated
reply is translated back at the edge, a Claude target's reply goes back as it came.
"""
from __future__ import annotations

from typing import AsyncIterator

import orjson

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.errors import InvalidRequest
from proxy.inbound.messages import to_openai_request
from proxy.inbound.messages_response import MessagesStreamTranslator, encode_event, to_anthropic_message
from proxy.native import NATIVE_BODY, NATIVE_REPLY
from proxy.sse import split_events
from proxy.validate import check_messages_body, read_json


async def prepare_messages(request, ctx: RequestContext) -> None:
    body = await read_json(request, ctx)
    check_messages_body(body)
    ctx.extra["stop_sequences"] = body.get("stop_sequences")
    ctx.extra["anthropic_model"] = body.get("model")
    ctx.body = to_openai_request(body)
    ctx.extra[NATIVE_BODY] = body
    ctx.model = ctx.requested_model = ctx.body["model"]
    ctx.stream = ctx.body.get("stream") is True
    ctx.include_usage = ctx.stream     # message_delta needs the usage chunk


async def prepare_count_tokens(request, ctx: RequestContext) -> None:
    """count_tokens takes a Messages request without max_tokens (nor stream)."""
    body = await read_json(request, ctx)
    check_messages_body(body)
    if "stream" in body or "max_tokens" in body:
        field = "stream" if "stream" in body else "max_tokens"
        raise InvalidRequest(f"{field}: Extra inputs are not permitted", param=field)
    ctx.body = to_openai_request({**body, "max_tokens": 1})
    ctx.body.pop("max_tokens", None)
    ctx.extra[NATIVE_BODY] = body
    ctx.model = ctx.requested_model = ctx.body["model"]


def to_anthropic_reply(ctx: RequestContext, reply):
    if ctx.extra.get(NATIVE_REPLY):
        return reply                 # a Claude target's answer, as it came
    model = ctx.extra.get("anthropic_model")
    stops = ctx.extra.get("stop_sequences")
    if isinstance(reply, JSONReply):
        body = reply.body if isinstance(reply.body, dict) else orjson.loads(reply.body)
        return JSONReply(to_anthropic_message(body, model=model, stop_sequences=stops), reply.status, reply.headers)
    translator = MessagesStreamTranslator(model, stop_sequences=stops)
    return StreamReply(_events(reply.events, translator), reply.headers)


async def _events(events, translator: MessagesStreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for item in events:
            out = []
            for event in split_events(item):
                if event.startswith(b"data: {"):
                    out.extend(encode_event(name, data) for name, data in translator.feed(orjson.loads(event[6:])))
            if out:
                yield b"".join(out)
        for name, data in translator.finish():
            yield encode_event(name, data)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
