"""OpenAI Chat Completions response -> Anthropic Messages response (pure translation).

`to_anthropic_message(completion)` turns a `chat.completion` dict into an Anthropic Message;
`MessagesStreamTranslator` turns `chat.completion.chunk` dicts, one at a time, into Anthropic
SSE events `(event_name, data)`; `encode_event` frames one event as SSE bytes.

Message (non-streaming), from choices[0]:
    id                          -> "msg_" + the completion id (without "chatcmpl-"), or random
    reasoning_details           -> thinking blocks first, in order: reasoning.text -> thinking
                                   {thinking: text, signature: signature or ""};
                                   reasoning.summary -> thinking {thinking: summary};
                                   reasoning.encrypted -> redacted_thinking {data}.
                                   When no detail carries text, reasoning_content fills the
                                   first thinking block (one is made when there is none).
    content (and refusal)       -> one text block
    tool_calls                  -> tool_use blocks {id, name, input: parsed arguments}; arguments
                                   that are not a JSON object (invalid JSON included) become
                                   input {} — the model then sees its tool call rejected and
                                   can retry, which is what a schema-invalid call gets too
    finish_reason               -> stop_reason: stop -> end_turn, or stop_sequence when the
                                   choice names the matched sequence (`stop_sequence`, or a
                                   string `stop_reason` as vLLM sends) and it is one of the
                                   request's stop_sequences; length -> max_tokens; tool_calls /
                                   function_call -> tool_use (also when the upstream says stop
                                   but called tools); content_filter -> refusal
    usage                       -> input_tokens = prompt - cached - cache_write (Anthropic's
                                   input excludes cache), cache_read_input_tokens = cached,
                                   cache_creation_input_tokens = cache_write,
                                   output_tokens = completion_tokens

Stream: message_start (usage: what is known so far, 0 when nothing is) on the first chunk;
then one content block at a time, index 0.., each content_block_start / *_delta /
content_block_stop: reasoning.text (or .summary) detail text -> thinking_delta (the exact
signed text; reasoning_content is used only when the chunk has no detail text, since it may
carry display separators); a detail `index` different from the open thinking block's starts
a new thinking block; a reasoning.text signature -> signature_delta; reasoning.encrypted -> a whole redacted_thinking block; content -> text
block with text_delta; each OpenAI tool_call index -> its own tool_use block with
input_json_delta (a tool call whose name has not arrived yet is held until it does). A change of
kind closes the open block. After finish_reason the open block is closed and message_delta is
held until the usage chunk (choices: []) or `finish()`, so it carries the final usage;
message_stop follows. Arguments for a tool block that was already closed (an upstream that
interleaves parallel calls) are still sent, under that block's index.
"""
from __future__ import annotations

import uuid
from typing import Any

import orjson

__all__ = ["to_anthropic_message", "anthropic_usage", "stop_reason", "encode_event",
           "MessagesStreamTranslator", "Event"]

Event = tuple[str, dict]

_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "billing_error", "permission_error",
                          "not_found_error", "rate_limit_error", "timeout_error", "api_error",
                          "overloaded_error", "request_too_large"})
_TEXT_DETAILS = ("reasoning.text", "reasoning.summary")
_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
           "function_call": "tool_use", "content_filter": "refusal", "refusal": "refusal"}


def encode_event(name: str, data: dict) -> bytes:
    """Frame one Anthropic event as SSE bytes: `event: <name>\\ndata: <json>\\n\\n`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_usage(usage: dict | None) -> dict:
    """OpenAI usage (prompt includes cache) -> Anthropic usage (input excludes cache)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    prompt = usage.get("prompt_tokens") or 0
    return {"input_tokens": max(prompt - cached - written, 0),
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written}


