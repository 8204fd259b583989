"""A fake OpenAI upstream on 127.0.0.1 speaking the exact wire format (recorded fixtures).

Behaviour is chosen by the upstream model name the gateway sends:
  <anything>          recorded completion / text stream (usage chunk only if asked)
  tools               recorded parallel tool-call stream / completion
  fail-<status>       that HTTP status with OpenAI's error body echoing the key it was sent
                      (429 adds Retry-After: 7)
  slow                waits `slow_seconds` before answering
  hang                never answers (for disconnect tests)
  stream-hang         the role and first content chunks, then waits forever (for disconnect tests)
  stall               two chunks, then silence (idle timeout)
  broken              two chunks, then the connection is cut
  midstream-error     the role chunk and one content chunk, then an error event
  malformed           200 with a body that is not JSON
  error-body          200 with an error object
  gated               streams the role and first content chunks, then waits for `gate` to be set (buffering tests)
  smart-<anything>    answers from the request like a real model (see `smart_answer`): echo, tool
                      calls when tools are offered and asked for, JSON for response_format, usage
                      with reasoning and cached tokens; checks OpenAI's rules (tool messages answer
                      the previous tool_calls, json_object needs the word "json") with a 400;
                      `script` (trigger text -> (tool, arguments)) scripts exact tool calls

A request whose `response_format` is a `json_schema` is answered with JSON content that
matches the schema (non-streaming and streaming), so `client.beta.chat.completions.parse`
works through the pass-through.
`POST /v1/responses` answers as OpenAI's Responses API does (tests/fakes/openai_responses.py).
"""
from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import itertools
import pathlib
import time

import orjson
from aiohttp import web

from tests.fakes import openai_responses, serve_loopback
from tests.fakes.answers import asks_for_tool, attachments_note, cities_in, sample, scripted, split, tokens

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "openai"


