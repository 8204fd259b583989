"""The built-in `mock` provider: deterministic answers so the gateway runs with no keys.

It echoes the last user message, streams it in chunks, reports realistic usage, answers with
a tool call when tools are offered and the message asks for one (the tool it names, else the
first; or tool_choice forces it; arguments built from the tool's `parameters`, `{}` when it has
none), with JSON when `response_format` asks for it (in `json_object` mode matching a JSON
Schema written in the system prompt, as instructor's and LangChain's JSON modes send it), `n`
choices, and embeddings as floats or base64. Model names trigger behaviours, as in
TensorZero's dummy provider: a name containing `error` fails with HTTP 500, `stream-error`
breaks its stream after the first chunks, `slow` waits two seconds before answering.
Options: `latency_ms` (before the first byte), `chunks` (pieces per streamed answer),
`chunk_delay_ms` (gap between streamed chunks).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import time
from typing import AsyncIterator

import orjson

from proxy.context import JSONReply, StreamReply, Usage
from proxy.errors import InvalidRequest, ProviderError
from proxy.providers.base import Provider
from proxy.sse import DONE, data_event

MAX_DIMENSIONS = 4096      # embeddings' largest `dimensions` (OpenAI's largest model has 3072)
MAX_CHOICES = 128          # `n` (the gateway's validation allows 1..128)
_DECODER = json.JSONDecoder()
SAMPLE_NODES = 1000        # values a schema sample is built from at most (a self-referencing schema is cut)
_TOOL_ASK = re.compile(r"\b(call|use|invoke|run)\b.*\b(tool|function)\b|\bweather\b", re.I | re.S)


class MockProvider(Provider):
    type = "mock"
    OPTIONS = {"latency_ms": ("number", 0.0), "chunks": ("int", 8), "chunk_delay_ms": ("number", 0.0)}
    default_capabilities = {"vision": True, "tools": True, "structured_outputs": True, "reasoning": True,
                            "prompt_caching": False, "pdf": True, "audio": False}

    async def chat(self, ctx, body: dict):
        model = body.get("model") or "mock"
        delay = (self.config.options.get("latency_ms") or 0) / 1000 + (2.0 if "slow" in model else 0)
        if delay:
            await asyncio.sleep(delay)
        if "error" in model and "stream-error" not in model:
            raise ProviderError(f"provider {self.name!r} returned HTTP 500: mock failure requested by "
                                f"model name {model!r}", upstream_status=500)
        message, finish = answer(body)
        ctx.usage = usage_of(body, message, choices(body))
        rid = "chatcmpl-mock-" + hashlib.sha1(orjson.dumps(body.get("messages"))).hexdigest()[:24]
        if body.get("stream"):
            return StreamReply(self._stream(ctx, rid, model, message, finish, "stream-error" in model,
                                            choices(body)))
        return JSONReply({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "mock",
            "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                        for i in range(choices(body))],
            "usage": ctx.usage.to_openai(ctx.finalize_cost()),
        })

    async def embeddings(self, ctx, body: dict):
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise InvalidRequest("'input' must be a string or a non-empty list", param="input")
        dims = body.get("dimensions") or 8
        if not isinstance(dims, int) or not 1 <= dims <= MAX_DIMENSIONS:
            raise InvalidRequest(f"The mock provider makes vectors of 1 to {MAX_DIMENSIONS} dimensions.",
                                 param="dimensions", code="invalid_value")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            vector = [round(digest[j % 32] / 255 - 0.5, 6) for j in range(dims)]
            if as_base64:       # float32 little-endian, as OpenAI sends it (the SDK's default)
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_tokens(str(t)) for t in inputs)
        ctx.usage = Usage(prompt_tokens=tokens, known=True)
        return JSONReply({"object": "list", "data": data, "model": body.get("model"),
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _stream(self, ctx, rid, model, message, finish, broken, count: int) -> AsyncIterator[bytes]:
        opts = self.config.options
        gap = (opts.get("chunk_delay_ms") or 0) / 1000
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "system_fingerprint": "mock"}

        def chunk(delta: dict, finish_reason=None, index: int = 0) -> bytes:
            return data_event(orjson.dumps({**base, "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}))

        pieces = split(message.get("content") or "", int(opts.get("chunks") or 8))
        for n in range(count):          # n > 1: each choice streamed in turn, as OpenAI may interleave them
            yield chunk({"role": "assistant", "content": ""}, index=n)
            if message.get("reasoning_content"):
                yield chunk({"reasoning_content": message["reasoning_content"]}, index=n)
            for i, piece in enumerate(pieces):
                if gap:
                    await asyncio.sleep(gap)
                if broken and i >= 1:
                    raise ProviderError(f"provider {self.name!r} broke off the stream (mock stream-error)",
                                        code="upstream_broken")
                yield chunk({"content": piece}, index=n)
            for i, call in enumerate(message.get("tool_calls") or ()):
                yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]},
                            index=n)
                for piece in split(call["function"]["arguments"], 3):
                    yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, index=n)
            yield chunk({}, finish, index=n)
        if ctx.include_usage:
            yield data_event(orjson.dumps({**base, "choices": [],
                                           "usage": ctx.usage.to_openai(ctx.finalize_cost())}))
        yield DONE


def answer(body: dict) -> tuple[dict, str]:
    """The mock's deterministic assistant message and finish reason for a request. Any JSON
    gets an answer: what the mock cannot use (a tool without a named function, a schema that
    is not an object) is ignored, never a 500."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    text = last_user_text(messages)
    message: dict = {"role": "assistant", "content": text, "refusal": None}
    effort = body.get("reasoning_effort")
    if effort and effort != "none":
        message["reasoning_content"] = f"The user said {len(text)} characters; I will echo them."
    call = tool_call(body, messages, text)
    if call is not None:
        message["content"] = None
        message["tool_calls"] = [call]
        return message, "tool_calls"
    fmt = _obj(body.get("response_format"))
    if fmt.get("type") == "json_schema":
        schema = _obj(fmt.get("json_schema")).get("schema") or {"type": "object"}
        message["content"] = orjson.dumps(sample(schema, text)).decode()
    elif fmt.get("type") == "json_object":      # instructor / LangChain JSON mode: the schema is in the prompt
        schema = schema_in(messages)
        message["content"] = orjson.dumps(sample(schema, text) if schema else {"echo": text}).decode()
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0 and _tokens(message["content"] or "") > max_tokens:
        message["content"] = (message["content"] or "")[: max_tokens * 4]
        return message, "length"
    return message, "stop"


