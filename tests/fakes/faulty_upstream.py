"""A raw asyncio HTTP/1.1 upstream on 127.0.0.1 for the faults the aiohttp fake cannot make:
connections reset mid-response, never-ending or malformed SSE, huge bodies, flaky statuses.

Every response is `Connection: close`, so each request is one TCP connection and `open`
counts the connections the gateway still holds (0 once it has let go of everything).
Behaviour is chosen by the upstream model name (`hits[model]` counts the requests per name);
for the model `by-prompt` it is the last message's text instead (so one target fails for some
prompts and answers others), counted and answered under that text:

  ok (or anything else)   a small completion, or a stream of 3 content chunks
  sleep<ms>               waits <ms> before answering like `ok`
  hang                    reads the request, never answers
  fail-<status>[-ra<s>]   that status with an OpenAI error body (and Retry-After: <s>)
  flaky<n>-<status>[-ra<s>]  the first <n> requests of this name fail like fail-, then ok
  reset-early             resets the connection (RST) without answering
  reset-body              headers + 100 of the promised 2000 body bytes, then RST
  huge-json-<mb>          a valid completion whose content is <mb> MB long
  gzip-bomb-<mb>          a completion gzip-compressed (Content-Encoding: gzip) from <mb> MB
                          down to about a thousandth of that
Streams; "first token" is the role chunk plus the first content chunk, so these faults come
after the first content token reached the gateway (the client has seen bytes):
  reset-stream            first token, then RST
  error-after-content     first token, then an OpenAI error event
  malformed-sse-json      first token, an event whose data is truncated JSON, then a clean end
  not-json-event          first token, then `data: {not json}`, then a clean end
  endless                 first token, then a content chunk every 50 ms, forever
  endless-comments        first token, then `: keep-alive` every 50 ms, forever
  comments-only           `: keep-alive` every 50 ms from the start, forever (no event at all)
  huge-event              first token, then one SSE event of 9 MB that never ends
  gated                   first token, then waits for `gate` to be set, then the rest
and these before it (a gateway that peeks the stream can still fall back):
  empty-stream            200 text/event-stream, then closes with no event at all
  malformed-sse           200 text/event-stream whose body is HTML, not SSE
  reset-role              the role chunk only, then RST
"""
from __future__ import annotations

import asyncio
import collections
import functools
import re
import socket
import struct
import time
import zlib

import orjson

CONTENT = ["Hello", " from", " faulty"]


def completion(model: str, content: str) -> dict:
    return {"id": "chatcmpl-faulty", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"


def usage_chunk(model: str) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}) + b"\n\n"


