"""An upstream on 127.0.0.1 that echoes the request headers it received into its error texts,
for the tests that prove no configured secret reaches a client, a log line or the ledger.

It speaks both wire formats: POST /v1/chat/completions (OpenAI) and POST /v1/messages
(Anthropic). The echo is `auth=<Authorization> xkey=<x-api-key> api-key=<api-key>
custom=<X-Custom-Token>`. Behaviour by upstream model name:

  echo-4xx           400 with the echo in the provider's error body
  echo-500           500 likewise
  echo-200-error     200 whose JSON body is an error object holding the echo
  echo-sse-early     200 text/event-stream whose first event is an error holding the echo
  echo-sse-late      200 stream: a content chunk, then (once `gate` is set: the client has
                     seen the content) an error event holding the echo
  ok (or anything)   a normal answer (JSON or stream)
and, on /v1/messages only, answers broken on the first request of the name, then normal:
  flaky-malformed    200 whose body is not JSON
  flaky-truncated    200 stream that ends after message_start
  flaky-bad-event    200 stream: message_start, then `data: {not json}`
"""
from __future__ import annotations

import asyncio
import collections

import orjson
from aiohttp import web

from tests.fakes import serve_loopback

HEADERS = ("Authorization", "x-api-key", "api-key", "X-Custom-Token")


def echo(request: web.Request) -> str:
    return " ".join(f"{h.lower()}={request.headers.get(h, '-')}" for h in HEADERS)


def _sse(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class EchoUpstream:
    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.gate = asyncio.Event()             # releases the error of `echo-sse-late`
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.openai)
        self.app.router.add_post("/v1/messages", self.anthropic)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "EchoUpstream":
        self.runner, self.url = await serve_loopback(self.app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _stream(self, request: web.Request, events: list[bytes], late: bytes = b"") -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
        if late:
            await self.gate.wait()
            await resp.write(late)
        await resp.write_eof()
        return resp

    # -- OpenAI ------------------------------------------------------------------------------

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        self.hits[model] += 1
        error = {"error": {"message": f"echo: {echo(request)}", "type": "server_error", "code": None}}
        if model in ("echo-4xx", "echo-500"):
            return web.json_response(error, status=400 if model == "echo-4xx" else 500)
        if model == "echo-200-error":
            return web.json_response(error)

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if model == "echo-sse-early":
            return await self._stream(request, [_sse(error)])
        if model == "echo-sse-late":
            return await self._stream(request, [_sse(chunk({"role": "assistant", "content": ""})),
                                                _sse(chunk({"content": "Hello"}))], _sse(error))
        if body.get("stream"):
            return await self._stream(request, [_sse(chunk({"role": "assistant", "content": "ok"})),
                                                _sse(chunk({}, "stop")), b"data: [DONE]\n\n"])
        return web.json_response({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    # -- Anthropic ---------------------------------------------------------------------------

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        self.hits[model] += 1
        error = {"type": "error", "error": {"type": "api_error", "message": f"echo: {echo(request)}"}}
        if model in ("echo-4xx", "echo-500"):
            return web.json_response(error, status=400 if model == "echo-4xx" else 500)
        if model == "echo-200-error":
            return web.json_response(error)
        broken = model.startswith("flaky-") and self.hits[model] == 1
        if broken and model == "flaky-malformed":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="application/json")
        start = {"type": "message_start", "message": {
            "id": "msg_echo", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "usage": {"input_tokens": 1, "output_tokens": 0}}}
        text = [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}]
        if model == "echo-sse-early":
            return await self._stream(request, [_sse(error, "error")])
        if broken and model == "flaky-truncated":
            return await self._stream(request, [_sse(start, "message_start")])
        if broken and model == "flaky-bad-event":
            return await self._stream(request, [_sse(start, "message_start"), b"data: {not json}\n\n"])
        if model == "echo-sse-late":
            return await self._stream(request, [_sse(start, "message_start")]
                                      + [_sse(e, e["type"]) for e in text], _sse(error, "error"))
        if body.get("stream"):
            end = [{"type": "content_block_stop", "index": 0},
                   {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
                   {"type": "message_stop"}]
            return await self._stream(request, [_sse(e, e["type"]) for e in [start, *text, *end]])
        return web.json_response({
            "id": "msg_echo", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1}})
