"""A fake Anthropic Messages API on 127.0.0.1 (POST /v1/messages) that enforces the real API's rules.

Every request is checked before it is answered, and a broken rule is a 400 `invalid_request_error`
in Anthropic's error shape, as the real API would send it:
  - headers: `x-api-key` (or a Bearer token, as newer SDKs send) equal to `api_key`, else 401
    authentication_error; `anthropic-version` present and a known version;
  - the body: tests/fixtures/anthropic/api_rules.py (max_tokens, no system role in messages,
    alternating roles, tool_result ids matching the previous tool_use ids, thinking budget >= 1024
    and < max_tokens, block shapes, at most 4 cache breakpoints, ...);
  - thinking replay: every thinking block sent back must carry the signature this fake issued for
    that exact text (redacted_thinking: data it issued), and with thinking enabled an assistant turn
    whose tool_use is being answered must start with its thinking block. Verified blocks are kept
    in `verified_thinking` - the proof that multi-turn reasoning round-trips.

Answers are deterministic, in the exact wire format (JSON, or SSE with message_start, ping,
content_block_start/delta/stop, message_delta, message_stop):
  - last user turn holds tool_result blocks -> text "Tool results: <their texts>";
  - tools offered, tool_choice not none, and the user asks (a tool's name, "weather", "use the ...
    tool") or tool_choice forces it -> tool_use blocks (one per city named - Paris, Tokyo, ... -
    unless disable_parallel_tool_use or a named choice), after a short text when the choice is auto;
  - `script` (trigger text -> (tool, input)): a user text holding a trigger -> exactly that tool_use;
  - output_config.format json_schema -> text holding JSON that matches the schema;
  - otherwise the last user text echoed, with " [images=N documents=M]" when it carried any;
  - thinking enabled -> a thinking block with a signature first (not on a tool-result turn, as the
    API continues the same assistant turn there); a user text containing "secret" adds a
    redacted_thinking block;
  - stop_sequences and max_tokens are honoured (stop_reason stop_sequence / max_tokens).
Usage is counted ~4 characters a token; blocks up to a cache_control breakpoint are a prompt cache
(>= 1024 tokens): the first request writes it (cache_creation_input_tokens), repeats read it
(cache_read_input_tokens); thinking is reported in output_tokens_details.thinking_tokens. `answers`
keeps every message sent (its usage is what the gateway must report).

Upstream model names trigger failures: `overloaded` -> 529, `ratelimited` -> 429 with retry-after 3,
`apierror` -> 500, `badrequest` -> 400 whose message echoes the key it was sent, `forbidden` -> 403,
`notfound` -> 404, `toolarge` -> 413, `prompt-too-long` -> 400 prompt is too long; streams:
`error-first` -> an overloaded `error` as the first event, `midstream-error` -> an `error` event after
the first text delta, `stream-hang` -> silence after the first text delta (client-disconnect tests:
`disconnected` is set when the gateway hangs up).
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import importlib.util
import itertools
import os
import pathlib
import re
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import serve_loopback
from tests.fakes.answers import asks_for_tool, attachments_note, cities_in, sample, scripted, split, tokens

API_KEY = "sk-ant-test"
API_VERSION = "2023-06-01"          # the oldest version the API takes
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MIN_CACHE_TOKENS = 1024

_RULES = pathlib.Path(__file__).parent.parent / "fixtures" / "anthropic" / "api_rules.py"


@functools.cache
def api_rules():
    """tests/fixtures/anthropic/api_rules.py, loaded on first use (it imports the anthropic SDK,
    which the fake OpenAI upstream - importing this module's helpers - must not pay for)."""
    spec = importlib.util.spec_from_file_location("anthropic_api_rules", _RULES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Rejected(Exception):
    """An Anthropic error response: status, error type and message."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_fake" + os.urandom(8).hex()}


# --- the fake -------------------------------------------------------------------------------

class FakeAnthropic:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[dict] = []          # {"path", "query", "headers", "json", "raw"} as received
        self.sent: list[bytes] = []             # the body bytes of every answer (a stream's, all of it)
        self.answers: list[dict] = []           # every message answered (streamed ones too)
        self.rejections: list[str] = []         # messages of the 4xx this fake sent
        self.verified_thinking: list[dict] = []  # thinking / redacted_thinking blocks replayed intact
        self.script: dict[str, tuple[str, dict]] = {}   # user text holding a trigger -> that tool_use
        self.disconnected = asyncio.Event()     # the gateway hung up mid-stream
        self.url = ""
        self._secret = os.urandom(16)
        self._cache: set[str] = set()
        self._redacted: set[str] = set()
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    @property
    def last(self) -> dict:
        return self.requests[-1]["json"]

    # --- request checks ------------------------------------------------------------------

    def sign(self, thinking: str) -> str:
        return "Eu" + base64.b64encode(hmac.new(self._secret, thinking.encode(), hashlib.sha256).digest()).decode()

    def _check_headers(self, request: web.Request) -> None:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):   # newer SDKs send Bearer
            raise Rejected(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if not version:
            raise Rejected(400, "invalid_request_error", "anthropic-version: header is required")
        if not VERSION_RE.match(version) or version < API_VERSION:
            raise Rejected(400, "invalid_request_error", f"anthropic-version: unknown version {version!r}")

    def _check_body(self, body: Any, betas: frozenset = frozenset()) -> None:
        try:
            api_rules().check_request(body, betas)
        except AssertionError as exc:
            raise Rejected(400, "invalid_request_error", str(exc)) from None
        if "stream" in body and not isinstance(body["stream"], bool):
            raise Rejected(400, "invalid_request_error", "stream: Input should be a valid boolean")
        self._check_thinking_replay(body)

    def _check_thinking_replay(self, body: dict) -> None:
        messages = body["messages"]
        for i, msg in enumerate(messages):
            for j, block in enumerate(msg["content"] if isinstance(msg["content"], list) else ()):
                where = f"messages.{i}.content.{j}"
                if block["type"] == "thinking":
                    if not hmac.compare_digest(block["signature"], self.sign(block["thinking"])):
                        raise Rejected(400, "invalid_request_error",
                                       f"{where}: Invalid `signature` in `thinking` block")
                    self.verified_thinking.append(block)
                elif block["type"] == "redacted_thinking":
                    if block["data"] not in self._redacted:
                        raise Rejected(400, "invalid_request_error",
                                       f"{where}: Invalid `data` in `redacted_thinking` block")
                    self.verified_thinking.append(block)
        if (body.get("thinking") or {}).get("type") != "enabled":
            return          # adaptive thinking may skip a turn's thinking: nothing to require
        # the assistant turn being continued with tool results must keep its thinking first
        for i in range(len(messages) - 1, 0, -1):
            msg, prev = messages[i], messages[i - 1]
            results = isinstance(msg["content"], list) and any(b["type"] == "tool_result" for b in msg["content"])
            if msg["role"] == "user" and results and prev["role"] == "assistant":
                first = prev["content"][0]["type"] if isinstance(prev["content"], list) else "text"
                if first not in ("thinking", "redacted_thinking"):
                    raise Rejected(400, "invalid_request_error",
                                   f"messages.{i - 1}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                                   f"but found `{first}`. When `thinking` is enabled, a final `assistant` message "
                                   "must start with a thinking block (preceeding the lastmost set of `tool_use` "
                                   "and `tool_result` blocks).")
                break
            if msg["role"] == "user" and not results:
                break

    def _failure(self, model: str, key: str) -> None:
        if "overloaded" in model:
            raise Rejected(529, "overloaded_error", "Overloaded")
        if "ratelimited" in model:
            raise Rejected(429, "rate_limit_error", "This request would exceed the rate limit for your organization "
                           "of 50,000 input tokens per minute.", {"retry-after": "3"})
        if "apierror" in model:
            raise Rejected(500, "api_error", "Internal server error")
        if "badrequest" in model:
            raise Rejected(400, "invalid_request_error", f"messages.0: this request was refused for x-api-key {key}")
        if "forbidden" in model:
            raise Rejected(403, "permission_error",
                           "Your API key does not have permission to use the specified resource.")
        if "notfound" in model:
            raise Rejected(404, "not_found_error", f"model: {model}")
        if "toolarge" in model:
            raise Rejected(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")
        if "prompt-too-long" in model:
            raise Rejected(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")

    # --- handler -------------------------------------------------------------------------

    async def _received(self, request: web.Request) -> dict | None:
        """Record the request, check its headers and body; None when it is not a JSON object."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append({"path": request.path, "query": request.query_string, "headers": dict(request.headers),
                              "json": body, "raw": raw})
        self._check_headers(request)
        if not isinstance(body, dict):
            raise Rejected(400, "invalid_request_error", "There was an error parsing the body of your request")
        return body

    def _rejected(self, exc: Rejected) -> web.Response:
        self.rejections.append(exc.message)
        return web.json_response(error_body(exc.kind, exc.message), status=exc.status,
                                 headers={"request-id": "req_fake", **exc.headers})

    def _json(self, data: dict) -> web.Response:
        raw = orjson.dumps(data)
        self.sent.append(raw)
        return web.Response(body=raw, content_type="application/json", headers={"request-id": "req_fake"})

    async def count_tokens(self, request: web.Request) -> web.Response:
        """POST /v1/messages/count_tokens: the same checks (no max_tokens needed), then the prompt's
        input tokens counted as `answer` would."""
        try:
            body = await self._received(request)
            self._check_body({"max_tokens": 1, **body}, betas(request))
            self._failure(body["model"], request.headers.get("x-api-key", ""))
        except Rejected as exc:
            return self._rejected(exc)
        input_tokens, created, read = self._cache_usage(body, store=False)
        return self._json({"input_tokens": input_tokens + created + read})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._received(request)
            self._check_body(body, betas(request))
            self._failure(body["model"], request.headers.get("x-api-key", ""))
        except Rejected as exc:
            return self._rejected(exc)
        message = self.answer(body)
        self.answers.append(message)
        if not body.get("stream"):
            return self._json(message)
        try:
            return await self._stream(request, body["model"], message)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise

    async def _stream(self, request: web.Request, model: str, message: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "request-id": "req_fake"})
        await resp.prepare(request)
        sent = bytearray()
        self.sent.append(sent)
        for name, data in self.events(message, model):
            event = b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            sent += event
            await resp.write(event)
            if name == "content_block_delta" and "midstream-error" in model:
                await resp.write(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                                 b'"message":"Overloaded"}}\n\n')
                return resp
            if name == "content_block_delta" and "stream-hang" in model:
                await asyncio.sleep(3600)
        await resp.write_eof()
        return resp

    # --- the answer ----------------------------------------------------------------------

    def answer(self, body: dict) -> dict:
        blocks, stop_reason, stop_sequence = self._content(body)
        input_tokens, created, read = self._cache_usage(body)
        output = sum(tokens(_block_text(b)) for b in blocks)
        thinking = sum(tokens(_block_text(b)) for b in blocks if b["type"] in ("thinking", "redacted_thinking"))
        return {"id": f"msg_fake{next(self._ids):04d}", "type": "message", "role": "assistant",
                "model": body["model"], "content": blocks, "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": created,
                          "cache_read_input_tokens": read,
                          "cache_creation": {"ephemeral_5m_input_tokens": created, "ephemeral_1h_input_tokens": 0},
                          "output_tokens": max(output, 1), "service_tier": "standard",
                          **({"output_tokens_details": {"thinking_tokens": thinking}} if thinking else {})}}

    def _content(self, body: dict) -> tuple[list[dict], str, str | None]:
        last = [m for m in body["messages"] if m["role"] != "system"][-1]   # mid-conversation system text aside
        blocks_in = last["content"] if isinstance(last["content"], list) else [
            {"type": "text", "text": last["content"]}]
        if last["role"] != "user":
            blocks_in = []                     # a prefill: continue it
        text = " ".join(b["text"] for b in blocks_in if b["type"] == "text")
        results = [b for b in blocks_in if b["type"] == "tool_result"]
        out: list[dict] = []
        if body.get("thinking") and not results:
            thought = f"The user wrote {len(text)} characters: {text[:60]!r}. I will answer carefully."
            out.append({"type": "thinking", "thinking": thought, "signature": self.sign(thought)})
            if "secret" in text.lower():
                data = "EmwK" + base64.b64encode(os.urandom(24)).decode()
                self._redacted.add(data)
                out.append({"type": "redacted_thinking", "data": data})
        if results:
            return out + [{"type": "text", "text": "Tool results: " + "; ".join(_result_text(r) for r in results)}], \
                "end_turn", None
        calls = self._tool_calls(body, text)
        if calls:
            return out + calls, "tool_use", None
        fmt = (body.get("output_config") or {}).get("format")
        if fmt:
            answer = orjson.dumps(sample(fmt["schema"], text)).decode()
            return out + [{"type": "text", "text": answer}], "end_turn", None
        images = sum(_count(b, "image") for b in blocks_in)
        documents = sum(_count(b, "document") for b in blocks_in)
        answer = (text or "(no text)") + attachments_note(images, documents)
        for stop in body.get("stop_sequences") or ():
            if stop in answer:
                return out + [{"type": "text", "text": answer[:answer.index(stop)] or "."}], "stop_sequence", stop
        if tokens(answer) > body["max_tokens"]:
            return out + [{"type": "text", "text": answer[:body["max_tokens"] * 4]}], "max_tokens", None
        return out + [{"type": "text", "text": answer}], "end_turn", None

    def _tool_calls(self, body: dict, text: str) -> list[dict]:
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        names = [t["name"] for t in tools]
        if not tools or choice["type"] == "none":
            return []
        hit = scripted(self.script, text, names)
        if hit is not None:
            call_id = "toolu_fake" + hashlib.sha1(f"{hit[0]}{text}".encode()).hexdigest()[:20]
            return [{"type": "tool_use", "id": call_id, "name": hit[0], "input": hit[1]}]
        if choice["type"] == "auto" and not asks_for_tool(text, names):
            return []
        if choice["type"] == "tool":
            tool = next(t for t in tools if t["name"] == choice["name"])
        else:
            tool = next((t for t in tools if t["name"] in text), None)
            tool = tool or (tools[0] if asks_for_tool(text, names) else tools[-1])
        cities = cities_in(text) or [text[:40] or "Paris"]
        if choice.get("disable_parallel_tool_use") or choice["type"] == "tool":
            cities = cities[:1]
        out: list[dict] = []
        if choice["type"] == "auto":
            out.append({"type": "text", "text": f"Let me call {tool['name']}."})
        for city in cities:
            call_id = "toolu_fake" + hashlib.sha1(f"{tool['name']}{city}{text}".encode()).hexdigest()[:20]
            out.append({"type": "tool_use", "id": call_id, "name": tool["name"],
                        "input": sample(tool["input_schema"], city)})
        return out

    def _cache_usage(self, body: dict, store: bool = True) -> tuple[int, int, int]:
        """(input, cache creation, cache read) tokens: prefixes ending at a breakpoint are cached."""
        parts: list[tuple[bytes, bool]] = []
        for tool in body.get("tools") or ():
            parts.append(_part(tool))
        system = body.get("system")
        for block in ([{"type": "text", "text": system}] if isinstance(system, str) else system or ()):
            parts.append(_part(block))
        for msg in body["messages"]:
            content = msg["content"] if isinstance(msg["content"], list) else [{"type": "text", "text": msg["content"]}]
            for block in content:
                parts.append(_part({**block, "role": msg["role"]}))
                for inner in block.get("content") if isinstance(block.get("content"), list) else ():
                    parts.append(_part(inner))
        sizes = [tokens(p.decode()) + 1 for p, _ in parts]
        total = sum(sizes) + 4
        breaks = [i for i, (_, cached) in enumerate(parts) if cached]
        keys = {i: hashlib.sha256(body["model"].encode() + b"".join(p for p, _ in parts[:i + 1])).hexdigest()
                for i in breaks}
        prefix = {i: sum(sizes[:i + 1]) for i in breaks}
        read = max((prefix[i] for i in breaks if keys[i] in self._cache), default=0)
        created = 0
        if breaks and prefix[breaks[-1]] >= MIN_CACHE_TOKENS and keys[breaks[-1]] not in self._cache:
            created = prefix[breaks[-1]] - read
        if store:
            self._cache.update(keys[i] for i in breaks if prefix[i] >= MIN_CACHE_TOKENS)
        return total - read - created, created, read

    # --- SSE ----------------------------------------------------------------------------

    def events(self, message: dict, model: str) -> list[tuple[str, dict]]:
        """The message as Anthropic's stream of (event name, data)."""
        if "error-first" in model:
            return [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**usage, "output_tokens": 1}}
        out: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                       ("ping", {"type": "ping"})]
        for index, block in enumerate(message["content"]):
            out += [(name, {**data, "index": index}) for name, data in _block_events(block)]
        delta_usage = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                             "output_tokens", "output_tokens_details") if k in usage}
        out.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}, "usage": delta_usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out


