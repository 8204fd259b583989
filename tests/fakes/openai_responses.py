"""The fake OpenAI upstream's own `POST /v1/responses` (for the gateway's native mode).

Answers like the real API: a response object, or its events (`event: <type>` + `data:` with
`sequence_number`). The answer echoes the last user text ("You said: ..."); a `web_search` tool
and a text holding "search" add a `web_search_call` item first (a built-in tool the gateway's
translation cannot run); `include: ["reasoning.encrypted_content"]` with `reasoning` adds a
reasoning item with opaque `encrypted_content` first. Model `fail-<status>` answers that status;
`broken` cuts the stream after three events; `failing` sends `error` then `response.failed` after
them. `responses_sent` keeps the exact bytes of each
streamed answer.
"""
from __future__ import annotations

import hashlib
import time

import orjson
from aiohttp import web

from tests.fakes.answers import split, tokens

ENCRYPTED = "gAAAAB-fake-encrypted-reasoning-"


def _last_user_text(items) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items or ()):
        if item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict))
    return ""


def answer(body: dict) -> dict:
    text = _last_user_text(body.get("input"))
    rid = "resp_up" + hashlib.sha1(orjson.dumps(body)).hexdigest()[:24]
    output: list[dict] = []
    if body.get("reasoning") and "reasoning.encrypted_content" in (body.get("include") or ()):
        output.append({"id": "rs_up1", "type": "reasoning", "summary": [],
                       "encrypted_content": ENCRYPTED + hashlib.sha1(text.encode()).hexdigest()})
    if "search" in text and any(t.get("type", "").startswith("web_search") for t in body.get("tools") or ()):
        output.append({"id": "ws_up1", "type": "web_search_call", "status": "completed",
                       "action": {"type": "search", "query": text}})
    said = "You said: " + text + (f" (after {body['previous_response_id']})" if body.get("previous_response_id")
                                  else "")
    output.append({"id": "msg_up1", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": said, "annotations": [], "logprobs": []}]})
    prompt = tokens(orjson.dumps(body.get("input")).decode()) + tokens(body.get("instructions") or "")
    reasoning = 32 if output[0]["type"] == "reasoning" else 0
    usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": tokens(said) + reasoning, "output_tokens_details": {"reasoning_tokens": reasoning},
             "total_tokens": prompt + tokens(said) + reasoning}
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
            "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
            "model": body["model"] + "-2026-01-01", "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True),
            "temperature": 1.0, "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "metadata": body.get("metadata") or {}}


def events(response: dict) -> list[dict]:
    shell = {**response, "status": "in_progress", "output": [], "usage": None}
    out = [{"type": "response.created", "response": shell}, {"type": "response.in_progress", "response": shell}]
    for i, item in enumerate(response["output"]):
        if item["type"] != "message":
            out += [{"type": "response.output_item.added", "output_index": i, "item": item},
                    {"type": "response.output_item.done", "output_index": i, "item": item}]
            continue
        text = item["content"][0]["text"]
        base = {"item_id": item["id"], "output_index": i, "content_index": 0}
        out.append({"type": "response.output_item.added", "output_index": i,
                    "item": {**item, "status": "in_progress", "content": []}})
        out.append({"type": "response.content_part.added", **base,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
        out += [{"type": "response.output_text.delta", **base, "delta": piece, "logprobs": []}
                for piece in split(text, 3)]
        out += [{"type": "response.output_text.done", **base, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **base, "part": item["content"][0]},
                {"type": "response.output_item.done", "output_index": i, "item": item}]
    out.append({"type": "response.completed", "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(out)]


async def handle(fake, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = orjson.loads(raw)
    fake.requests.append({"path": request.path, "headers": dict(request.headers), "json": body, "raw": raw})
    model = body.get("model", "")
    if model.startswith("fail-"):
        status = int(model.split("-")[1])
        return web.json_response({"error": {"message": f"Simulated failure {status}", "type": "server_error",
                                            "param": None, "code": None}}, status=status)
    response = answer(body)
    if not body.get("stream"):
        return web.json_response(response)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    sent = []
    fake.responses_sent.append(sent)
    stream = events(response)
    if model == "failing":
        failed = {**response, "status": "failed", "output": [], "error": {"code": "server_error", "message": "boom"}}
        stream = stream[:3] + [{"type": "error", "code": "server_error", "message": "boom", "param": None,
                                "sequence_number": 3},
                               {"type": "response.failed", "response": failed, "sequence_number": 4}]
    for n, event in enumerate(stream):
        if model == "broken" and n == 3:
            request.transport.close()
            return resp
        data = b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        sent.append(data)
        await resp.write(data)
    return resp
