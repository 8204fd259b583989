"""Inbound Anthropic Messages request -> OpenAI Chat Completions request (pure functions).

`POST /v1/messages` (SPEC §2) accepts Anthropic's format; the gateway speaks OpenAI Chat
Completions inside, so `to_openai_request(body)` translates the request once at the edge.
Bad input raises `proxy.errors.InvalidRequest` naming the offending field in `param`.

Top-level fields
    model                          -> model (required, non-empty string)
    max_tokens                     -> max_tokens (required int)
    system (string | text blocks)  -> first message, role "system": a string, or text parts
                                      when any block carries cache_control (kept on the part)
    messages                       -> messages (see below; required, non-empty)
    stop_sequences                 -> stop
    temperature, top_p             -> same name
    top_k                          -> top_k (non-OpenAI field, passed through)
    metadata.user_id               -> user
    stream                         -> stream, plus stream_options.include_usage = true
    tools[{name, description, input_schema, strict, cache_control}]
                                   -> tools[{type: function, function: {name, description,
                                      parameters, strict}, cache_control}]; server tools
                                      (web_search_*, bash_*, ...) are a 400
    tool_choice auto|any|tool|none -> auto | required | {type: function, function: {name}} | none
    tool_choice.disable_parallel_tool_use -> parallel_tool_calls: false
    thinking {type: enabled, budget_tokens}
                                   -> reasoning_effort by THINKING_EFFORT below (`thinking` itself
                                      is dropped: Claude targets get the request untranslated).
                                      adaptive -> "medium"; disabled -> no reasoning_effort
    output_config.effort           -> reasoning_effort (max -> xhigh); wins over the budget map
    output_config.format / output_format {type: json_schema, schema}
                                   -> response_format {type: json_schema, json_schema:
                                      {name: "output", schema, strict: true}}
    cache_control (top level)      -> cache_control on the last content part of the last message
                                      that has content (string content becomes one text part)
    service_tier, container, mcp_servers, context_management, inference_geo, speed,
    diagnostics, user_profile_id, workspace_id
                                   -> dropped (Anthropic-only, no OpenAI meaning)
    any other field                -> passed through unchanged (e.g. the gateway's own
                                      `preset`/`cache`, or OpenAI fields like `seed`); on a
                                      clash the translated value wins

Thinking budget -> reasoning_effort (THINKING_EFFORT)
    budget_tokens <  1024          -> minimal
    1024  <= budget_tokens < 4096  -> low
    4096  <= budget_tokens < 16384 -> medium
    16384 <= budget_tokens         -> high

Messages (role user | assistant | system; content a string or a list of blocks)
    role system (Claude Code's mid-conversation system text, beta mid-conversation-system-*)
                               -> a {role: system} message at the same place: a string, or text
                                  parts when a block carries cache_control; other blocks are a 400
    text                       -> {type: text, text} part (cache_control kept)
    image, base64 source       -> {type: image_url, image_url: {url: "data:<media>;base64,..."}}
    image, url source          -> {type: image_url, image_url: {url}}
    document, base64 PDF       -> {type: file, file: {filename: "document.pdf",
                                   file_data: "data:application/pdf;base64,..."}}
    document, url PDF          -> same, file_data = the URL
    document, text / content   -> text (and image) parts
    search_result              -> a text part (title, source, then its text blocks)
    tool_use (assistant)       -> tool_calls[{id, type: function, function: {name,
                                   arguments: JSON string of input}}]
    tool_result (user)         -> one {role: tool, tool_call_id, content} message each, emitted
                                   before the rest of that user turn; text blocks are joined
                                   with "\\n"; is_error prefixes the text with "Error: "; images
                                   or documents inside a tool result go to a user message that
                                   follows the tool messages (OpenAI tool messages are text-only)
    thinking (assistant)       -> reasoning_details [{type: reasoning.text, text, signature}]
    redacted_thinking          -> reasoning_details [{type: reasoning.encrypted, data}]
An assistant turn becomes one message: text joined into `content` (parts when cache_control
is present), `content: null` when it only calls tools. Any other block type is a 400.
"""
from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequest

