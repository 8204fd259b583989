"""A fake upstream on 127.0.0.1 that goes quiet mid-answer, as a reasoning model does while it
thinks: for the keep-alive tests. It speaks OpenAI (POST /v1/chat/completions and the legacy
/v1/completions) and Anthropic (POST /v1/messages), streams only.

A *pause* lasts until `release` is set or `pause` seconds have passed, whichever comes first
(`pause=None`: until `release`). Behaviour by upstream model name:

  quiet-start      200 and its headers, a pause, then the whole answer ("Hello world")
  quiet-middle     the role chunk and "Hello", a pause, then " world", the finish chunk, the
                   usage chunk, [DONE]; on /v1/messages: message_start, the text block's start
                   and "Hello", a pause, then " world" to message_stop
  quiet-fail       200 and its headers, a pause, then an error event
  quick-fail       200 and its headers, then at once an error event
  quiet-hang       200 and its headers, then nothing until the gateway goes away

`sent[model]` holds the exact events written for the last stream of that model;
`disconnected` is set when the gateway drops a request before its answer is complete.
"""
from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from tests.fakes import serve_loopback

ERROR = {"error": {"message": "The model crashed while thinking", "type": "server_error", "code": None}}


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-quiet", "object": "chat.completion.chunk", "created": 1754000000, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"


def openai_events(model: str) -> tuple[list[bytes], list[bytes]]:
    """(before the pause, after it) for quiet-middle; quiet-start sends both after its pause."""
    usage = b"data: " + orjson.dumps({
        "id": "chatcmpl-quiet", "object": "chat.completion.chunk", "created": 1754000000, "model": model,
        "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}) + b"\n\n"
    return ([_chunk(model, {"role": "assistant", "content": ""}), _chunk(model, {"content": "Hello"})],
            [_chunk(model, {"content": " world"}), _chunk(model, {}, "stop"), usage, b"data: [DONE]\n\n"])


def completion_events(model: str) -> tuple[list[bytes], list[bytes]]:
    """Legacy text completion chunks, split like openai_events."""
    def chunk(text: str, finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "cmpl-quiet", "object": "text_completion", "created": 1754000000,
                                         "model": model, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                                      "finish_reason": finish}]}) + b"\n\n"
    return [chunk("Hello")], [chunk(" world"), chunk("", "stop"), b"data: [DONE]\n\n"]


def _named(data: dict) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_events(model: str) -> tuple[list[bytes], list[bytes]]:
    start = {"type": "message_start", "message": {
        "id": "msg_quiet", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}
    delta = {"type": "content_block_delta", "index": 0}
    return ([_named(start),
             _named({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
             _named({**delta, "delta": {"type": "text_delta", "text": "Hello"}})],
            [_named({**delta, "delta": {"type": "text_delta", "text": " world"}}),
             _named({"type": "content_block_stop", "index": 0}),
             _named({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": {"output_tokens": 2}}),
             _named({"type": "message_stop"})])


class QuietUpstream:
    def __init__(self, pause: float | None = None) -> None:
        self.pause = pause
        self.release = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.requests: list[str] = []          # the model of each request, in order
        self.sent: dict[str, list[bytes]] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.openai)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/messages", self.anthropic)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "QuietUpstream":
        self.runner, self.url = await serve_loopback(self.app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.pause):
                await self.release.wait()

    async def openai(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        return await self._serve(request, model, *openai_events(model), b"data: " + orjson.dumps(ERROR) + b"\n\n")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        return await self._serve(request, model, *completion_events(model), b"data: " + orjson.dumps(ERROR) + b"\n\n")

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        error = {"type": "error", "error": {"type": "api_error", "message": "The model crashed while thinking"}}
        return await self._serve(request, model, *anthropic_events(model), _named(error))

    async def _serve(self, request: web.Request, model: str, before: list[bytes], after: list[bytes],
                     error: bytes) -> web.StreamResponse:
        self.requests.append(model)
        sent = self.sent[model] = []
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        try:
            await resp.prepare(request)

            async def write(*events: bytes) -> None:
                for event in events:
                    sent.append(event)
                    await resp.write(event)

            if model == "quick-fail":
                await write(error)
            elif model == "quiet-hang":
                await asyncio.Event().wait()
            elif model == "quiet-fail":
                await self._pause()
                await write(error)
            elif model == "quiet-start":
                await self._pause()
                await write(*before, *after)
            else:                              # quiet-middle
                await write(*before)
                await self._pause()
                await write(*after)
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.disconnected.set()
            raise
        return resp
