"""Anthropic message -> OpenAI chat.completion; Anthropic usage -> Usage; Anthropic errors -> the
GatewayError tree. Pure functions.

stop_reason -> finish_reason: see STOP_REASONS (a tool_use stop caused only by the forced JSON
tool of response_format is "stop"). Usage: prompt_tokens = input + cache_read + cache_creation,
cached_tokens = cache_read, cache_write_tokens = cache_creation, completion_tokens = output,
reasoning_tokens = output_tokens_details.thinking_tokens when Anthropic reports it (else 0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson

from proxy.context import Usage, token_count
from proxy.errors import ContextTooLong, GatewayError, Redactor, UpstreamStatus, from_upstream, sanitise

REASONING_FORMAT = "anthropic-claude-v1"
STOP_REASONS: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
#: Anthropic error type -> the HTTP status Anthropic uses for it (for errors sent inside a stream)
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}


def usage_from_anthropic(u: Mapping[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    read = token_count(u.get("cache_read_input_tokens"))
    write = token_count(u.get("cache_creation_input_tokens"))
    details = u.get("output_tokens_details")
    return Usage(prompt_tokens=token_count(u.get("input_tokens")) + read + write,
                 completion_tokens=token_count(u.get("output_tokens")),
                 cached_tokens=read, cache_write_tokens=write,
                 reasoning_tokens=token_count(details.get("thinking_tokens")) if type(details) is dict else 0,
                 known=True)


def finish_reason(stop_reason: str | None, called_tools: bool) -> str:
    if stop_reason == "tool_use" and not called_tools:
        return "stop"               # only the forced JSON tool was called
    return STOP_REASONS.get(stop_reason or "end_turn", "stop")


def text_detail(index: int, text: str | None = None, signature: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": "reasoning.text", "format": REASONING_FORMAT, "index": index}
    if text is not None:
        detail["text"] = text
    if signature:
        detail["signature"] = signature
    return detail


def encrypted_detail(index: int, data: str) -> dict[str, Any]:
    return {"type": "reasoning.encrypted", "data": data, "format": REASONING_FORMAT, "index": index}


@dataclass(slots=True)
class _Message:
    json_tool: str | None
    texts: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    json_content: str | None = None


def _text(m: _Message, block: dict[str, Any]) -> None:
    m.texts.append(block.get("text") or "")


def _thinking(m: _Message, block: dict[str, Any]) -> None:
    m.reasoning.append(block.get("thinking") or "")
    m.details.append(text_detail(len(m.details), block.get("thinking") or "", block.get("signature")))


def _redacted(m: _Message, block: dict[str, Any]) -> None:
    m.details.append(encrypted_detail(len(m.details), block.get("data") or ""))


def _tool_use(m: _Message, block: dict[str, Any]) -> None:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    if m.json_tool is not None and block.get("name") == m.json_tool:
        m.json_content = arguments
        return
    m.tool_calls.append({"id": block.get("id"), "type": "function",
                         "function": {"name": block.get("name"), "arguments": arguments}})


_BLOCKS: dict[str, Callable[[_Message, dict[str, Any]], None]] = {
    "text": _text, "thinking": _thinking, "redacted_thinking": _redacted, "tool_use": _tool_use,
}


def to_openai(msg: Mapping[str, Any], *, json_tool: str | None = None, created: int | None = None) -> dict[str, Any]:
    """An Anthropic Messages response -> an OpenAI chat.completion (usage without cost)."""
    m = _Message(json_tool)
    for block in msg.get("content") or ():
        handler = _BLOCKS.get(block.get("type"))
        if handler is not None:        # server-tool and citation blocks have no OpenAI form
            handler(m, block)
    if m.json_content is not None:
        content: str | None = m.json_content
    else:
        content = "".join(m.texts) if m.texts or not m.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if m.tool_calls:
        message["tool_calls"] = m.tool_calls
    if m.details:
        message["reasoning_content"] = "\n\n".join(m.reasoning) if m.reasoning else None
        message["reasoning_details"] = m.details
    return {
        "id": msg.get("id") or "msg_unknown",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": msg.get("model") or "",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(msg.get("stop_reason"), bool(m.tool_calls))}],
        "usage": usage_from_anthropic(msg.get("usage")).to_openai(),
    }


def _error_parts(body: Any) -> tuple[str, str]:
    """(error type, message) from an Anthropic error body: {"type": "error", "error": {...}}."""
    if isinstance(body, (bytes, str)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return "api_error", text.strip() or "no error message"     # trimmed after redaction
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "api_error", "no error message"
    return str(err.get("type") or "api_error"), str(err.get("message") or "no error message")


def error_from_response(status: int, body: Any, *, provider: str, retry_after: str | None = None,
                        redact: Redactor | None = None) -> GatewayError:
    """An Anthropic HTTP error response -> the gateway error (SPEC §6 'Upstream errors');
    `redact` takes the provider's secrets out of the upstream's text."""
    kind, message = _error_parts(body)
    if status == 400 and "prompt is too long" in message:
        return ContextTooLong(f"{provider}: {sanitise(message, redact=redact)}", param="messages",
                              upstream_status=400)
    return from_upstream(status, f"{kind}: {message}", provider=provider, retry_after=retry_after, redact=redact)


def error_from_event(data: Any, *, provider: str, redact: Redactor | None = None) -> UpstreamStatus:
    """An `error` event inside a stream (e.g. overloaded_error) -> a 502 carrying the status
    Anthropic uses for that error type (so the route's `retry_on` decides a retry)."""
    kind, message = _error_parts(data)
    return UpstreamStatus(f"{provider} stream failed: {kind}: {sanitise(message, redact=redact)}",
                          upstream_status=ERROR_STATUS.get(kind, 500))