def stop_reason(choice: dict, stop_sequences: list[str] | None, used_tools: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI choice's finish_reason."""
    finish = choice.get("finish_reason")
    if finish == "stop" or finish is None:
        matched = choice.get("stop_sequence") or choice.get("stop_reason")
        if isinstance(matched, str) and stop_sequences and matched in stop_sequences:
            return "stop_sequence", matched
        return ("tool_use" if used_tools else "end_turn"), None
    return _FINISH.get(finish, "end_turn"), None


def message_id(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id:
        return "msg_" + upstream_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def to_anthropic_message(completion: dict, *, model: str | None = None,
                         stop_sequences: list[str] | None = None) -> dict:
    """Translate an OpenAI `chat.completion` dict into an Anthropic Message dict."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict] = _thinking_blocks(message)
    text = message.get("content")
    if isinstance(text, list):   # some upstreams answer with content parts
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    if message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    tool_calls = message.get("tool_calls") or []
    for call in tool_calls:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(),
                        "name": function.get("name") or "", "input": parse_arguments(function.get("arguments"))})
    reason, sequence = stop_reason(choice, stop_sequences, bool(tool_calls))
    if message.get("refusal") and reason == "end_turn":
        reason = "refusal"
    return {"id": message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model or completion.get("model") or "", "content": content,
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": anthropic_usage(completion.get("usage"))}


def parse_arguments(arguments: Any) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _detail_text(detail: dict) -> str | None:
    """The exact (signed) text of a reasoning.text / reasoning.summary detail, if any."""
    text = detail.get("text") if detail.get("type") == "reasoning.text" else (
        detail.get("summary") if detail.get("type") == "reasoning.summary" else None)
    return text if isinstance(text, str) and text else None


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def _thinking_blocks(message: dict) -> list[dict]:
    blocks: list[dict] = []
    for detail in message.get("reasoning_details") or []:
        if not isinstance(detail, dict):
            continue
        kind = detail.get("type")
        if kind == "reasoning.text":
            blocks.append({"type": "thinking", "thinking": detail.get("text") or "",
                           "signature": detail.get("signature") or ""})
        elif kind == "reasoning.summary":
            blocks.append({"type": "thinking", "thinking": detail.get("summary") or "",
                           "signature": detail.get("signature") or ""})
        elif kind == "reasoning.encrypted" and detail.get("data"):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        thinking = [b for b in blocks if b["type"] == "thinking"]
        if not thinking:
            blocks.insert(0, {"type": "thinking", "thinking": reasoning, "signature": ""})
        elif not any(b["thinking"] for b in thinking):
            thinking[0]["thinking"] = reasoning
    return blocks


class MessagesStreamTranslator:
    """Feed OpenAI chunk dicts in order; get Anthropic `(event, data)` pairs back.

    One instance per stream. `feed(chunk)` and `finish()` return lists of events;
    `error_event(message, type)` returns the `error` event and ends the stream.
    """

    def __init__(self, model: str, *, message_id: str | None = None,
                 stop_sequences: list[str] | None = None, input_tokens: int = 0):
        self.model = model
        self.message_id = message_id
        self.stop_sequences = stop_sequences
        self.usage: dict = {"input_tokens": input_tokens, "output_tokens": 0,
                            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        self.started = False
        self.done = False
        self.finish_choice: dict | None = None   # the choice that carried finish_reason
        self.used_tools = False
        self._next_index = 0
        self._open: tuple[str, Any] | None = None    # (kind, key) of the open block
        self._open_index = -1
        self._tool_blocks: dict[int, int] = {}      # OpenAI tool index -> block index
        self._pending_tools: dict[int, dict] = {}   # OpenAI tool index -> {id, name, args}

    # -- public -----------------------------------------------------------------------------

    def feed(self, chunk: dict) -> list[Event]:
        if self.done:
            return []
        if chunk.get("error"):
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            kind = err.get("type") if err.get("type") in _ERROR_TYPES else "api_error"
            return [self.error_event(err.get("message") or "upstream error", kind)]
        events: list[Event] = []
        if chunk.get("usage"):
            self.usage = anthropic_usage(chunk["usage"])
        if not self.started:
            self._start(chunk, events)
        choices = chunk.get("choices") or []
        if not choices:
            if self.finish_choice is not None and chunk.get("usage"):
                self._end(events)
            return events
        choice = choices[0]
        if self.finish_choice is None:
            self._delta(choice.get("delta") or {}, events)
            if choice.get("finish_reason"):
                self.finish_choice = choice
                self._close(events)
        return events

    def finish(self) -> list[Event]:
        """The upstream ended: close what is open and end the message (idempotent)."""
        if self.done:
            return []
        events: list[Event] = []
        if not self.started:
            self._start({}, events)
        self._end(events)
        return events

    def error_event(self, message: str, type: str = "api_error") -> Event:
        """The Anthropic `error` event; the stream is over after it."""
        self.done = True
        return "error", {"type": "error", "error": {"type": type, "message": message}}

    # -- blocks -----------------------------------------------------------------------------

    def _start(self, chunk: dict, events: list[Event]) -> None:
        self.started = True
        if self.message_id is None:
            self.message_id = message_id(chunk.get("id"))
        events.append(("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "content": [],
            "model": self.model or chunk.get("model") or "", "stop_reason": None,
            "stop_sequence": None, "usage": dict(self.usage)}}))

    def _end(self, events: list[Event]) -> None:
        self._close(events)
        self._flush_pending_tools(events)
        reason, sequence = stop_reason(self.finish_choice or {}, self.stop_sequences, self.used_tools)
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                         "usage": dict(self.usage)}))
        events.append(("message_stop", {"type": "message_stop"}))
        self.done = True

    def _open_block(self, kind: str, key: Any, block: dict, events: list[Event]) -> int:
        self._close(events)
        index = self._next_index
        self._next_index += 1
        self._open, self._open_index = (kind, key), index
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": block}))
        return index

    def _close(self, events: list[Event]) -> None:
        if self._open is not None:
            events.append(("content_block_stop", {"type": "content_block_stop", "index": self._open_index}))
            self._open = None

    def _block_delta(self, index: int, delta: dict, events: list[Event]) -> None:
        events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))

    def _ensure(self, kind: str, block: dict, events: list[Event], key: Any = None) -> int:
        if self._open == (kind, key):
            return self._open_index
        return self._open_block(kind, key, block, events)

    # -- deltas -----------------------------------------------------------------------------

    def _delta(self, delta: dict, events: list[Event]) -> None:
        details = [d for d in delta.get("reasoning_details") or () if isinstance(d, dict)]
        if not any(_detail_text(d) for d in details):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._thinking_delta(self._thinking_block(None, events), reasoning, events)
        for detail in details:
            self._reasoning_detail(detail, events)
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._text(text, events)
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            self._text(delta["refusal"], events)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                self._tool_delta(call, events)

    def _thinking_block(self, detail_index: Any, events: list[Event]) -> int:
        """The open thinking block, or a new one when none is open or the detail `index` differs."""
        if self._open is not None and self._open[0] == "thinking" and (
                detail_index is None or self._open[1] in (None, detail_index)):
            if detail_index is not None:
                self._open = ("thinking", detail_index)
            return self._open_index
        return self._open_block("thinking", detail_index,
                                {"type": "thinking", "thinking": "", "signature": ""}, events)

    def _thinking_delta(self, index: int, text: str, events: list[Event]) -> None:
        self._block_delta(index, {"type": "thinking_delta", "thinking": text}, events)

    def _reasoning_detail(self, detail: dict, events: list[Event]) -> None:
        kind = detail.get("type")
        if kind == "reasoning.encrypted":
            if detail.get("data"):
                self._open_block("redacted_thinking", None,
                                 {"type": "redacted_thinking", "data": detail["data"]}, events)
                self._close(events)
            return
        if kind not in _TEXT_DETAILS:
            return
        text = _detail_text(detail)
        if text:
            self._thinking_delta(self._thinking_block(detail.get("index"), events), text, events)
        signature = detail.get("signature")
        if isinstance(signature, str) and signature:
            index = self._thinking_block(detail.get("index"), events)
            self._block_delta(index, {"type": "signature_delta", "signature": signature}, events)

    def _text(self, text: str, events: list[Event]) -> None:
        index = self._ensure("text", {"type": "text", "text": ""}, events)
        self._block_delta(index, {"type": "text_delta", "text": text}, events)

    def _tool_delta(self, call: dict, events: list[Event]) -> None:
        tool_index = call.get("index", 0)
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        self.used_tools = True
        block_index = self._tool_blocks.get(tool_index)
        if block_index is None:
            pending = self._pending_tools.setdefault(tool_index, {"id": None, "name": "", "args": ""})
            pending["id"] = pending["id"] or call.get("id")
            pending["name"] += function.get("name") or ""
            pending["args"] += arguments
            if pending["name"]:
                self._start_tool(tool_index, events)
            return
        if arguments:   # also after its block closed (interleaving upstream): the block's own index
            self._block_delta(block_index, {"type": "input_json_delta", "partial_json": arguments}, events)

    def _start_tool(self, tool_index: int, events: list[Event]) -> None:
        pending = self._pending_tools.pop(tool_index)
        block = {"type": "tool_use", "id": pending["id"] or _tool_id(), "name": pending["name"], "input": {}}
        index = self._open_block("tool_use", tool_index, block, events)
        self._tool_blocks[tool_index] = index
        if pending["args"]:
            self._block_delta(index, {"type": "input_json_delta", "partial_json": pending["args"]}, events)

    def _flush_pending_tools(self, events: list[Event]) -> None:
        """Tool calls whose name never arrived still become (nameless) blocks, not lost args."""
        for tool_index in list(self._pending_tools):
            self._start_tool(tool_index, events)
            self._close(events)
