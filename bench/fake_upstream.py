"""A fast OpenAI-compatible fake upstream for the overhead benchmark (127.0.0.1 only).

`POST /v1/chat/completions` answers a fixed small `chat.completion` with usage, or, with
`"stream": true`, an SSE stream exactly as OpenAI sends it: N content chunks (the first also
carries `role`), a finish chunk, a usage chunk with `choices: []` when
`stream_options.include_usage` is set, then `data: [DONE]`. Each event is written and drained
on its own. N and an optional delay between content chunks come from, first found wins:

1. the body field `"bench": {"chunks": N, "delay_ms": D}` (an unknown field, so a gateway
   passes it through untouched),
2. the headers `x-bench-chunks` / `x-bench-delay-ms`,
3. the query parameters `?chunks=N&delay_ms=D`,
4. `--chunks` / `--delay-ms` (defaults from `FAKE_UPSTREAM_CHUNKS` / `FAKE_UPSTREAM_DELAY_MS`,
   else 20 and 0).

`GET /_stats` returns how many completions and streams it has served and over how many
distinct connections (the bench uses it to prove that every request reached the upstream, i.e.
was a cache miss, and to see whether the proxy reuses its upstream connections).
`GET /healthz` says ok. `POST /v1/traces` is an OTLP/HTTP sink for `--otel` runs: it reads the
export and answers an empty ExportTraceServiceResponse (counted in `/_stats` as `trace_exports`).

    python -m bench.fake_upstream --port 9001 [--chunks 20] [--delay-ms 0]
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import os

import orjson
from aiohttp import web

CREATED = 1_700_000_000
MODEL = "fake-model"
CHUNK_ID = "chatcmpl-bench0000000000000000000000"

STATS = web.AppKey("stats", dict)
SEEN = web.AppKey("seen", set)
DEFAULTS = web.AppKey("defaults", tuple)

COMPLETION = orjson.dumps({
    "id": CHUNK_ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream.",
                                         "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}},
})
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


@functools.lru_cache(maxsize=64)
def stream_events(n: int, include_usage: bool) -> tuple[bytes, ...]:
    """The SSE events of one streamed answer of `n` content chunks, [DONE] last."""
    head = {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
            "system_fingerprint": "fp_bench"}

    def event(choices: list, usage: dict | None = None) -> bytes:
        chunk = {**head, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(delta: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [event(choice({"role": "assistant", "content": "tok0 "}))]
    events += [event(choice({"content": f"tok{i} "})) for i in range(1, n)]
    events.append(event(choice({}, "stop")))
    if include_usage:
        events.append(event([], {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n,
                                 "prompt_tokens_details": {"cached_tokens": 0},
                                 "completion_tokens_details": {"reasoning_tokens": 0}}))
    events.append(DONE)
    return tuple(events)


def _param(request: web.Request, body: dict, name: str, default: int) -> int:
    bench = body.get("bench")
    for value in ((bench.get(name) if isinstance(bench, dict) else None),
                  request.headers.get("x-bench-" + name.replace("_", "-")),
                  request.query.get(name)):
        if value is not None:
            try:
                return max(int(value), 0)
            except (TypeError, ValueError):
                break
    return default


async def chat_completions(request: web.Request) -> web.StreamResponse:
    stats = request.app[STATS]
    stats["requests"] += 1
    connection = (request.transport.get_extra_info("peername"), id(request.transport))
    if connection not in request.app[SEEN]:
        request.app[SEEN].add(connection)
        stats["connections"] += 1
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return web.json_response({"error": {"message": "body is not a JSON object",
                                            "type": "invalid_request_error"}}, status=400)
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    stats["streams"] += 1
    default_chunks, default_delay = request.app[DEFAULTS]
    n = max(_param(request, body, "chunks", default_chunks), 1)
    delay = _param(request, body, "delay_ms", default_delay) / 1000
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    try:
        for i, event in enumerate(stream_events(n, include_usage)):
            if delay and 0 < i < n:
                await asyncio.sleep(delay)
            await resp.write(event)
        await resp.write_eof()
    except ConnectionError:
        stats["disconnects"] += 1
    return resp


async def stats_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


async def traces(request: web.Request) -> web.Response:
    await request.read()
    request.app[STATS]["trace_exports"] += 1
    return web.Response(body=b"", content_type="application/x-protobuf")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]})


def make_app(chunks: int = 20, delay_ms: int = 0) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[STATS] = {"requests": 0, "streams": 0, "disconnects": 0, "connections": 0, "trace_exports": 0}
    app[SEEN] = set()
    app[DEFAULTS] = (chunks, delay_ms)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_stats", stats_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/traces", traces)
    return app


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=int(os.environ.get("FAKE_UPSTREAM_CHUNKS", "20")))
    parser.add_argument("--delay-ms", type=int, default=int(os.environ.get("FAKE_UPSTREAM_DELAY_MS", "0")))
    args = parser.parse_args(argv)
    web.run_app(make_app(args.chunks, args.delay_ms), host="127.0.0.1", port=args.port,
                access_log=None, print=None, backlog=1024, loop=new_loop())


if __name__ == "__main__":
    main()
