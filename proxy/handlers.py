"""Thin aiohttp handlers: read and check the body, run the chain, write the Reply."""
from __future__ import annotations

import asyncio
import math
import re
from random import getrandbits

import orjson
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from multidict import istr

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.errors import GatewayError, Unavailable
from proxy.gateway import Gateway
from proxy.inbound.adapter import prepare_count_tokens, prepare_messages, to_anthropic_reply
from proxy.sse import DONE, data_event
from proxy.validate import check_chat_body, check_embeddings_body, read_json

log = structlog.get_logger("modelway")
GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID_KEY = web.RequestKey("request_id", str)   # set by the app's edge for every request
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
REQUEST_ID = istr("x-request-id")   # istr: aiohttp takes it without working out its case-insensitive form
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"   # with Cache-Control: no-cache, X-Accel-Buffering: no


def request_id(request: web.Request) -> str:
    rid = request.headers.get("x-request-id")
    if rid and _SANE_ID.match(rid):
        return rid
    return f"req_{getrandbits(96):024x}"


def new_context(request: web.Request, endpoint: str) -> RequestContext:
    gw = request.app[GATEWAY]
    ctx = RequestContext(request=request, gateway=gw, request_id=request[REQUEST_ID_KEY], endpoint=endpoint,
                         state=gw.state)
    return ctx


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "chat")
    return await run(request, ctx, _prepare_chat)


async def embeddings(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "embeddings")
    return await run(request, ctx, _prepare_embeddings)


async def _prepare_chat(request: web.Request, ctx: RequestContext) -> None:
    body = await read_json(request, ctx)
    check_chat_body(body)
    ctx.body = body
    ctx.model = ctx.requested_model = body["model"]
    ctx.stream = body.get("stream") is True
    opts = body.get("stream_options")
    ctx.include_usage = ctx.stream and isinstance(opts, dict) and opts.get("include_usage") is True


async def _prepare_embeddings(request: web.Request, ctx: RequestContext) -> None:
    body = await read_json(request, ctx)
    check_embeddings_body(body)
    ctx.body = body
    ctx.model = ctx.requested_model = body["model"]


ANTHROPIC_ENDPOINTS = frozenset(("messages", "count_tokens"))   # errors in Anthropic's shape


async def messages(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "messages")
    return await run(request, ctx, prepare_messages, to_anthropic_reply)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "count_tokens")
    return await run(request, ctx, prepare_count_tokens, to_anthropic_reply)


async def run(request: web.Request, ctx: RequestContext, prepare, adapt=None) -> web.StreamResponse:
    """Run one API request through the chain and write its reply; finishers see every outcome."""
    state, gateway = ctx.state, ctx.gateway
    state.inflight += 1
    task = asyncio.current_task()
    gateway.requests.add(task)
    try:
        if gateway.tracer is not None:     # OTEL_* asked for traces (proxy.tracing)
            ctx.trace = gateway.tracer.start(request, ctx)
        early, hooks, handler = state.endpoints[ctx.endpoint]
        for hook in early:          # auth: a bad key is a 401 whatever the body
            slow = hook(ctx)
            if slow is not None:    # the hook's slow path (auth: a key looked up in the store)
                await slow
        if prepare is not None:
            await prepare(request, ctx)
        for hook in hooks:
            slow = hook(ctx)
            if slow is not None:
                await slow
        reply = await handler(ctx)
        if adapt is not None:
            reply = adapt(ctx, reply)
        if isinstance(reply, StreamReply):
            return await write_stream(request, ctx, reply)
        return write_json(ctx, reply)
    except GatewayError as err:
        return error_response(ctx, err)
    except asyncio.CancelledError:
        if gateway.cutting:     # the drain deadline came before this request's answer started
            task.uncancel()
            return error_response(ctx, Unavailable("The gateway is shutting down; the request was cut at the "
                                                   "drain deadline.", code="server_shutting_down"))
        ctx.status, ctx.error_type, ctx.partial = 499, "client_disconnected", True
        raise
    except Exception:
        log.exception("unhandled_error", request_id=ctx.request_id, path=request.path)
        return error_response(ctx, GatewayError("The gateway hit an internal error; the request id "
                                                "identifies it in the logs."))
    finally:
        gateway.requests.discard(task)
        state.inflight -= 1
        if ctx.usage.known and not ctx.cost:
            ctx.finalize_cost()
        ctx.complete()
        if ctx.trace is not None:
            ctx.trace.end(ctx)
        state.chain.finish(ctx)


