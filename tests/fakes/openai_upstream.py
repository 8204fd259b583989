"""A fake OpenAI upstream on 127.0.0.1 speaking the exact wire format (recorded fixtures).

Behaviour is chosen by the upstream model name the gateway sends:
  <anything>          recorded completion / text stream (usage chunk only if asked)
  tools               recorded parallel tool-call stream / completion
  fail-<status>       that HTTP status with OpenAI's error body (429 adds Retry-After: 7)
  slow                waits `slow_seconds` before answering
  hang                never answers (for disconnect tests)
  stream-hang         first chunk, then waits forever (for disconnect tests)
  stall               two chunks, then silence (idle timeout)
  broken              two chunks, then the connection is cut
  midstream-error     one chunk, then an error event
  malformed           200 with a body that is not JSON
  error-body          200 with an error object
"""
from __future__ import annotations

import asyncio
import copy
import pathlib

import orjson
from aiohttp import web

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "openai"


def _events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict] = []          # {"path", "headers", "json"}
        self.disconnected = asyncio.Event()     # set when a client goes away mid-request
        self.slow_seconds = 1.0
        self.completion = orjson.loads((FIXTURES / "completion.json").read_bytes())
        self.text_stream = _events("text_stream.sse")
        self.tool_stream = _events("tool_stream.sse")
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)

    @property
    def last(self) -> dict:
        return self.requests[-1]

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": body["model"],
                                  "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                           for i, _ in enumerate(inputs)],
                                  "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body})
        model = body.get("model", "")
        try:
            return await self._answer(request, body, model)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    async def _answer(self, request, body, model):
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            headers = {"Retry-After": "7"} if status == 429 else {}
            return web.json_response({"error": {"message": f"Simulated failure {status} for sk-secret123456789",
                                                "type": "server_error", "param": None, "code": None}},
                                     status=status, headers=headers)
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "malformed":
            return web.Response(body=b"<html>oops", content_type="application/json")
        if model == "error-body":
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}})
        if not body.get("stream"):
            data = copy.deepcopy(self.completion)
            if model == "tools":
                data["choices"][0]["message"] = {
                    "role": "assistant", "content": None, "refusal": None,
                    "tool_calls": [{"id": "call_abc123", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
                data["choices"][0]["finish_reason"] = "tool_calls"
            return web.json_response(data)
        events = self.tool_stream if model == "tools" else self.text_stream
        if not (body.get("stream_options") or {}).get("include_usage"):
            events = [e for e in events if b'"choices":[]' not in e]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for i, ev in enumerate(events):
            if model == "stream-hang" and i == 1:
                await asyncio.sleep(3600)
            if model == "stall" and i == 2:
                await asyncio.sleep(3600)
            if model == "broken" and i == 2:
                request.transport.close()
                return resp
            if model == "midstream-error" and i == 1:
                await resp.write(b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n')
                return resp
            await resp.write(ev)
        return resp


async def start(fake: FakeOpenAI) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(fake.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"
