"""Helpers for the core gateway tests (fixtures in conftest.py): one routing table over the
fake upstream and the mock provider, raw HTTP access for exact bytes, the JSON log lines."""
from __future__ import annotations

import io
import pathlib

import aiohttp
import orjson

from proxy import logs
from proxy.context import StreamReply
from proxy.errors import PermissionDenied
from proxy.pipeline import Middleware
from tests.wire import chat_body, sse_data  # noqa: F401  (re-exported to the core tests)

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
CLIENT_KEY = "sk-client-abcdef0123456789"
FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "openai"

# `up/<behaviour>` forwards <behaviour> to the fake upstream (see tests/fakes/openai_upstream.py).
CONFIG = """{server}
middlewares: [access_log]
providers:
  up:
    type: openai
    base_url: "{url}"
    api_key: "${{UP_KEY}}"
    timeouts: {{first_byte: {first_byte}, idle: {idle}, total: 30}}
  mock: {{type: mock, options: {{chunks: 4}}}}
models:
  gpt-4o-mini:
    targets: [{{provider: up, model: gpt-4o-mini-2024-07-18}}]
    pricing: {{input: 0.15, output: 0.60, cached_input: 0.075}}
    context_length: 128000
  text-embedding-3-small: {{targets: [{{provider: up}}], pricing: {{input: 0.02}}}}
  "up/*": {{targets: [{{provider: up}}], retries: 0, pricing: {{input: 0.15, output: 0.60, cached_input: 0.075}}}}
  "openai/*": {{targets: [{{provider: up}}], retries: 0}}
  mock-echo: {{targets: [{{provider: mock}}], pricing: {{input: 1.0, output: 2.0}}}}
{extra}
"""


def gateway_config(url: str, *, first_byte: float = 5, idle: float = 5, extra: str = "", server: str = "") -> str:
    """The standard table; `extra` adds model lines, `server` a whole `server:` line (with data_dir)."""
    return CONFIG.format(url=url, first_byte=first_byte, idle=idle, extra=extra, server=server)


async def post_json(http: aiohttp.ClientSession, url: str, body, headers: dict | None = None):
    """POST and return (status, headers, parsed JSON body)."""
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})}
    async with http.post(url, data=data, headers=hdrs) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, (orjson.loads(raw) if raw else None)


async def post_stream(http: aiohttp.ClientSession, url: str, body: dict, headers: dict | None = None):
    """POST a streaming request and return (status, headers, raw body bytes)."""
    hdrs = {"Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})}
    async with http.post(url, json=body, headers=hdrs) as resp:
        return resp.status, resp.headers, await resp.read()


def fixture_events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]


def assert_envelope(status_headers_body, status: int, type_: str, code: str | None = None,
                    param: str | None = None) -> dict:
    """The SPEC §6 error envelope, with trace_id equal to the x-request-id header."""
    got_status, headers, body = status_headers_body
    assert got_status == status, body
    err = body["error"]
    assert set(err) >= {"message", "type", "code", "param", "tip", "trace_id"}
    assert err["type"] == type_
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    assert err["trace_id"] and err["trace_id"] == headers["x-request-id"]
    assert headers["Content-Type"].startswith("application/json")
    return err


class LogLines:
    """The gateway's JSON log output (the real processor chain, written to a buffer)."""

    def __init__(self, buf: io.BytesIO):
        self.buf = buf

    @property
    def raw(self) -> bytes:
        logs.flush_access()      # the access lines of the current event-loop turn
        return self.buf.getvalue()

    def events(self, name: str | None = None) -> list[dict]:
        out = [orjson.loads(line) for line in self.raw.splitlines() if line.strip()]
        return [e for e in out if name is None or e.get("event") == name]

    def access(self, request_id: str) -> dict:
        lines = [e for e in self.events("request") if e.get("request_id") == request_id]
        assert len(lines) == 1, f"expected one access line for {request_id}, got {lines}"
        return lines[0]


class Explode(Middleware):
    """A custom middleware (named by import path in routes.yaml) that fails unexpectedly: before
    the call for `model`, or after the first streamed event for `stream_model`."""

    def __init__(self, model: str, stream_model: str):
        self.model, self.stream_model = model, stream_model

    async def handle(self, ctx, call_next):
        if ctx.model == self.model:
            raise RuntimeError("unexpected failure near sk-inner-secret-0123456789")
        reply = await call_next(ctx)
        if ctx.model == self.stream_model and isinstance(reply, StreamReply):
            reply.events = self._explode_after_first(reply.events)
        return reply

    @staticmethod
    async def _explode_after_first(events):
        try:
            async for ev in events:
                yield ev
                raise RuntimeError("unexpected failure mid-stream")
        finally:
            await events.aclose()


def explode(gateway, config=None, *, model: str = "explode", stream_model: str = "explode-stream") -> Explode:
    return Explode(model, stream_model)



def _trace(ctx, part: str) -> None:
    ctx.response_headers["x-trace"] = ctx.response_headers.get("x-trace", "") + part + " "


class TraceBefore(Middleware):
    """A custom `before` hook: adds its name to the `x-trace` response header; answers 403 for
    the model named `refuse`."""

    def __init__(self, name: str, refuse: str | None):
        self.label, self.refuse = name, refuse

    def before(self, ctx) -> None:
        _trace(ctx, self.label)
        if ctx.model == self.refuse:
            raise PermissionDenied(f"{self.label} refuses {ctx.model}")


class TraceWrap(Middleware):
    """A custom `handle` wrapper: adds `name` to `x-trace` before the call and `/name` after,
    and `name:before` from its `before` hook, which runs first."""

    def __init__(self, name: str):
        self.label = name

    def before(self, ctx) -> None:
        _trace(ctx, self.label + ":before")

    async def handle(self, ctx, call_next):
        _trace(ctx, self.label)
        reply = await call_next(ctx)
        _trace(ctx, "/" + self.label)
        return reply


def trace(gateway, config=None, *, name: str, wrap: bool = False, refuse: str | None = None) -> Middleware:
    return TraceWrap(name) if wrap else TraceBefore(name, refuse)