def head(status: int = 200, content_type: str = "application/json", length: int | None = None,
         extra: dict | None = None) -> bytes:
    reason = {200: "OK", 429: "Too Many Requests"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_FAIL = re.compile(r"^(?:fail|flaky(\d+))-(\d{3})(?:-ra(\d+(?:\.\d+)?))?$")


class FaultyUpstream:
    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.bodies: list[dict] = []
        self.open = 0
        self.gate = asyncio.Event()             # releases the `gated` streams
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> "FaultyUpstream":
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening (the port then refuses connections) and cut every open connection."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None
        deadline = time.monotonic() + 2
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def wait_idle(self, timeout: float = 3.0) -> bool:
        """True once the gateway has closed every connection to this upstream."""
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.open == 0

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self._writers.add(writer)
        try:
            request_head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in request_head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            self.bodies.append(body)
            model = str(body.get("model", ""))
            if model == "by-prompt":
                model = str((body.get("messages") or [{}])[-1].get("content", ""))
            self.hits[model] += 1
            await self._answer(model, body, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self.open -= 1

    async def _answer(self, model: str, body: dict, writer: asyncio.StreamWriter) -> None:
        stream = bool(body.get("stream"))
        m = _FAIL.match(model)
        if m and (m.group(1) is None or self.hits[model] <= int(m.group(1))):
            status = int(m.group(2))
            extra = {"Retry-After": m.group(3)} if m.group(3) else {}
            payload = orjson.dumps({"error": {"message": f"faulty upstream says {status}", "type": "server_error",
                                              "param": None, "code": None}})
            writer.write(head(status, length=len(payload), extra=extra) + payload)
            return
        if model.startswith("sleep"):
            await asyncio.sleep(int(model[5:] or 0) / 1000)
        if model == "hang":
            await asyncio.sleep(3600)
        elif model == "reset-early":
            return await _reset(writer)
        elif model == "reset-body":
            writer.write(head(length=2000) + b'{"id": "chatcmpl-faulty", "object": "chat.completion", "cho'
                         + b" " * 40)
            return await _reset(writer)
        elif model.startswith("gzip-bomb-"):
            data = gzip_bomb(float(model[10:]))
            writer.write(head(length=len(data), extra={"Content-Encoding": "gzip"}))
            for i in range(0, len(data), 64 * 1024):
                writer.write(data[i:i + 64 * 1024])
                await writer.drain()
            return
        elif model.startswith("huge-json-"):
            data = orjson.dumps(completion(model, "x" * int(float(model[10:]) * 1024 * 1024)))
            writer.write(head(length=len(data)))
            for i in range(0, len(data), 256 * 1024):
                writer.write(data[i:i + 256 * 1024])
                await writer.drain()
            return
        elif stream or model in STREAM_ONLY:
            return await self._stream(model, body, writer)
        data = orjson.dumps(completion(model, "".join(CONTENT)))
        writer.write(head(length=len(data)) + data)

    async def _stream(self, model: str, body: dict, writer: asyncio.StreamWriter) -> None:
        writer.write(head(content_type="text/event-stream; charset=utf-8"))
        if model == "empty-stream":
            return
        if model == "malformed-sse":
            writer.write(b"<html><body>502 Bad Gateway</body></html>\n")
            return
        if model == "comments-only":
            while not writer.is_closing():
                writer.write(b": keep-alive\n\n")
                await writer.drain()
                await asyncio.sleep(0.05)
            return
        writer.write(chunk(model, {"role": "assistant", "content": ""}))
        await writer.drain()
        if model == "reset-role":
            return await _reset(writer)
        writer.write(chunk(model, {"content": CONTENT[0]}))
        await writer.drain()
        if model == "reset-stream":
            return await _reset(writer)
        if model == "error-after-content":
            writer.write(b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n')
            return
        if model in ("endless", "endless-comments"):
            while not writer.is_closing():
                writer.write(chunk(model, {"content": "x"}) if model == "endless" else b": keep-alive\n\n")
                await writer.drain()
                await asyncio.sleep(0.05)
            return
        if model == "huge-event":
            writer.write(b'data: {"choices": [{"delta": {"content": "')
            for _ in range(9 * 4):
                writer.write(b"x" * 256 * 1024)
                await writer.drain()
            return
        if model == "gated":
            await self.gate.wait()
        if model == "malformed-sse-json":
            writer.write(b'data: {"id": "chatcmpl-faulty", "choices": [{"index": 0, "delta": {"cont\n\n')
        if model == "not-json-event":
            writer.write(b"data: {not json}\n\n")
        for piece in CONTENT[1:]:
            writer.write(chunk(model, {"content": piece}))
        writer.write(chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            writer.write(usage_chunk(model))
        writer.write(b"data: [DONE]\n\n")


STREAM_ONLY = ("empty-stream", "malformed-sse", "reset-role", "reset-stream", "error-after-content", "endless",
               "endless-comments", "huge-event", "gated", "malformed-sse-json", "not-json-event", "comments-only")


@functools.lru_cache(maxsize=4)
def gzip_bomb(mb: float) -> bytes:
    """A chat completion of `mb` MB (content all "x"), gzip-compressed in 1 MB steps."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)          # wbits 31: the gzip container
    prefix, suffix = orjson.dumps(completion("bomb", "@")).split(b'"@"')
    out = [z.compress(prefix + b'"')]
    block = b"x" * (1024 * 1024)
    for _ in range(int(mb)):
        out.append(z.compress(block))
    out.append(z.compress(b'"' + suffix))
    out.append(z.flush())
    return b"".join(out)


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Let what was written reach the peer, then abort the connection with a TCP RST."""
    await writer.drain()
    await asyncio.sleep(0.05)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
