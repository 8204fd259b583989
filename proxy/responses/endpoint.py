"""/v1/responses: the Responses API in front of the chat chain.

POST: the request is translated to a chat request before the chain (so auth, limits, presets,
cache, accounting, routing and fallbacks see one format, and the ledger row says endpoint
`responses`); the chat reply is translated back, plain or streamed, and stored when `store`
is not false. The request as sent is kept for targets that take it natively (proxy.native; a
provider with `responses: native`): their reply goes back as it came (forward.py), stored the
same way. GET / DELETE / input_items read the store, scoped to the calling key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import orjson

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.errors import GatewayError, InvalidRequest, NotFound, StateUnavailable
from proxy.native import NATIVE_BODY, NATIVE_REPLY, UNTRANSLATABLE
from proxy.validate import read_json
from proxy.responses import reply as rp
from proxy.responses.forward import forwarded
from proxy.responses.items import decode_reasoning, input_items
from proxy.responses.request import Translated, to_chat
from proxy.responses.stream import ResponsesStream, encode
from proxy.sse import split_events

DROPPED_HEADER = "x-modelway-dropped-tools"
ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
DAY = 86400.0
MAX_REASONING_LOOKUPS = 64      # stored responses read per request for reasoning items sent back by id


@dataclass(slots=True)
class Pending:
    body: dict                 # the Responses request as sent
    translated: Translated | None      # None: only native targets can take it (UNTRANSLATABLE)
    store: bool
    include_encrypted: bool
    owner: str
    items: list[dict]          # this request's input items (for input_items)


def owner_of(ctx: RequestContext) -> str:
    return ctx.key.id if ctx.key is not None else ""


async def prepare(request, ctx: RequestContext) -> None:
    body = await read_json(request, ctx)
    owner = owner_of(ctx)
    history: list[dict] = []
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:      # native targets too: another key's id never goes upstream
        found = await ctx.gateway.responses.conversation(owner, previous)
        if found is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id",
                           code="previous_response_not_found")
        history = found
    try:
        translated = to_chat(await _with_stored_reasoning(ctx, owner, body), history)
    except InvalidRequest as problem:
        model = body.get("model")
        if not isinstance(model, str) or not model or not isinstance(body.get("input"), (str, list)):
            raise
        ctx.extra[UNTRANSLATABLE] = problem      # a 400 only if a target that translates is reached
        translated = None
        ctx.body = {"model": model, "messages": [],
                    **{k: body[k] for k in ("preset", "cache", "models") if k in body}}
    else:
        ctx.body = translated.chat
    ctx.extra[NATIVE_BODY] = body
    ctx.model = ctx.requested_model = ctx.body["model"]
    ctx.stream = ctx.include_usage = body.get("stream") is True
    items = translated.items if translated is not None else input_items(body["input"])
    ctx.extra["responses"] = Pending(body, translated, body.get("store") is not False,
                                     "reasoning.encrypted_content" in (body.get("include") or ()), owner, items)


async def _with_stored_reasoning(ctx: RequestContext, owner: str, body: dict) -> dict:
    """`body` with the encrypted_content of reasoning items sent back by id alone (stateful
    clients: the agents SDK, LangChain) filled in from the key's stored responses, as OpenAI
    does; the item id names its response (reply.reasoning_id)."""
    items = body.get("input")
    if not isinstance(items, list):
        return body
    wanted: dict[str, str] = {}          # item id -> response id
    for item in items:
        if isinstance(item, dict) and item.get("type") == "reasoning" and isinstance(item.get("id"), str) \
                and decode_reasoning(item.get("encrypted_content")) is None:
            response_id = rp.response_of(item["id"])
            if response_id is not None:
                wanted[item["id"]] = response_id
    if not wanted:
        return body
    found: dict[str, str] = {}
    for response_id in list(dict.fromkeys(wanted.values()))[:MAX_REASONING_LOOKUPS]:
        stored = await ctx.gateway.responses.get(owner, response_id)
        for out in (stored or {}).get("output") or ():
            if out.get("id") in wanted and isinstance(out.get("encrypted_content"), str):
                found[out["id"]] = out["encrypted_content"]
    if not found:
        return body
    return {**body, "input": [{**i, "encrypted_content": found[i["id"]]} if isinstance(i, dict)
                              and i.get("type") == "reasoning" and isinstance(i.get("id"), str)
                              and i["id"] in found else i for i in items]}


def wrap(endpoint: tuple) -> tuple:
    """The chain's (early hooks, hooks, handler) for chat, with the reply translated back."""
    early, hooks, handler = endpoint

    async def respond(ctx: RequestContext):
        return await translate(ctx, await handler(ctx))

    return early, hooks, respond