def betas(request: web.Request) -> frozenset:
    """The request's `anthropic-beta` values (comma-separated, the header may repeat)."""
    return frozenset(b.strip() for h in request.headers.getall("anthropic-beta", ()) for b in h.split(",") if b.strip())


def _block_events(block: dict) -> list[tuple[str, dict]]:
    kind = block["type"]
    if kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in split(block["thinking"], 2)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in split(block["text"], 3)]
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
            {"type": "input_json_delta", "partial_json": p} for p in split(orjson.dumps(block["input"]).decode(), 3)]
    else:                                   # redacted_thinking arrives whole
        start, deltas = block, []
    return ([("content_block_start", {"type": "content_block_start", "content_block": start})]
            + [("content_block_delta", {"type": "content_block_delta", "delta": d}) for d in deltas]
            + [("content_block_stop", {"type": "content_block_stop"})])


def _block_text(block: dict) -> str:
    return block.get("text") or block.get("thinking") or block.get("data") or orjson.dumps(block.get("input")).decode()


def _part(block: dict) -> tuple[bytes, bool]:
    stripped = {k: v for k, v in block.items() if k != "cache_control"}
    return orjson.dumps(stripped, option=orjson.OPT_SORT_KEYS), "cache_control" in block


def _count(block: dict, kind: str) -> int:
    if block["type"] == kind:
        return 1
    inner = block.get("content") if block["type"] == "tool_result" else None
    return sum(1 for b in inner if b["type"] == kind) if isinstance(inner, list) else 0


def _result_text(block: dict) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b["type"] == "text")


async def start(fake: FakeAnthropic) -> tuple[web.AppRunner, str]:
    """Serve the fake on 127.0.0.1; returns (runner, base URL without /v1)."""
    runner, fake.url = await serve_loopback(fake.app)
    return runner, fake.url