def write_json(ctx: RequestContext, reply: JSONReply) -> web.Response:
    ctx.status = reply.status
    body = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
    headers = {REQUEST_ID: ctx.request_id, **ctx.response_headers, **reply.headers}
    return web.Response(body=body, status=reply.status, content_type="application/json", headers=headers)


def error_response(ctx: RequestContext, err: GatewayError) -> web.Response:
    ctx.status, ctx.error_type, ctx.error_code = err.status, err.type, err.code
    headers = {REQUEST_ID: ctx.request_id, **ctx.response_headers, **err.headers}
    body = err.to_anthropic_json() if ctx.endpoint in ANTHROPIC_ENDPOINTS else err.to_json(ctx.request_id)
    return web.Response(body=body, status=err.status, content_type="application/json", headers=headers)


async def write_stream(request: web.Request, ctx: RequestContext, reply: StreamReply) -> web.StreamResponse:
    """Write SSE events as they come, each item's bytes as they are, with `: ping` comments while
    the stream is silent (`server.sse_ping_seconds`). Errors raised by the iterator after the
    first byte become an error event then [DONE]; a client that goes away closes the iterator
    (and so the upstream)."""
    events = reply.events
    resp = sse_response(ctx, reply.headers)
    ctx.status = 200
    try:
        await resp.prepare(request)
        async for event in events:
            if ctx.ttft_ms is None:
                ctx.mark_first_token()
            await resp.write(event)
        await _end(resp)
    except ConnectionError:          # the client went away
        ctx.status, ctx.error_type, ctx.partial = 499, "client_disconnected", True
    except asyncio.CancelledError:
        if not ctx.gateway.cutting:
            ctx.status, ctx.error_type, ctx.partial = 499, "client_disconnected", True
            raise
        if not resp.prepared:
            raise          # nothing sent yet: run() answers 503
        asyncio.current_task().uncancel()    # cut at the drain deadline: end the stream cleanly
        err = Unavailable("The gateway is shutting down; the stream was cut at the drain deadline.",
                          code="server_shutting_down")
        ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
        await _write_quietly(resp, ctx, stream_error_events(ctx, err))
    except Exception as exc:   # the stream has started: end it with an error event, never a bare close
        err = exc if isinstance(exc, GatewayError) else GatewayError("The gateway hit an internal error mid-stream.")
        if not isinstance(exc, GatewayError):
            log.exception("unhandled_stream_error", request_id=ctx.request_id)
        ctx.status, ctx.error_type, ctx.error_code, ctx.partial = err.status, err.type, err.code, True
        if resp.prepared:
            await _write_quietly(resp, ctx, stream_error_events(ctx, err))
        else:
            raise err
    finally:
        if resp.is_connected():      # the ping loop (aiohttp-sse's task) ends with the stream
            resp.stop_streaming()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    return resp


def sse_response(ctx: RequestContext, headers: dict) -> EventSourceResponse:
    """aiohttp-sse's response: its ping task writes `: ping` every `sse_ping_seconds` (none
    when 0) once it is prepared; the events are written with `write`, unframed. Any method (the
    APIs stream POSTs); no TCP_USER_TIMEOUT (`send_timeout`: `write` is not bounded by it)."""
    ping = ctx.state.config.server.sse_ping_seconds
    resp = EventSourceResponse(headers={REQUEST_ID: ctx.request_id, **ctx.response_headers, **headers},
                               sep="\n", allow_all_methods=True, send_timeout=None,
                               ping_interval=ping or math.inf)
    resp.headers["Content-Type"] = SSE_CONTENT_TYPE
    return resp


async def _end(resp: EventSourceResponse, data: bytes = b"") -> None:
    """The last bytes, then the end of the body. The ping task stops first: a ping written while
    write_eof waits for a slow client to drain would land after the body's last chunk."""
    if resp.is_connected():
        resp.stop_streaming()
    await resp.write_eof(data)


def stream_error_events(ctx: RequestContext, err: GatewayError) -> bytes:
    if ctx.endpoint in ANTHROPIC_ENDPOINTS:
        return b"event: error\ndata: " + err.to_anthropic_json() + b"\n\n"
    return data_event(err.to_json(ctx.request_id)) + DONE


async def _write_quietly(resp: EventSourceResponse, ctx: RequestContext, data: bytes) -> None:
    try:
        await _end(resp, data)
    except ConnectionError:          # the client went away
        ctx.error_type = "client_disconnected"