async def translate(ctx: RequestContext, reply):
    pending: Pending = ctx.extra["responses"]
    if ctx.extra.get(NATIVE_REPLY):
        return await forwarded(ctx, reply, lambda response: _store(ctx, pending, response))
    if pending.translated is None:       # not reached: such a request is refused before a translated call
        raise ctx.extra[UNTRANSLATABLE]
    if pending.translated.dropped:
        ctx.response_headers[DROPPED_HEADER] = ",".join(pending.translated.dropped)
    model = ctx.match.public_model if ctx.match is not None else ctx.model
    response = rp.shell(pending.body, rp.new_id("resp"), model, pending.translated.dropped)
    if isinstance(reply, JSONReply):
        completion = reply.body if isinstance(reply.body, dict) else orjson.loads(reply.body)
        rp.from_completion(response, completion, pending.translated.names, None)
        await _store(ctx, pending, response)
        return JSONReply(rp.public(response, pending.include_encrypted), reply.status, reply.headers)
    stream = ResponsesStream(response, pending.translated.names, pending.include_encrypted)
    return StreamReply(_events(ctx, pending, stream, reply.events), reply.headers)


async def _events(ctx: RequestContext, pending: Pending, stream: ResponsesStream, events) -> AsyncIterator[bytes]:
    try:
        yield b"".join(map(encode, stream.start()))
        async for item in events:
            out = []
            for event in split_events(item):
                if event.startswith(b"data: {"):
                    out.extend(stream.feed(orjson.loads(event[6:])))
            if out:
                yield b"".join(map(encode, out))
        final = stream.finish()
    except GatewayError as err:     # after the first byte: error, response.failed, never a bare close
        ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
        final = stream.fail(err.code, err.message, err.param)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    await _store(ctx, pending, stream.response)    # before the client hears the response is done
    if stream.response.get("store") is False:
        for event in final:
            if "response" in event:
                event["response"]["store"] = False
    yield b"".join(map(encode, final))


async def _store(ctx: RequestContext, pending: Pending, response: dict) -> None:
    if not pending.store:
        return
    items = [item if item.get("id") else {"id": rp.new_id(ITEM_PREFIXES.get(item.get("type"), "item")), **item}
             for item in pending.items]
    ttl = ctx.state.config.responses.retention_days * DAY
    try:
        await ctx.gateway.responses.put(pending.owner, response, items, ttl)
    except StateUnavailable:      # the shared store is down: the answer still goes out, said unstored
        response["store"] = False


# -- GET / DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items ---------------------

async def stored(ctx: RequestContext):
    request = ctx.request
    response_id = request.match_info["response_id"]
    store, owner = ctx.gateway.responses, owner_of(ctx)
    missing = NotFound(f"No response found with id '{response_id}'.", param="response_id", code="response_not_found")
    if request.method == "DELETE":
        if not await store.delete(owner, response_id):
            raise missing
        return JSONReply({"id": response_id, "object": "response", "deleted": True})
    if request.path.endswith("/input_items"):
        items = await store.input_items(owner, response_id)
        if items is None:
            raise missing
        return JSONReply(page(items, request.query))
    if request.query.get("stream") in ("true", "1"):
        raise InvalidRequest("Streaming a stored response is not supported.", param="stream")
    response = await store.get(owner, response_id)
    if response is None:
        raise missing
    include = request.query.getall("include", []) + request.query.getall("include[]", [])
    return JSONReply(rp.public(response, "reasoning.encrypted_content" in include))


def page(items: list[dict], query) -> dict:
    """OpenAI's list shape over one response's input items: limit (1-100, default 20), order
    (desc by default), after / before an item id."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    items = items[::-1] if order == "desc" else list(items)
    ids = [item.get("id") for item in items]
    for name in ("after", "before"):
        cursor = query.get(name)
        if cursor is None:
            continue
        if cursor not in ids:
            raise InvalidRequest(f"'{name}' names no input item of this response.", param=name)
        cut = ids.index(cursor)
        items, ids = (items[cut + 1:], ids[cut + 1:]) if name == "after" else (items[:cut], ids[:cut])
    data = items[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}
