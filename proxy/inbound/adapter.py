"""POST /v1/messages: Anthropic Messages in, any routed model out, Anthropic Messages back.

The request is translated to OpenAI's shape before the chain (so presets, cache and
accounting see one format); the reply is translated back at the edge.
"""
from __future__ import annotations

from typing import AsyncIterator

import orjson

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.inbound.messages import to_openai_request
from proxy.sse import split_events
from proxy.inbound.messages_response import MessagesStreamTranslator, encode_event, to_anthropic_message


async def prepare_messages(request, ctx: RequestContext) -> None:
    from proxy.handlers import read_json
    body = await read_json(request, ctx)
    ctx.extra["stop_sequences"] = body.get("stop_sequences")
    ctx.extra["anthropic_model"] = body.get("model")
    ctx.body = to_openai_request(body)
    ctx.model = ctx.requested_model = ctx.body["model"]
    ctx.stream = ctx.body.get("stream") is True
    ctx.include_usage = ctx.stream     # message_delta needs the usage chunk


def to_anthropic_reply(ctx: RequestContext, reply):
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
