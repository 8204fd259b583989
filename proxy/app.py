"""create_app(gateway) -> web.Application: routes, the outer error edge, cleanup_ctx."""
from __future__ import annotations

import os

import orjson
import structlog
from aiohttp import web

from proxy import handlers
from proxy.completions import completions
from proxy.console import pages as console_pages
from proxy.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge
from proxy.gateway import Gateway
from proxy.handlers import GATEWAY, REQUEST_ID_KEY, new_context, request_id, run
from proxy.responses import endpoint as responses_endpoint

log = structlog.get_logger("modelway")


@web.middleware
async def edge(request: web.Request, handler):
    """Outermost edge: request id on every response; unknown paths, wrong methods and
    unexpected exceptions rendered in the error envelope (never a traceback)."""
    rid = request[REQUEST_ID_KEY] = request_id(request)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            err: GatewayError = NotFound(f"Unknown endpoint: {request.method} {request.path}.",
                                         code="unknown_endpoint", tip="See the README for the API.")
        elif exc.status == 405:
            err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
        elif exc.status == 413:
            err = PayloadTooLarge("Request body is too large.")
        else:
            raise
        return _error(request, err, rid)
    except Exception:
        log.exception("unhandled_error", request_id=rid, path=request.path)
        return _error(request, GatewayError("The gateway hit an internal error; the request id identifies it "
                                            "in the logs."), rid)
    if "x-request-id" not in resp.headers and not resp.prepared:
        resp.headers["x-request-id"] = rid
    return resp


def _error(request: web.Request, err: GatewayError, rid: str) -> web.Response:
    """An error at the edge; every /v1/messages* path (its clients are Anthropic SDKs) in Anthropic's shape."""
    path = request.path
    anthropic = path == "/v1/messages" or path.startswith("/v1/messages/")
    body = err.to_anthropic_json() if anthropic else err.to_json(rid)
    return web.Response(body=body, status=err.status, content_type="application/json", headers={"x-request-id": rid})


async def models(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "models")
    if "model_id" in request.match_info:
        ctx.extra["model_id"] = request.match_info["model_id"]
    return await run(request, ctx, None)


async def account(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "account")
    return await run(request, ctx, None)


async def responses(request: web.Request) -> web.StreamResponse:
    return await run(request, new_context(request, "responses"), responses_endpoint.prepare)


async def console(request: web.Request) -> web.StreamResponse:
    return await run(request, new_context(request, "console"), None)


async def stored_responses(request: web.Request) -> web.StreamResponse:
    return await run(request, new_context(request, "stored_responses"), None)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    state = gw.state
    writable = os.access(gw.data_dir, os.W_OK)
    ledger = gw.ledger.health()
    ready = state is not None and writable and not gw.draining and ledger["writable"]
    body = {"status": "ready" if ready else "not_ready", "config_version": state.config.version if state else None,
            "loaded_at": state.loaded_at if state else None, "data_dir_writable": writable,
            "draining": gw.draining, "disabled_providers": dict(state.disabled) if state else {},
            "ledger": ledger}
    if not ready:
        body["reason"] = ("not started" if state is None else "draining" if gw.draining
                          else "data_dir is not writable" if not writable
                          else f"ledger cannot write: {ledger['error']}")
    shared_state(gw, body)
    return web.Response(body=orjson.dumps(body), status=200 if ready else 503, content_type="application/json")


def shared_state(gw: Gateway, body: dict) -> None:
    """/readyz's `state`: a shared engine that is down makes a ready node `degraded`, still 200
    (it serves on node-local fallbacks; a load balancer must not take every node out at once)."""
    stores = getattr(gw, "stores", None)
    body["state"] = stores.status() if stores is not None else None
    if body["status"] == "ready" and body["state"] and body["state"]["degraded"]:
        body["status"] = "degraded"


async def metrics(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    text = await gw.metrics.arender() + gw.stores.prometheus()
    return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=gateway.config.server.max_body_bytes)
    app[GATEWAY] = gateway

    async def lifecycle(app: web.Application):
        await gateway.start()
        yield
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_post("/v1/chat/completions", handlers.chat_completions)
    r.add_post("/v1/embeddings", handlers.embeddings)
    r.add_post("/v1/messages", handlers.messages)
    r.add_post("/v1/responses", responses)
    r.add_route("GET", "/v1/responses/{response_id}", stored_responses)
    r.add_route("DELETE", "/v1/responses/{response_id}", stored_responses)
    r.add_get("/v1/responses/{response_id}/input_items", stored_responses)
    r.add_post("/v1/messages/count_tokens", handlers.count_tokens)
    r.add_post("/v1/completions", completions)
    r.add_get("/v1/models", models)
    r.add_get("/v1/models/{model_id:.+}", models)
    for path in ("/v1/account/balance", "/v1/account/activity", "/v1/account/analytics"):
        r.add_get(path, account)
    r.add_route("GET", "/v1/account/keys", account)
    r.add_route("POST", "/v1/account/keys", account)
    for method in ("GET", "PATCH", "DELETE"):
        r.add_route(method, "/v1/account/keys/{key_id}", account)
    r.add_get("/v1/console/{view}", console)
    console_pages.add_routes(r)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    return app
