"""Chat completion chunks -> Responses streaming events (a pure translator over typed state).

`ResponsesStream.feed(chunk)` takes one `chat.completion.chunk` dict and returns the events it
causes; `finish()` ends the response (response.completed, or response.incomplete when the
upstream stopped for length / content filter); `fail(code, message)` ends it with `error` then
`response.failed`. Every event carries `sequence_number`, counted from 0.

    first chunk          -> response.created, response.in_progress
    reasoning text       -> output_item.added (reasoning), reasoning_summary_part.added,
                            reasoning_summary_text.delta ...; signatures (reasoning_details)
                            are collected into the item's encrypted_content
    content              -> output_item.added (message), content_part.added (output_text),
                            output_text.delta ...
    tool call (index n)  -> output_item.added (function_call, once its name is known),
                            function_call_arguments.delta ...
    a new kind of item   -> the open one is closed: *.done events, output_item.done
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.responses.reply import (INCOMPLETE, call_item, finish, merge_details, message_item, new_id,
                                   reasoning_id, reasoning_item, usage)

__all__ = ["ResponsesStream", "encode"]

Event = dict


def encode(event: Event) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@dataclass(slots=True)
class _Item:
    kind: str                  # reasoning | message | function_call
    index: int                 # output_index
    id: str
    text: list[str] = field(default_factory=list)
    details: list = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    refusal: str = ""


@dataclass(slots=True)
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    item: _Item | None = None


class ResponsesStream:
    def __init__(self, response: dict, names: dict, include_encrypted: bool = False):
        self.response = response          # the shell (request fields, id, model)
        self.names = names
        self.include_encrypted = include_encrypted
        self.seq = 0
        self.started = False
        self.done = False
        self.output: list[dict] = []      # closed items, by output_index
        self.open: _Item | None = None
        self.calls: dict[int, _PendingCall] = {}
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    # -- public -----------------------------------------------------------------------------

    def feed(self, chunk: dict) -> list[Event]:
        if self.done:
            return []
        events: list[Event] = []
        if not self.started:
            self._start(events)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if choices:
            self._delta(choices[0].get("delta") or {}, events)
            if choices[0].get("finish_reason"):
                self.finish_reason = choices[0]["finish_reason"]
        return events

    def start(self) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self._start(events)
        return events

    def finish(self, cost: float | None = None) -> list[Event]:
        """The upstream ended: close what is open, then response.completed / incomplete."""
        if self.done:
            return []
        events = self.start()
        self._close(events)
        status = "incomplete" if self.finish_reason in INCOMPLETE else "completed"
        finish(self.response, self.stored_output(), self.finish_reason, usage(self.usage, cost))
        self.done = True
        events.append(self._event(f"response.{status}", response=self.public()))
        return events

    def fail(self, code: str, message: str, param: str | None = None) -> list[Event]:
        """A failure after the stream started: `error`, then `response.failed`."""
        if self.done:
            return []
        events = self.start()
        self._close(events)
        self.done = True
        events.append(self._event("error", code=code, message=message, param=param))
        self.response.update(status="failed", output=self.stored_output(),
                             error={"code": "rate_limit_exceeded" if code.endswith("rate_limited") else "server_error",
                                    "message": message},
                             usage=usage(self.usage, None) if self.usage else None)
        events.append(self._event("response.failed", response=self.public()))
        return events

    def stored_output(self) -> list[dict]:
        return list(self.output)

    def public(self) -> dict:
        if self.include_encrypted:
            return self.response
        output = [{**i, "encrypted_content": None} if i.get("type") == "reasoning" else i
                  for i in self.response["output"]]
        return {**self.response, "output": output}

    # -- events -----------------------------------------------------------------------------

    def _event(self, kind: str, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return event

    def _start(self, events: list[Event]) -> None:
        self.started = True
        events.append(self._event("response.created", response=dict(self.response)))
        events.append(self._event("response.in_progress", response=dict(self.response)))

    def _open(self, kind: str, prefix: str, events: list[Event]) -> _Item:
        self._close(events)
        index = len(self.output)
        item_id = reasoning_id(self.response["id"], index) if kind == "reasoning" else new_id(prefix)
        item = self.open = _Item(kind, index, item_id)
        self.output.append({})          # its slot, filled when it closes
        return item

    def _added(self, item: _Item, shape: dict, events: list[Event]) -> None:
        events.append(self._event("response.output_item.added", output_index=item.index, item=shape))

    # -- deltas -----------------------------------------------------------------------------

    def _delta(self, delta: dict, events: list[Event]) -> None:
        details = delta.get("reasoning_details")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = "".join(d.get("text") or "" for d in details or () if isinstance(d, dict))
        if reasoning or details:
            self._reasoning(reasoning, details or [], events)
        content = delta.get("content")
        if content:
            self._text(content, events)
        if delta.get("refusal"):
            item = self._message(events)
            item.refusal += delta["refusal"]
        for call in delta.get("tool_calls") or ():
            self._call(call, events)

    def _reasoning(self, text: str, details: list, events: list[Event]) -> None:
        item = self.open
        if item is None or item.kind != "reasoning":
            item = self._open("reasoning", "rs", events)
            self._added(item, {"id": item.id, "type": "reasoning", "summary": [], "encrypted_content": None,
                               "status": "in_progress"}, events)
        item.details.extend(details)
        if text:
            if not item.text:
                events.append(self._event("response.reasoning_summary_part.added", item_id=item.id,
                                          output_index=item.index, summary_index=0,
                                          part={"type": "summary_text", "text": ""}))
            item.text.append(text)
            events.append(self._event("response.reasoning_summary_text.delta", item_id=item.id,
                                      output_index=item.index, summary_index=0, delta=text))

    def _message(self, events: list[Event]) -> _Item:
        item = self.open
        if item is None or item.kind != "message":
            item = self._open("message", "msg", events)
            self._added(item, message_item(item.id, None, status="in_progress"), events)
            events.append(self._event("response.content_part.added", item_id=item.id, output_index=item.index,
                                      content_index=0, part={"type": "output_text", "text": "",
                                                             "annotations": [], "logprobs": []}))
        return item

    def _text(self, text: str, events: list[Event]) -> None:
        item = self._message(events)
        item.text.append(text)
        events.append(self._event("response.output_text.delta", item_id=item.id, output_index=item.index,
                                  content_index=0, delta=text, logprobs=[]))

    def _call(self, call: dict, events: list[Event]) -> None:
        pending = self.calls.setdefault(call.get("index", 0), _PendingCall())
        fn = call.get("function") or {}
        if call.get("id"):
            pending.call_id = call["id"]
        if fn.get("name"):
            pending.name += fn["name"]
        if fn.get("arguments"):
            pending.arguments.append(fn["arguments"])
        if pending.item is None:
            if not pending.name:
                return                   # held until the name arrives
            item = pending.item = self._open("function_call", "fc", events)
            item.call_id, item.name = pending.call_id or new_id("call"), pending.name
            shape = call_item(item.id, item.call_id, item.name, "", self.names, "in_progress")
            item.id = shape["id"]
            self._added(item, shape, events)
            fragments = pending.arguments
        else:
            fragments = [fn["arguments"]] if fn.get("arguments") else []
            if pending.item is not self.open:
                return                   # arguments for a closed call: kept for its final item only
        if self._custom(pending.item):
            return                       # its input is sent whole when it closes
        for fragment in fragments:
            events.append(self._event("response.function_call_arguments.delta", item_id=pending.item.id,
                                      output_index=pending.item.index, delta=fragment))

    def _custom(self, item: _Item) -> bool:
        return self.names.get(item.name, (None, None, "function"))[2] == "custom"

    # -- closing ----------------------------------------------------------------------------

    def _close(self, events: list[Event]) -> None:
        item, self.open = self.open, None
        if item is None:
            return
        if item.kind == "reasoning":
            text = "".join(item.text)
            if item.text:
                events.append(self._event("response.reasoning_summary_text.done", item_id=item.id,
                                          output_index=item.index, summary_index=0, text=text))
                events.append(self._event("response.reasoning_summary_part.done", item_id=item.id,
                                          output_index=item.index, summary_index=0,
                                          part={"type": "summary_text", "text": text}))
            shape = reasoning_item(item.id, text, merge_details(item.details))
        elif item.kind == "message":
            text = "".join(item.text)
            status = "incomplete" if self.finish_reason in INCOMPLETE else "completed"
            shape = message_item(item.id, text, item.refusal or None, status)
            part = shape["content"][0]
            events.append(self._event("response.output_text.done", item_id=item.id, output_index=item.index,
                                      content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item.id, output_index=item.index,
                                      content_index=0, part=part))
        else:
            pending = next(p for p in self.calls.values() if p.item is item)
            arguments = "".join(pending.arguments)
            shape = call_item(item.id, item.call_id, item.name, arguments, self.names)
            if shape["type"] == "custom_tool_call":
                for kind, key in (("delta", "delta"), ("done", "input")):
                    events.append(self._event(f"response.custom_tool_call_input.{kind}", item_id=item.id,
                                              output_index=item.index, **{key: shape["input"]}))
            else:
                events.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                          output_index=item.index, name=shape["name"], arguments=arguments))
        self.output[item.index] = shape
        public = {**shape, "encrypted_content": None} if item.kind == "reasoning" and not self.include_encrypted \
            else shape
        events.append(self._event("response.output_item.done", output_index=item.index, item=public))