__all__ = ["to_openai_request", "thinking_effort", "THINKING_EFFORT"]

#: (upper bound, exclusive; effort) — the first bound above the budget wins
THINKING_EFFORT: tuple[tuple[float, str], ...] = (
    (1024, "minimal"), (4096, "low"), (16384, "medium"), (float("inf"), "high"))

_EFFORT_ALIASES = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
_DROPPED = frozenset({"service_tier", "container", "mcp_servers", "context_management", "inference_geo",
                      "speed", "diagnostics", "user_profile_id", "workspace_id", "anthropic_version",
                      "anthropic_beta"})
_HANDLED = frozenset({"model", "max_tokens", "system", "messages", "stop_sequences", "temperature",
                      "top_p", "top_k", "metadata", "stream", "tools", "tool_choice", "thinking",
                      "output_config", "output_format", "cache_control"})


def thinking_effort(budget_tokens: int) -> str:
    """The reasoning_effort a thinking budget maps to (see THINKING_EFFORT)."""
    for bound, effort in THINKING_EFFORT:
        if budget_tokens < bound:
            return effort
    return "high"


def to_openai_request(body: Any) -> dict:
    """Translate an Anthropic Messages request body into an OpenAI chat completions body."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", param=None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required", param="model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidRequest("`max_tokens` is required and must be a non-negative integer",
                             param="max_tokens")
    out: dict[str, Any] = {"model": model}
    messages = _system_messages(body.get("system")) + _messages(body.get("messages"))
    if body.get("cache_control"):
        _mark_last_block(messages, body["cache_control"])
    out["messages"] = messages
    out["max_tokens"] = max_tokens
    _sampling(body, out)
    _tools(body, out)
    _reasoning(body, out)
    _output_format(body, out)
    for key, value in body.items():
        if key not in _HANDLED and key not in _DROPPED:
            out.setdefault(key, value)
    return out


# -- fields ---------------------------------------------------------------------------------

def _sampling(body: dict, out: dict) -> None:
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("`stop_sequences` must be a list of strings", param="stop_sequences")
        if stop:
            out["stop"] = stop
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("`tools` must be a list", param="tools")
        if tools:
            out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("`tool_choice.name` is required for type tool", param="tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest("`tool_choice.type` must be one of auto, any, tool, none",
                             param="tool_choice.type")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False


def _tool(tool: Any, i: int) -> dict:
    param = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise InvalidRequest(f"`{param}` must be an object", param=param)
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(f"tool type {tool.get('type')!r} is not supported through this gateway; "
                             "only custom tools with an input_schema", param=f"{param}.type")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"`{param}.name` is required", param=f"{param}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"`{param}.input_schema` must be an object", param=f"{param}.input_schema")
    function: dict[str, Any] = {"name": name}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = schema
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    result: dict[str, Any] = {"type": "function", "function": function}
    if tool.get("cache_control"):
        result["cache_control"] = tool["cache_control"]
    return result


def _reasoning(body: dict, out: dict) -> None:
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise InvalidRequest("`thinking` must be an object", param="thinking")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise InvalidRequest("`thinking.budget_tokens` must be an integer",
                                     param="thinking.budget_tokens")
            out["reasoning_effort"] = thinking_effort(budget)
        elif kind == "adaptive":
            out["reasoning_effort"] = "medium"
        elif kind not in ("disabled", "between_tools"):
            raise InvalidRequest("`thinking.type` must be enabled, adaptive or disabled", param="thinking.type")
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("effort") is not None:
        effort = _EFFORT_ALIASES.get(config["effort"])
        if effort is None:
            raise InvalidRequest("`output_config.effort` must be low, medium, high, xhigh or max",
                                 param="output_config.effort")
        out["reasoning_effort"] = effort


def _output_format(body: dict, out: dict) -> None:
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise InvalidRequest("`output_config` must be an object", param="output_config")
    fmt, param = (config or {}).get("format"), "output_config.format"
    if fmt is None:
        fmt, param = body.get("output_format"), "output_format"
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest(f"`{param}` must be {{type: json_schema, schema: {{...}}}}", param=param)
    out["response_format"] = {"type": "json_schema",
                              "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _mark_last_block(messages: list[dict], cache_control: Any) -> None:
    """Top-level cache_control: put the marker on the last content part of the request."""
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, str) and content:
            message["content"] = [{"type": "text", "text": content, "cache_control": cache_control}]
            return
        if isinstance(content, list) and content:
            content[-1] = {**content[-1], "cache_control": content[-1].get("cache_control") or cache_control}
            return


# -- messages -------------------------------------------------------------------------------

def _system_messages(system: Any, param: str = "system") -> list[dict]:
    """The top-level `system`, or a role-system message's content, as one OpenAI system message."""
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise InvalidRequest(f"`{param}` must be a string or a list of text blocks", param=param)
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"`{param}` blocks must be text blocks", param=f"{param}[{i}]")
        parts.append(_text_part(block))
    if any("cache_control" in p for p in parts):
        return [{"role": "system", "content": parts}]
    return [{"role": "system", "content": "\n\n".join(p["text"] for p in parts)}]


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` is required and must be a non-empty list", param="messages")
    out: list[dict] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"`{param}` must be an object", param=param)
        role = msg.get("role")
        content = msg.get("content")
        if role == "system":
            out.extend(_system_messages(content, f"{param}.content"))
            continue
        if isinstance(content, str):
            if role not in ("user", "assistant"):
                raise InvalidRequest(f"`{param}.role` must be user, assistant or system", param=f"{param}.role")
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"`{param}.content` must be a string or a list of blocks",
                                 param=f"{param}.content")
        if role == "user":
            out.extend(_user_turn(content, param))
        elif role == "assistant":
            out.append(_assistant_turn(content, param))
        else:
            raise InvalidRequest(f"`{param}.role` must be user, assistant or system", param=f"{param}.role")
    return out


def _user_turn(blocks: list, param: str) -> list[dict]:
    tool_messages: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        bparam = f"{param}.content[{j}]"
        kind = _block_type(block, bparam)
        if kind == "tool_result":
            message, extra = _tool_result(block, bparam)
            tool_messages.append(message)
            parts.extend(extra)
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise InvalidRequest(f"`{kind}` blocks are only allowed in assistant turns", param=f"{bparam}.type")
        else:
            parts.extend(_content_parts(block, kind, bparam))
    if parts:
        return tool_messages + [{"role": "user", "content": parts}]
    if not tool_messages:
        return [{"role": "user", "content": ""}]
    return tool_messages


def _assistant_turn(blocks: list, param: str) -> dict:
    parts: list[dict] = []
    tool_calls: list[dict] = []
    reasoning: list[dict] = []
    for j, block in enumerate(blocks):
        bparam = f"{param}.content[{j}]"
        kind = _block_type(block, bparam)
        if kind == "text":
            parts.append(_text_part(block, bparam))
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block, bparam))
        elif kind == "thinking":
            reasoning.append({"type": "reasoning.text", "text": block.get("thinking") or "",
                              "signature": block.get("signature")})
        elif kind == "redacted_thinking":
            reasoning.append({"type": "reasoning.encrypted", "data": block.get("data") or ""})
        elif kind == "tool_result":
            raise InvalidRequest("`tool_result` blocks are only allowed in user turns", param=f"{bparam}.type")
        else:
            raise InvalidRequest(f"`{kind}` blocks are not supported in assistant turns", param=f"{bparam}.type")
    message: dict[str, Any] = {"role": "assistant"}
    if any("cache_control" in p for p in parts):
        message["content"] = parts
    elif parts:
        message["content"] = "".join(p["text"] for p in parts)
    else:
        message["content"] = None if tool_calls else ""
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_details"] = reasoning
    return message


def _block_type(block: Any, param: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidRequest(f"`{param}` must be a content block with a `type`", param=param)
    return block["type"]


def _content_parts(block: dict, kind: str, param: str) -> list[dict]:
    """Parts for a user-side block (also used inside tool results and documents)."""
    if kind == "text":
        return [_text_part(block, param)]
    if kind == "image":
        return [_image_part(block, param)]
    if kind == "document":
        return _document_parts(block, param)
    if kind == "search_result":
        return [_search_result_part(block, param)]
    raise InvalidRequest(f"unknown or unsupported content block type {kind!r}", param=f"{param}.type")


def _text_part(block: dict, param: str = "") -> dict:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"`{param}.text` must be a string", param=f"{param}.text")
    return _with_cache({"type": "text", "text": text}, block)


def _with_cache(part: dict, block: dict) -> dict:
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict, param: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest("image `source` must be base64 or url", param=f"{param}.source")
    return _with_cache({"type": "image_url", "image_url": {"url": url}}, block)


def _document_parts(block: dict, param: str) -> list[dict]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media = source.get("media_type") or "application/pdf"
        data = f"data:{media};base64,{source.get('data') or ''}"
        return [_with_cache({"type": "file", "file": {"filename": "document.pdf", "file_data": data}}, block)]
    if kind == "url" and isinstance(source.get("url"), str):
        return [_with_cache({"type": "file", "file": {"filename": "document.pdf",
                                                      "file_data": source["url"]}}, block)]
    if kind == "text" and isinstance(source.get("data"), str):
        return [_with_cache({"type": "text", "text": source["data"]}, block)]
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return [_with_cache({"type": "text", "text": inner}, block)]
        if isinstance(inner, list):
            parts = []
            for k, b in enumerate(inner):
                bparam = f"{param}.source.content[{k}]"
                parts.extend(_content_parts(b, _block_type(b, bparam), bparam))
            return parts
    raise InvalidRequest("document `source` must be base64, url, text or content", param=f"{param}.source")


def _search_result_part(block: dict, param: str) -> dict:
    lines = [str(block.get("title") or ""), str(block.get("source") or "")]
    for k, b in enumerate(block.get("content") or []):
        lines.append(_text_part(b, f"{param}.content[{k}]")["text"])
    return _with_cache({"type": "text", "text": "\n".join(s for s in lines if s)}, block)


def _tool_call(block: dict, param: str) -> dict:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"`{param}.id` is required", param=f"{param}.id")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"`{param}.name` is required", param=f"{param}.name")
    arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_result(block: dict, param: str) -> tuple[dict, list[dict]]:
    """One `role: tool` message, plus non-text parts that must travel in a user message."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"`{param}.tool_use_id` is required", param=f"{param}.tool_use_id")
    content = block.get("content")
    texts: list[dict] = []
    extra: list[dict] = []
    if isinstance(content, str):
        texts.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for k, b in enumerate(content):
            bparam = f"{param}.content[{k}]"
            kind = _block_type(b, bparam)
            parts = _content_parts(b, kind, bparam)
            for part in parts:
                (texts if part["type"] == "text" else extra).append(part)
    elif content is not None:
        raise InvalidRequest(f"`{param}.content` must be a string or a list of blocks", param=f"{param}.content")
    if block.get("is_error"):
        if texts:
            texts[0] = {**texts[0], "text": "Error: " + texts[0]["text"]}
        else:
            texts.append({"type": "text", "text": "Error"})
    cache_control = block.get("cache_control")
    if cache_control and texts:
        texts[-1] = {**texts[-1], "cache_control": cache_control}
    if any("cache_control" in t for t in texts):
        tool_content: Any = texts
    else:
        tool_content = "\n".join(t["text"] for t in texts)
    return {"role": "tool", "tool_call_id": call_id, "content": tool_content}, extra
