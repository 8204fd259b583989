"""Responses API request -> Chat Completions request (pure: no I/O).

`to_chat(body, history)` checks a `POST /v1/responses` body and returns the chat request the
gateway's chain runs, plus what the reply translation needs. `history` is the conversation a
`previous_response_id` stands for (its items, oldest first). Bad or unsupported input raises
`InvalidRequest` naming the field in `param`; nothing is dropped silently (the one exception,
built-in web search merely offered, is reported in `Translated.dropped`).

Top-level fields
    model                        -> model (required unless a `preset` field names one)
    instructions                 -> first message, role system
    input (string | items)       -> messages (below), after the history's
    tools                        -> tools (function; custom: a function taking one string `input`;
                                    namespace: its tools, named "<namespace>__<name>" upstream
                                    and given back split)
    tool_choice, parallel_tool_calls -> same meaning (allowed_tools filters the tools)
    text.format json_schema / json_object / text -> response_format / - ; text.verbosity -> verbosity
    reasoning.effort             -> reasoning_effort (summary, generate_summary: accepted)
    max_output_tokens            -> max_completion_tokens
    temperature, top_p, user     -> same; safety_identifier -> user when there is none
    stream                       -> stream + stream_options.include_usage
    preset, cache, models        -> passed on (the gateway's own fields)
    metadata, store, previous_response_id, include, prompt_cache_key, client_metadata,
    service_tier, stream_options, truncation (disabled), background (false)
                                 -> used by the endpoint, not sent upstream
Items: see proxy/responses/items.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.errors import InvalidRequest
from proxy.responses.items import chat_name, input_items, to_messages

__all__ = ["to_chat", "Translated"]

WEB_SEARCH = frozenset(("web_search", "web_search_preview", "web_search_2025_08_26",
                        "web_search_preview_2025_03_11"))
BUILT_IN = frozenset(("file_search", "computer_use_preview", "computer_use", "code_interpreter", "mcp",
                      "image_generation", "local_shell", "shell", "apply_patch", "tool_search"))
# read here or by the endpoint; anything else is a 400 naming it
ENDPOINT_FIELDS = frozenset(("metadata", "store", "previous_response_id", "include", "prompt_cache_key",
                             "client_metadata", "service_tier", "stream_options", "truncation", "background",
                             "prompt_cache_retention"))
TRANSLATED = frozenset(("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                        "text", "reasoning", "max_output_tokens", "temperature", "top_p", "user",
                        "safety_identifier", "stream", "preset", "cache", "models"))
EFFORTS = frozenset(("none", "minimal", "low", "medium", "high", "xhigh"))


@dataclass(slots=True)
class Translated:
    chat: dict                                    # the chat completions request
    items: list[dict]                             # this request's input items (for input_items)
    dropped: tuple[str, ...] = ()                 # built-in tools offered and left out
    names: dict[str, tuple] = field(default_factory=dict)   # chat name -> (namespace, name, function|custom)


def to_chat(body: dict, history: list[dict] = ()) -> Translated:
    for name in body:
        if name not in TRANSLATED and name not in ENDPOINT_FIELDS:
            raise InvalidRequest(f"Unsupported parameter: '{name}' is not supported by this gateway's "
                                 "Responses API.", param=name, code="unsupported_parameter")
    _check_endpoint_fields(body)
    model = body.get("model")
    if model is None and isinstance(body.get("preset"), str):
        model = ""
    if not isinstance(model, str) or not (model or body.get("preset")):
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if "input" not in body and not history:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    items = input_items(body.get("input") if body.get("input") is not None else [])
    chat: dict[str, Any] = {"model": model}
    instructions = body.get("instructions")
    messages: list[dict] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string.", param="instructions", code="invalid_type")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    names: dict[str, tuple] = {}
    dropped = _tools(body, chat, names)
    reverse = {(ns, name): k for k, (ns, name, _) in names.items()}
    messages += to_messages(list(history), "previous_response_id", reverse)
    messages += to_messages(items, "input", reverse)
    if not messages:
        raise InvalidRequest("'input' must hold at least one item.", param="input")
    chat["messages"] = messages
    _text(body.get("text"), chat)
    _reasoning(body.get("reasoning"), chat)
    _sampling(body, chat)
    return Translated(chat, items, dropped, names)


def _check_endpoint_fields(body: dict) -> None:
    if body.get("truncation") not in (None, "disabled"):
        raise InvalidRequest("Only truncation 'disabled' is supported.", param="truncation")
    if body.get("background") not in (None, False):
        raise InvalidRequest("Background responses are not supported by this gateway.", param="background")
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(s, str) for s in include)):
        raise InvalidRequest("'include' must be an array of strings.", param="include", code="invalid_type")
    if include and "message.output_text.logprobs" in include:
        raise InvalidRequest("Logprobs are not supported by this gateway's Responses API.", param="include")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata", code="invalid_type")
    for name in ("store", "stream"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise InvalidRequest(f"'{name}' must be a boolean.", param=name, code="invalid_type")
    prev = body.get("previous_response_id")
    if prev is not None and (not isinstance(prev, str) or not prev):
        raise InvalidRequest("'previous_response_id' must be a response id.", param="previous_response_id")


# -- tools ----------------------------------------------------------------------------------

def _tools(body: dict, chat: dict, names: dict) -> tuple[str, ...]:
    tools = body.get("tools")
    dropped: list[str] = []
    out: list[dict] = []
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    for i, tool in enumerate(tools or ()):
        param = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("function", "custom"):
            out.append(_function(tool, param, None, names))
        elif kind == "namespace":
            ns = tool.get("name")
            if not isinstance(ns, str) or not ns:
                raise InvalidRequest(f"'{param}.name' is required.", param=f"{param}.name")
            for j, inner in enumerate(tool.get("tools") or ()):
                if not isinstance(inner, dict) or inner.get("type") not in ("function", "custom"):
                    raise InvalidRequest("Only function and custom tools are supported inside a namespace.",
                                         param=f"{param}.tools[{j}].type")
                out.append(_function(inner, f"{param}.tools[{j}]", ns, names))
        elif kind in WEB_SEARCH:
            dropped.append(kind)
        elif isinstance(kind, str):
            raise InvalidRequest(f"The built-in tool '{kind}' is not supported through this gateway: only "
                                 "function tools run on every model.", param=f"{param}.type",
                                 code="unsupported_tool")
        else:
            raise InvalidRequest(f"'{param}' must be a tool object with a 'type'.", param=param)
    choice = body.get("tool_choice")
    if choice is not None:
        out = _tool_choice(choice, out, names, chat)
    if out:
        chat["tools"] = out
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    return tuple(dropped)


def _function(tool: dict, param: str, namespace: str | None, names: dict) -> dict:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{param}.name' is required.", param=f"{param}.name")
    upstream = chat_name(namespace, name)
    names[upstream] = (namespace, name, tool["type"])
    function: dict[str, Any] = {"name": upstream}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool["type"] == "custom":        # free-form input: one string argument
        function["parameters"] = {"type": "object", "properties": {"input": {"type": "string", "description": (
            "The tool's whole input as free-form text" + _grammar(tool.get("format")))}}, "required": ["input"]}
        return {"type": "function", "function": function}
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


def _grammar(fmt: Any) -> str:
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        return f", following this {fmt.get('syntax') or 'lark'} grammar:\n" + fmt["definition"]
    return "."


def _tool_choice(choice: Any, tools: list[dict], names: dict, chat: dict) -> list[dict]:
    if choice in ("none", "auto", "required"):
        chat["tool_choice"] = choice
        return tools
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "custom"):
        name = choice.get("name")
        upstream = next((k for k, (_, n, _) in names.items() if n == name or k == name), None)
        if upstream is None:
            raise InvalidRequest(f"tool_choice names the function {name!r}, which is not in 'tools'.",
                                 param="tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": upstream}}
        return tools
    if kind == "allowed_tools":
        allowed = {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)}
        kept = [t for t in tools if names[t["function"]["name"]][1] in allowed or t["function"]["name"] in allowed]
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise InvalidRequest("'tool_choice.mode' must be auto or required.", param="tool_choice.mode")
        chat["tool_choice"] = mode
        return kept
    if isinstance(kind, str):
        raise InvalidRequest(f"tool_choice forces the built-in tool '{kind}', which this gateway cannot run.",
                             param="tool_choice", code="unsupported_tool")
    raise InvalidRequest("'tool_choice' must be none, auto, required or a tool object.", param="tool_choice")


# -- other fields ---------------------------------------------------------------------------

def _text(text: Any, chat: dict) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidRequest("'text' must be an object.", param="text", code="invalid_type")
    for key in text:
        if key not in ("format", "verbosity"):
            raise InvalidRequest(f"Unsupported parameter: 'text.{key}'.", param=f"text.{key}",
                                 code="unsupported_parameter")
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise InvalidRequest("'text.format' json_schema needs a 'name' and a 'schema' object.",
                                 param="text.format")
        spec = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    else:
        raise InvalidRequest("'text.format.type' must be text, json_object or json_schema.",
                             param="text.format.type")


def _reasoning(reasoning: Any, chat: dict) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise InvalidRequest("'reasoning' must be an object.", param="reasoning", code="invalid_type")
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary"):
            raise InvalidRequest(f"Unsupported parameter: 'reasoning.{key}'.", param=f"reasoning.{key}",
                                 code="unsupported_parameter")
    effort = reasoning.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise InvalidRequest("'reasoning.effort' must be one of " + ", ".join(sorted(EFFORTS)) + ".",
                                 param="reasoning.effort")
        chat["reasoning_effort"] = effort


def _sampling(body: dict, chat: dict) -> None:
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
        chat["max_completion_tokens"] = tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    user = body.get("user") or body.get("safety_identifier")
    if user is not None:
        chat["user"] = user
    for key in ("preset", "cache", "models"):
        if key in body:
            chat[key] = body[key]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
