"""Between the two shapes of one answer: streamed chunks <-> a chat.completion object.

`Assembler` folds OpenAI chunks into the completion they spell (used to store a streamed
answer in the response cache); `replay` turns a stored completion back into SSE events.
"""
from __future__ import annotations

from typing import Iterator

import orjson

from proxy.sse import DONE, data_event


class Assembler:
    def __init__(self) -> None:
        self.base: dict | None = None
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None

    def feed(self, chunk: dict) -> None:
        if self.base is None:
            self.base = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            slot = self.choices.setdefault(c.get("index", 0), {"message": {"role": "assistant", "content": None},
                                                                "finish_reason": None, "calls": {}})
            delta = c.get("delta") or {}
            msg = slot["message"]
            for field in ("content", "reasoning_content", "refusal"):
                if delta.get(field):
                    msg[field] = (msg.get(field) or "") + delta[field]
            if delta.get("reasoning_details"):
                msg.setdefault("reasoning_details", []).extend(delta["reasoning_details"])
            for tc in delta.get("tool_calls") or ():
                call = slot["calls"].setdefault(tc.get("index", 0), {"id": None, "type": "function",
                                                                     "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    call["function"]["arguments"] += fn["arguments"]
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]

    def result(self) -> dict:
        choices = []
        for index in sorted(self.choices):
            slot = self.choices[index]
            msg = dict(slot["message"])
            if slot["calls"]:
                msg["tool_calls"] = [slot["calls"][i] for i in sorted(slot["calls"])]
            choices.append({"index": index, "message": msg, "logprobs": None,
                            "finish_reason": slot["finish_reason"]})
        return {**(self.base or {}), "object": "chat.completion", "choices": choices, "usage": self.usage}


def replay(completion: dict, include_usage: bool, usage: dict | None = None) -> Iterator[bytes]:
    """SSE events for a stored completion: role, reasoning, content, tool calls, finish, usage, [DONE]."""
    base = {"id": completion.get("id"), "object": "chat.completion.chunk", "created": completion.get("created"),
            "model": completion.get("model"), "system_fingerprint": completion.get("system_fingerprint")}

    def chunk(index: int, delta: dict, finish=None) -> bytes:
        return data_event(orjson.dumps({**base, "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}))

    for c in completion.get("choices") or ():
        i, msg = c.get("index", 0), c.get("message") or {}
        yield chunk(i, {"role": "assistant", "content": ""})
        if msg.get("reasoning_content"):
            yield chunk(i, {"reasoning_content": msg["reasoning_content"]})
        if msg.get("reasoning_details"):
            yield chunk(i, {"reasoning_details": msg["reasoning_details"]})
        if msg.get("content"):
            yield chunk(i, {"content": msg["content"]})
        for n, call in enumerate(msg.get("tool_calls") or ()):
            yield chunk(i, {"tool_calls": [{"index": n, "id": call.get("id"), "type": "function",
                                            "function": {"name": call["function"]["name"], "arguments": ""}}]})
            yield chunk(i, {"tool_calls": [{"index": n, "function": {"arguments": call["function"]["arguments"]}}]})
        yield chunk(i, {}, c.get("finish_reason") or "stop")
    if include_usage:
        yield data_event(orjson.dumps({**base, "choices": [], "usage": usage or completion.get("usage")}))
    yield DONE
