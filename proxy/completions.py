"""POST /v1/completions: OpenAI's legacy text completions, for older tools.

An OpenAI-compatible target gets the request as sent (proxy.providers.openai_completions: model
rewritten, the gateway's fields removed). Every other target gets it translated through Chat
Completions and answers in the legacy `text_completion` shape, plain or streamed:

| completions request | chat request (translated targets) |
|---|---|
| `prompt` (a string, or a list holding one string) | one user message |
| `max_tokens`, `temperature`, `top_p`, `stop`, `n`, `seed`, `user`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `stream`, `stream_options` | the same fields |
| `suffix`, `echo: true`, `logprobs`, `best_of > 1`, several prompts, token-id prompts | 400 naming the field |

| chat answer | completions answer |
|---|---|
| `choices[i].message.content` (stream: `delta.content`) | `choices[i].text` (`logprobs: null`) |
| `finish_reason`, `usage` (with `cost`), `id`, `created`, `model` | the same, `object: text_completion` |
| the role-only first chunk | not sent (legacy streams have none) |
"""
from __future__ import annotations

from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from proxy.context import JSONReply, RequestContext, StreamReply
from proxy.errors import InvalidRequest
from proxy.handlers import new_context, run
from proxy.validate import read_json
from proxy.native import NATIVE_BODY, NATIVE_REPLY, UNTRANSLATABLE
from proxy.sse import data_event, split_events

COPIED = ("max_tokens", "temperature", "top_p", "stop", "n", "seed", "user", "presence_penalty",
          "frequency_penalty", "logit_bias", "stream", "stream_options", "preset", "cache", "models")


async def completions(request: web.Request) -> web.StreamResponse:
    ctx = new_context(request, "completions")
    return await run(request, ctx, prepare, to_completion_reply)


async def prepare(request: web.Request, ctx: RequestContext) -> None:
    body = await read_json(request, ctx)
    model = body.get("model")
    if not isinstance(model, str) or not (model or isinstance(body.get("preset"), str)):
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if "prompt" not in body:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    chat: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": _prompt_text(body, ctx)}]}
    for name in COPIED:
        if name in body:
            chat[name] = body[name]
    problem = _untranslatable(body)
    if problem is not None:
        ctx.extra[UNTRANSLATABLE] = problem
    ctx.body = chat
    ctx.extra[NATIVE_BODY] = body
    ctx.model = ctx.requested_model = model
    ctx.stream = body.get("stream") is True
    opts = body.get("stream_options")
    ctx.include_usage = ctx.stream and isinstance(opts, dict) and opts.get("include_usage") is True


def _prompt_text(body: dict, ctx: RequestContext) -> str:
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise InvalidRequest("'prompt' must be a string, a list of strings or token ids.", param="prompt",
                             code="invalid_type")
    ctx.extra[UNTRANSLATABLE] = InvalidRequest(
        "Several prompts, or prompts as token ids, need an OpenAI-compatible model; this one answers through "
        "chat, one string prompt at a time.", param="prompt", code="unsupported_parameter")
    return ""


def _untranslatable(body: dict) -> InvalidRequest | None:
    """The first field a chat-translated target cannot honour (a 400 only if such a target is reached)."""
    if body.get("suffix"):
        return _unsupported("suffix")
    if body.get("echo"):
        return _unsupported("echo")
    if body.get("logprobs") is not None:
        return _unsupported("logprobs")
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > 1:
        return _unsupported("best_of")
    return None


def _unsupported(field: str) -> InvalidRequest:
    return InvalidRequest(f"'{field}' is supported only by OpenAI-compatible models; this model answers "
                          "completions through chat.", param=field, code="unsupported_parameter")


def to_completion_reply(ctx: RequestContext, reply):
    """A chat answer in the legacy shape; an OpenAI-compatible target's answer as it came."""
    if ctx.extra.get(NATIVE_REPLY):
        return reply
    if isinstance(reply, JSONReply):
        body = reply.body if isinstance(reply.body, dict) else orjson.loads(reply.body)
        return JSONReply(text_completion(body), reply.status, reply.headers)
    return StreamReply(_events(reply.events), reply.headers)


def text_completion(chat: dict) -> dict:
    out = {"id": _id(chat.get("id")), "object": "text_completion", "created": chat.get("created"),
           "model": chat.get("model"), "choices": [
               {"text": _text((c.get("message") or {}).get("content")), "index": c.get("index", i), "logprobs": None,
                "finish_reason": c.get("finish_reason")} for i, c in enumerate(chat.get("choices") or ())]}
    if "usage" in chat:
        out["usage"] = chat["usage"]
    if chat.get("system_fingerprint"):
        out["system_fingerprint"] = chat["system_fingerprint"]
    return out


def _id(chat_id: Any) -> str:
    return "cmpl-" + str(chat_id or "").removeprefix("chatcmpl-")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return content or ""


def _chunk(chat: dict) -> dict | None:
    """A chat chunk as a text_completion chunk; None for one that carries nothing (the role chunk)."""
    choices = []
    for i, c in enumerate(chat.get("choices") or ()):
        text = (c.get("delta") or {}).get("content")
        if text or c.get("finish_reason"):
            choices.append({"text": text or "", "index": c.get("index", i), "logprobs": None,
                            "finish_reason": c.get("finish_reason")})
    if not choices and "usage" not in chat:
        return None
    out = {"id": _id(chat.get("id")), "object": "text_completion", "created": chat.get("created"),
           "model": chat.get("model"), "choices": choices}
    if chat.get("usage") is not None:
        out["usage"] = chat["usage"]
    return out


async def _events(events) -> AsyncIterator[bytes]:
    try:
        async for item in events:
            out = []
            for event in split_events(item):
                if event.startswith(b"data: {") and not event.startswith(b'data: {"error"'):
                    chunk = _chunk(orjson.loads(event[6:]))
                    if chunk is not None:
                        out.append(data_event(orjson.dumps(chunk)))
                else:
                    out.append(event)          # [DONE], error events, comments: as they are
            if out:
                yield b"".join(out)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