def tool_call(body: dict, messages: list[dict], text: str) -> dict | None:
    """A call of one of the offered functions when tool_choice forces it or the text asks."""
    tools = [t["function"] for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
             and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
    choice = body.get("tool_choice")
    last = next((m for m in reversed(messages) if m.get("role") not in ("system", "developer")),
                {})      # system text after the turn (Claude Code sends some) does not hide a tool result
    if not tools or choice == "none" or last.get("role") == "tool":
        return None
    named = _obj(_obj(choice).get("function")).get("name")
    mentioned = next((fn for fn in tools if fn["name"] in text), None)
    if not (named or choice == "required" or _TOOL_ASK.search(text) or mentioned):
        return None
    fn = next((fn for fn in tools if fn["name"] == named), mentioned or tools[0])
    params = fn.get("parameters")
    args = sample(params, text) if isinstance(params, dict) and params.get("properties") else {}
    call_id = "call_" + hashlib.sha1((fn["name"] + text).encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function",
            "function": {"name": fn["name"], "arguments": orjson.dumps(args).decode()}}


def choices(body: dict) -> int:
    n = body.get("n")
    return n if type(n) is int and 1 <= n <= MAX_CHOICES else 1


def schema_in(messages: list[dict]) -> dict | None:
    """The first JSON Schema object written in a system (or developer) message, if any."""
    for m in messages:
        content = m.get("content")
        if m.get("role") not in ("system", "developer") or not isinstance(content, str):
            continue
        start = content.find("{")
        while 0 <= start < len(content):
            try:
                found, _ = _DECODER.raw_decode(content, start)
            except ValueError:
                found = None
            if isinstance(found, dict) and ("properties" in found or "$defs" in found):
                return found
            start = content.find("{", start + 1)
    return None


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


def last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
                                and isinstance(p.get("text"), str))
    return ""


def sample(schema, text: str, root: dict | None = None, depth: int = 0, budget: list[int] | None = None):
    """A value that satisfies a (simple) JSON Schema, built from the echoed text. `$ref`s into
    `$defs`/`definitions` (pydantic's nested models) are followed. Whatever the schema, the
    value has at most SAMPLE_NODES parts and 16 levels (null past them)."""
    budget = [SAMPLE_NODES] if budget is None else budget
    budget[0] -= 1
    if not isinstance(schema, dict) or depth > 16 or budget[0] < 0:
        return None
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target = root
        for part in ref.lstrip("#/").split("/") if ref != "#" else ():
            target = target.get(part) if isinstance(target, dict) else None
        return sample(target, text, root, depth + 1, budget)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return sample(options[0], text, root, depth + 1, budget)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    props = schema.get("properties")
    if kind == "object" or props is not None:
        return ({name: sample(sub, text, root, depth + 1, budget) for name, sub in props.items()}
                if isinstance(props, dict) and props else {"echo": text})
    return {"string": text, "integer": len(text), "number": float(len(text)), "boolean": True,
            "array": [], "null": None}.get(kind, text) if isinstance(kind, str) or kind is None else text


def split(text: str, n: int) -> list[str]:
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size = -(-len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def usage_of(body: dict, message: dict, n: int = 1) -> Usage:
    prompt = 3
    for m in body.get("messages") or []:
        prompt += 4 + _tokens(orjson.dumps(m.get("content")).decode() if isinstance(m, dict) else "")
    out = message.get("content") or orjson.dumps(message.get("tool_calls") or "").decode()
    reasoning = _tokens(message.get("reasoning_content") or "")
    return Usage(prompt_tokens=prompt, completion_tokens=(_tokens(out) + reasoning) * n,
                 reasoning_tokens=reasoning * n, known=True)
