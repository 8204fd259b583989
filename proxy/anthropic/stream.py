"""Anthropic streaming events -> OpenAI chat.completion.chunk dicts, one event at a time.

`StreamTranslator.feed(event_type, data)` returns the chunks that event produces (often none)
and never buffers the stream. It keeps `usage` (one live Usage object, updated in place:
message_start gives the input side, message_delta's cumulative counts are authoritative, so
nothing is counted twice), `finish_reason` and `done` (message_stop seen). An `error` event
raises ProviderError.

Chunk deltas: role in the first chunk; text_delta -> content; tool_use blocks -> tool_calls with
a stable `index` in order of appearance (id, name and "" arguments first, fragments after);
the forced JSON tool of response_format -> content; thinking_delta -> reasoning_content plus a
reasoning.text detail; signature_delta -> a reasoning.text detail carrying the signature;
redacted_thinking -> a reasoning.encrypted detail. Details of one thinking block share `index`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import orjson

from proxy.anthropic.response import encrypted_detail, error_from_event, finish_reason, text_detail, \
    usage_from_anthropic
from proxy.context import Usage
from proxy.errors import Redactor

Chunk = dict[str, Any]
TEXT, TOOL, JSON, THINKING, OTHER = "text", "tool", "json", "thinking", "other"


class StreamTranslator:
    __slots__ = ("provider", "redact", "json_tool", "id", "model", "created", "usage", "finish_reason", "done",
                 "_raw_usage", "_blocks", "_tools", "_reasoning", "_thought", "_sep")

    def __init__(self, *, json_tool: str | None = None, provider: str = "anthropic", model: str = "",
                 created: int | None = None, redact: Redactor | None = None):
        self.provider = provider
        self.redact = redact         # takes the provider's secrets out of an error event's text
        self.json_tool = json_tool
        self.id = "msg_unknown"
        self.model = model
        self.created = created or int(time.time())
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.done = False
        self._raw_usage: dict[str, Any] = {}
        self._blocks: dict[int, tuple[str, int]] = {}   # content block index -> (kind, OpenAI index)
        self._tools = 0          # tool calls announced so far (the next tool call's index)
        self._reasoning = 0      # reasoning blocks seen so far (the next detail index)
        self._thought = False    # some reasoning text was sent (later blocks get a separator)
        self._sep = False        # the next reasoning text starts a new thinking block

    def feed(self, event_type: str, data: dict[str, Any]) -> list[Chunk]:
        handler = _EVENTS.get(event_type)
        return handler(self, data) if handler is not None else []   # unknown events: forward-compatible

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def _update_usage(self, raw: dict[str, Any] | None) -> None:
        if not raw:
            return
        self._raw_usage.update({k: v for k, v in raw.items() if v is not None})
        fresh = usage_from_anthropic(self._raw_usage)
        for name in Usage.__slots__:
            setattr(self.usage, name, getattr(fresh, name))

    # --- message-level events ------------------------------------------------------------

    def _message_start(self, data: dict[str, Any]) -> list[Chunk]:
        message = data.get("message") or {}
        self.id = message.get("id") or self.id
        self.model = message.get("model") or self.model
        self._update_usage(message.get("usage"))
        return [self.chunk({"role": "assistant", "content": ""})]

    def _message_delta(self, data: dict[str, Any]) -> list[Chunk]:
        self._update_usage(data.get("usage"))
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        if stop_reason is None:
            return []
        self.finish_reason = finish_reason(stop_reason, self._tools > 0)
        return [self.chunk({}, self.finish_reason)]

    def _message_stop(self, data: dict[str, Any]) -> list[Chunk]:
        self.done = True
        return []

    def _error(self, data: dict[str, Any]) -> list[Chunk]:
        raise error_from_event(data, provider=self.provider, redact=self.redact)

    def _ignore(self, data: dict[str, Any]) -> list[Chunk]:
        return []

    # --- content blocks ------------------------------------------------------------------

    def _block_start(self, data: dict[str, Any]) -> list[Chunk]:
        block = data.get("content_block") or {}
        starter = _STARTS.get(block.get("type"))
        if starter is None:       # server tools, citations...: no OpenAI form
            self._blocks[data.get("index", -1)] = (OTHER, -1)
            return []
        return starter(self, data.get("index", -1), block)

    def _start_text(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        self._blocks[index] = (TEXT, 0)
        return [self.chunk({"content": block["text"]})] if block.get("text") else []

    def _start_tool(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        initial = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        if self.json_tool is not None and block.get("name") == self.json_tool:
            self._blocks[index] = (JSON, 0)
            return [self.chunk({"content": initial})] if initial else []
        position = self._tools
        self._tools += 1
        self._blocks[index] = (TOOL, position)
        call = {"index": position, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": initial}}
        return [self.chunk({"tool_calls": [call]})]

    def _start_thinking(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        self._blocks[index] = (THINKING, self._reasoning)
        self._reasoning += 1
        self._sep = self._thought
        if block.get("thinking"):
            return self._thinking_text(self._blocks[index][1], block["thinking"])
        return []

    def _start_redacted(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        position = self._reasoning
        self._reasoning += 1
        self._blocks[index] = (OTHER, position)
        return [self.chunk({"reasoning_details": [encrypted_detail(position, block.get("data") or "")]})]

    def _thinking_text(self, position: int, text: str) -> list[Chunk]:
        shown = "\n\n" + text if self._sep else text
        self._sep = False
        self._thought = True
        return [self.chunk({"reasoning_content": shown, "reasoning_details": [text_detail(position, text)]})]

    def _block_delta(self, data: dict[str, Any]) -> list[Chunk]:
        delta = data.get("delta") or {}
        kind, position = self._blocks.get(data.get("index", -1), (OTHER, -1))
        handler = _DELTAS.get(delta.get("type"))
        return handler(self, kind, position, delta) if handler is not None else []

    def _text_delta(self, kind: str, position: int, delta: dict[str, Any]) -> list[Chunk]:
        text = delta.get("text")
        return [self.chunk({"content": text})] if text else []

    def _json_delta(self, kind: str, position: int, delta: dict[str, Any]) -> list[Chunk]:
        fragment = delta.get("partial_json")
        if not fragment:
            return []
        if kind == JSON:
            return [self.chunk({"content": fragment})]
        if kind == TOOL:
            return [self.chunk({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]})]
        return []

    def _thinking_delta(self, kind: str, position: int, delta: dict[str, Any]) -> list[Chunk]:
        text = delta.get("thinking")
        return self._thinking_text(position, text) if text and kind == THINKING else []

    def _signature_delta(self, kind: str, position: int, delta: dict[str, Any]) -> list[Chunk]:
        signature = delta.get("signature")
        if not signature or kind != THINKING:
            return []
        return [self.chunk({"reasoning_details": [text_detail(position, signature=signature)]})]


_EVENTS: dict[str, Callable[[StreamTranslator, dict[str, Any]], list[Chunk]]] = {
    "message_start": StreamTranslator._message_start,
    "content_block_start": StreamTranslator._block_start,
    "content_block_delta": StreamTranslator._block_delta,
    "content_block_stop": StreamTranslator._ignore,
    "message_delta": StreamTranslator._message_delta,
    "message_stop": StreamTranslator._message_stop,
    "ping": StreamTranslator._ignore,
    "error": StreamTranslator._error,
}
_STARTS: dict[str, Callable[[StreamTranslator, int, dict[str, Any]], list[Chunk]]] = {
    "text": StreamTranslator._start_text,
    "tool_use": StreamTranslator._start_tool,
    "thinking": StreamTranslator._start_thinking,
    "redacted_thinking": StreamTranslator._start_redacted,
}
_DELTAS: dict[str, Callable[[StreamTranslator, str, int, dict[str, Any]], list[Chunk]]] = {
    "text_delta": StreamTranslator._text_delta,
    "input_json_delta": StreamTranslator._json_delta,
    "thinking_delta": StreamTranslator._thinking_delta,
    "signature_delta": StreamTranslator._signature_delta,
}