def _events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict] = []          # {"path", "headers", "json", "raw"}
        self.disconnected = asyncio.Event()     # set when a client goes away mid-request
        self.gate = asyncio.Event()             # releases the `gated` stream
        self.slow_seconds = 1.0
        self.smart_cache: set[str] = set()      # prompt prefixes seen by `smart-*` models
        self.script: dict[str, tuple[str, dict]] = {}   # `smart-*`: user text holding a trigger -> that call
        self.completion = orjson.loads((FIXTURES / "completion.json").read_bytes())
        self.text_stream = _events("text_stream.sse")
        self.tool_stream = _events("tool_stream.sse")
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/responses", functools.partial(openai_responses.handle, self))
        self.responses_sent: list[list[bytes]] = []    # the exact events of each streamed /v1/responses answer

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

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """Legacy completions: each prompt echoed as its choice's text (after the prompt with
        `echo`, then `suffix`); `logprobs` gets a logprobs object; streams in 3 pieces a choice,
        the usage chunk only when asked; `fail-<status>` models fail as in `chat`."""
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body, "raw": raw})
        if body.get("model", "").startswith("fail-"):
            return web.json_response({"error": {"message": "Simulated failure", "type": "server_error"}},
                                     status=int(body["model"].split("-")[1]))
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        texts = [(p if body.get("echo") else "") + f"echo: {p}" + (body.get("suffix") or "") for p in prompts]
        logprobs = {"tokens": ["echo"], "token_logprobs": [-0.1], "top_logprobs": None, "text_offset": [0]}
        usage = {"prompt_tokens": sum(tokens(str(p)) for p in prompts),
                 "completion_tokens": sum(tokens(t) for t in texts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "cmpl-fake1", "object": "text_completion", "created": 1700000000, "model": body["model"]}
        lp = logprobs if body.get("logprobs") is not None else None
        if not body.get("stream"):
            return web.json_response({**base, "choices": [
                {"text": t, "index": i, "logprobs": lp, "finish_reason": "stop"} for i, t in enumerate(texts)],
                "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, text in enumerate(texts):
            parts = split(text, 3)
            for j, part in enumerate(parts):
                choice = {"text": part, "index": i, "logprobs": lp,
                          "finish_reason": "stop" if j == len(parts) - 1 else None}
                await resp.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body, "raw": raw})
        model = body.get("model", "")
        try:
            return await self._answer(request, body, model)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    async def _answer(self, request, body, model):
        if model.startswith("smart"):
            return await self._smart(request, body)
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            headers = {"Retry-After": "7"} if status == 429 else {}
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            # real providers echo (part of) the key they were sent: the gateway must not pass it on
            return web.json_response({"error": {"message": f"Simulated failure {status} for sk-secret123456789 "
                                                           f"(key used: {key})",
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
        structured = _structured_content(body)
        if not body.get("stream"):
            data = copy.deepcopy(self.completion)
            if structured is not None:
                data["choices"][0]["message"]["content"] = structured
            if model == "tools":
                data["choices"][0]["message"] = {
                    "role": "assistant", "content": None, "refusal": None,
                    "tool_calls": [{"id": "call_abc123", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
                data["choices"][0]["finish_reason"] = "tool_calls"
            return web.json_response(data)
        events = self.tool_stream if model == "tools" else self.text_stream
        if structured is not None:
            events = _structured_stream(events, structured)
        if not (body.get("stream_options") or {}).get("include_usage"):
            events = [e for e in events if b'"choices":[]' not in e]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for i, ev in enumerate(events):
            if model == "gated" and i == 2:
                await self.gate.wait()
            if model == "stream-hang" and i == 2:
                await asyncio.sleep(3600)
            if model == "stall" and i == 2:
                await asyncio.sleep(3600)
            if model == "broken" and i == 2:
                request.transport.close()
                return resp
            if model == "midstream-error" and i == 2:
                await resp.write(b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n')
                return resp
            await resp.write(ev)
        return resp

    async def _smart(self, request: web.Request, body: dict) -> web.StreamResponse:
        try:
            message, finish, usage = smart_answer(body, self.smart_cache, self.script)
        except SmartRejected as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error",
                                                "param": exc.param, "code": None}}, status=400)
        rid = "chatcmpl-smart" + hashlib.sha1(orjson.dumps(body["messages"])).hexdigest()[:20]
        base = {"id": rid, "created": int(time.time()), "model": body["model"], "service_tier": "default",
                "system_fingerprint": "fp_smart"}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for chunk in smart_chunks(message, finish, usage if with_usage else None):
            await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", **chunk}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


def _structured_content(body: dict) -> str | None:
    """JSON text matching the request's json_schema response_format, or None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt["json_schema"]["schema"]
    return orjson.dumps(sample(schema, "Paris")).decode()


def _structured_stream(events: list[bytes], content: str) -> list[bytes]:
    """The recorded text stream with its content deltas replaced by `content` in two pieces."""
    head, content_events, tail = events[:1], events[1:-3], events[-3:]
    template = orjson.loads(content_events[0][len(b"data: "):])
    out = list(head)
    half = len(content) // 2
    for piece in (content[:half], content[half:]):
        template["choices"][0]["delta"] = {"content": piece}
        out.append(b"data: " + orjson.dumps(template) + b"\n\n")
    return out + tail


# --- `smart-*` models: answers computed from the request --------------------------------------

class SmartRejected(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _check_smart(body: dict) -> None:
    """OpenAI's own request rules that a pass-through gateway must not break."""
    pending: list[str] = []
    for i, m in enumerate(body["messages"]):
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in pending:
                raise SmartRejected("Invalid parameter: messages with role 'tool' must be a response to a "
                                    "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            raise SmartRejected("An assistant message with 'tool_calls' must be followed by tool messages "
                                f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
                                f"response messages: {', '.join(pending)}", f"messages.[{i}].role")
        pending = [c["id"] for c in m.get("tool_calls") or ()] if m.get("role") == "assistant" else []
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object" and b"json" not in orjson.dumps(body["messages"]).lower():
        raise SmartRejected("'messages' must contain the word 'json' in some form, to use 'response_format' "
                            "of type 'json_object'.", "messages")


def _parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())


def smart_answer(body: dict, cache: set, script: dict | None = None) -> tuple[dict, str, dict]:
    """(assistant message, finish_reason, usage) for a `smart-*` request."""
    _check_smart(body)
    messages = body["messages"]
    message: dict = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    finish = "stop"
    trailing = list(itertools.takewhile(lambda m: m.get("role") == "tool", reversed(messages)))
    user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    parts = _parts(user.get("content"))
    text = " ".join(p.get("text", "") for p in parts if p.get("type") == "text")
    tools = [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    names = [t["name"] for t in tools]
    fmt = body.get("response_format") or {}
    hit = scripted(script or {}, text, names) if choice != "none" and not trailing else None
    if hit is not None:
        message["tool_calls"] = [{"id": "call_" + hashlib.sha1(f"{hit[0]}{text}".encode()).hexdigest()[:24],
                                  "type": "function", "function": {"name": hit[0],
                                                                   "arguments": orjson.dumps(hit[1]).decode()}}]
        finish = "tool_calls"
    elif trailing:
        message["content"] = "Tool results: " + "; ".join(
            " ".join(p.get("text", "") for p in _parts(m.get("content"))) for m in reversed(trailing))
    elif tools and choice != "none" and (named or choice == "required" or asks_for_tool(text, names)):
        fn = next(t for t in tools if t["name"] == named) if named else \
            next((t for t in tools if t["name"] in text), tools[0])
        cities = cities_in(text) or [text[:40] or "Paris"]
        if named or body.get("parallel_tool_calls") is False:
            cities = cities[:1]
        message["tool_calls"] = [
            {"id": "call_" + hashlib.sha1(f"{fn['name']}{city}{text}".encode()).hexdigest()[:24], "type": "function",
             "function": {"name": fn["name"], "arguments": orjson.dumps(sample(fn.get("parameters"), city)).decode()}}
            for city in cities]
        finish = "tool_calls"
    elif fmt.get("type") == "json_schema":
        message["content"] = orjson.dumps(sample(fmt["json_schema"]["schema"], text)).decode()
    elif fmt.get("type") == "json_object":
        message["content"] = orjson.dumps({"echo": text}).decode()
    else:
        kinds = [p.get("type") for p in parts]
        pdfs = sum(1 for p in parts if p.get("type") == "image_url"
                   and str((p.get("image_url") or {}).get("url", "")).startswith("data:application/pdf"))
        note = attachments_note(kinds.count("image_url") - pdfs, kinds.count("file") + pdfs)
        audio = f" [audio={kinds.count('input_audio')}]" if "input_audio" in kinds else ""
        message["content"] = (text or "(no text)") + note + audio
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and tokens(message["content"]) > limit:
            message["content"], finish = message["content"][:limit * 4], "length"
    effort = body.get("reasoning_effort")
    reasoning = {"minimal": 16, "low": 64, "medium": 128, "high": 256, "xhigh": 512}.get(effort, 0)
    out = message["content"] or orjson.dumps(message.get("tool_calls")).decode()
    prompt = 3 + sum(4 + tokens(orjson.dumps(m).decode()) for m in messages) + tokens(orjson.dumps(tools).decode())
    prefix = orjson.dumps([body.get("tools"), messages[:-1]])
    cached = 0
    if tokens(prefix.decode()) >= 1024:
        key = hashlib.sha256(body["model"].encode() + prefix).hexdigest()
        cached = tokens(prefix.decode()) // 128 * 128 if key in cache else 0
        cache.add(key)
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens(out) + reasoning,
             "total_tokens": prompt + tokens(out) + reasoning,
             "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    return message, finish, usage


def smart_chunks(message: dict, finish: str, usage: dict | None) -> list[dict]:
    """The chunks of a streamed `smart-*` answer (without the envelope fields)."""
    def chunk(delta: dict, reason=None) -> dict:
        out = {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        return {**out, "usage": None} if usage is not None else out

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": piece}) for piece in split(message["content"] or "", 3)]
    for i, call in enumerate(message.get("tool_calls") or ()):
        chunks.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                   for piece in split(call["function"]["arguments"], 3)]
    chunks.append(chunk({}, finish))
    if usage is not None:
        chunks.append({"choices": [], "usage": usage})
    return chunks


async def start(fake: FakeOpenAI) -> tuple[web.AppRunner, str]:
    """Serve the fake on 127.0.0.1; returns (runner, base URL with /v1)."""
    runner, origin = await serve_loopback(fake.app)
    return runner, origin + "/v1"
