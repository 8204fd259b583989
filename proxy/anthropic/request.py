"""OpenAI chat request -> Anthropic Messages request. Pure: no I/O, raises InvalidRequest naming
the offending field in `param` (e.g. `messages[3].content[1]`) for input Claude cannot take.

Mapping tables (also in the README):
- reasoning_effort -> thinking.budget_tokens: see EFFORT_BUDGETS; `none` (or absent) = no thinking.
  max_tokens is raised to budget + max_tokens when it would not exceed the budget; temperature and
  top_k are dropped and top_p kept only within [0.95, 1] (the API's rules with thinking on).
- max_tokens default: the route's `max_tokens`, else the model's output limit (see model_info).
- response_format json_schema: Anthropic's native structured outputs (`output_config.format`, GA,
  no beta header) when Options.native_structured says so, or (None) the model is known to support
  them (Opus 4.1, Claude 4.5 and newer); otherwise one forced tool named after the schema whose
  input becomes message.content. json_object: the same forced tool with a permissive object schema.
- A capability the route sets to false (vision, pdf, tools, reasoning, structured_outputs) makes
  the matching input a 400.
- Unsupported and rejected with 400: n > 1, logprobs, audio output, input_audio, legacy functions.
  seed, penalties, logit_bias, store and OpenAI metadata have no Anthropic equivalent and are ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import orjson

from proxy.anthropic.messages import Block, convert_messages
from proxy.errors import InvalidRequest

EFFORT_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
AUTO_CACHE_MIN_CHARS = 4000      # ~1024 tokens, the smallest cacheable prefix
MAX_BREAKPOINTS = 4              # the API's limit on cache_control blocks per request
JSON_TOOL_DEFAULT = "json_response"
_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MODEL_RE = re.compile(r"claude-(?:(?P<a>\d+)(?:-(?P<b>\d)(?!\d))?-(?P<f1>opus|sonnet|haiku)"
                       r"|(?P<f2>opus|sonnet|haiku)-(?P<c>\d+)(?:-(?P<d>\d)(?!\d))?)")


@dataclass(frozen=True, slots=True)
class Options:
    """What the route adds to a request (read from ctx.match by the provider)."""
    max_tokens_default: int | None = None
    auto_cache: bool = False
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    reasoning_effort: str | None = None     # from a `:thinking[:effort]` model suffix
    native_structured: bool | None = None   # None: decide by the model name (model_info)


@dataclass(frozen=True, slots=True)
class Translated:
    body: dict[str, Any]
    betas: tuple[str, ...] = ()             # anthropic-beta values this request needs
    json_tool: str | None = None            # forced tool standing for response_format, if any


@dataclass(frozen=True, slots=True)
class ModelInfo:
    max_output: int
    thinking: bool
    native_structured: bool


def model_info(model: str) -> ModelInfo:
    """What a Claude model name tells: output limit, extended thinking, native structured outputs.
    Unknown names get a conservative 4096 tokens and let the upstream judge thinking."""
    m = _MODEL_RE.search(model)
    if m is None:
        return ModelInfo(4096, True, False)
    family = m["f1"] or m["f2"]
    version = (int(m["a"]), int(m["b"] or 0)) if m["f1"] else (int(m["c"]), int(m["d"] or 0))
    if version < (3, 5):
        limit = 4096
    elif version < (3, 7):
        limit = 8192
    elif family == "opus" and version < (4, 5):
        limit = 32000
    else:
        limit = 64000
    native = version >= (4, 5) or (family == "opus" and version >= (4, 1))
    return ModelInfo(limit, version >= (3, 7), native)


def to_anthropic(body: dict[str, Any], options: Options | None = None) -> Translated:
    """Translate an OpenAI chat completion request (model already the upstream name)."""
    opts = options or Options()
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required", param="model")
    info = model_info(model)
    caps = opts.capabilities
    _reject_unsupported(body)
    system, messages = convert_messages(body.get("messages"), caps)
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": _max_tokens(body, opts, info)}
    if system:
        out["system"] = system
    _sampling(body, out)
    native = info.native_structured if opts.native_structured is None else opts.native_structured
    tools = convert_tools(body.get("tools"), caps, native)
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body, tools)
        if choice is not None:
            out["tool_choice"] = choice
    elif any(b["type"] == "tool_use" for t in messages for b in t["content"]):
        _declare_history_tools(out)
    thinking = _thinking(body, opts, info, out)
    json_tool = _structured_output(body.get("response_format"), out, caps, native, thinking)
    if thinking and out.get("tool_choice", {}).get("type") in ("any", "tool"):
        raise InvalidRequest("tool_choice `required` or a named function cannot be combined with reasoning "
                             "on Claude models (extended thinking allows only auto or none)", param="tool_choice")
    if opts.auto_cache:
        apply_auto_cache(out)
    if body.get("stream"):
        out["stream"] = True
    return Translated(out, (), json_tool)


# --- scalar fields -----------------------------------------------------------------------

def _reject_unsupported(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise InvalidRequest("Claude models return a single choice; `n` must be 1", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InvalidRequest("Claude models do not return logprobs", param="logprobs")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise InvalidRequest("legacy `functions`/`function_call` are not supported", param="functions",
                             tip="send `tools` and `tool_choice` instead")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise InvalidRequest("Claude models cannot produce audio", param="modalities")


def _max_tokens(body: dict[str, Any], opts: Options, info: ModelInfo) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"`{key}` must be a positive integer", param=key)
        return value
    return opts.max_tokens_default or info.max_output


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"`{key}` must be a number between {low:g} and {high:g}", param=key)
    return float(value)


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = _number(body, "temperature", 0, 2)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)      # Anthropic's range is 0..1
    top_p = _number(body, "top_p", 0, 1)
    if top_p is not None:
        out["top_p"] = top_p
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0:
        out["top_k"] = top_k
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("`stop` must be a string or an array of strings", param="stop")
        if any(s.strip() for s in stop):
            out["stop_sequences"] = [s for s in stop if s.strip()]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user[:256]}


# --- tools, reasoning, structured outputs, caching ---------------------------------------

def convert_tools(tools: Any, caps: Mapping[str, bool], native: bool) -> list[Block]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array", param="tools")
    if caps.get("tools") is False:
        raise InvalidRequest("this model does not support tools", param="tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest("only function tools are supported", param=f"tools[{i}]")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
            raise InvalidRequest("tool names must match ^[a-zA-Z0-9_-]{1,64}$", param=f"tools[{i}].function.name")
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise InvalidRequest("`parameters` must be a JSON Schema object", param=f"tools[{i}].function.parameters")
        block: Block = {"name": name, "input_schema": schema if "type" in schema else {"type": "object", **schema}}
        if fn.get("description"):
            block["description"] = fn["description"]
        if fn.get("strict") and native:
            block["strict"] = True
        cache = tool.get("cache_control") or fn.get("cache_control")
        if cache:
            block["cache_control"] = cache
        out.append(block)
    return out


def _tool_choice(body: dict[str, Any], tools: list[Block]) -> Block | None:
    choice, serial = body.get("tool_choice"), body.get("parallel_tool_calls") is False
    if choice is None and not serial:
        return None
    simple = {None: "auto", "auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in {t["name"] for t in tools}:
            raise InvalidRequest(f"tool_choice names an unknown function {name!r}", param="tool_choice")
        out: Block = {"type": "tool", "name": name}
    elif isinstance(choice, (str, type(None))) and choice in simple:
        out = {"type": simple[choice]}
    else:
        raise InvalidRequest("tool_choice must be none, auto, required or a named function", param="tool_choice")
    if serial and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _declare_history_tools(out: dict[str, Any]) -> None:
    """The API wants tools defined whenever the history holds tool_use blocks; a request without
    tools (e.g. a summary turn) gets the history's tools declared and tool_choice none."""
    names = dict.fromkeys(b["name"] for t in out["messages"] for b in t["content"] if b["type"] == "tool_use")
    out["tools"] = [{"name": n, "description": "Not available in this turn.",
                     "input_schema": {"type": "object"}} for n in names]
    out["tool_choice"] = {"type": "none"}


def _requested_budget(body: dict[str, Any], opts: Options) -> tuple[int | None, str]:
    effort, param = body.get("reasoning_effort"), "reasoning_effort"
    extra = body.get("reasoning")
    if effort is None and isinstance(extra, dict):    # OpenRouter-style {"effort"} / {"max_tokens"}
        if extra.get("enabled") is False:
            return None, "reasoning"
        budget = extra.get("max_tokens")
        if isinstance(budget, int) and not isinstance(budget, bool):
            return max(budget, 1024), "reasoning.max_tokens"
        effort, param = extra.get("effort"), "reasoning.effort"
    if effort is None:
        effort, param = opts.reasoning_effort, "model"
    if effort is None or effort == "none":
        return None, param
    if not isinstance(effort, str) or effort not in EFFORT_BUDGETS:
        raise InvalidRequest("reasoning_effort must be one of none, minimal, low, medium, high, xhigh", param=param)
    return EFFORT_BUDGETS[effort], param


def _thinking(body: dict[str, Any], opts: Options, info: ModelInfo, out: dict[str, Any]) -> bool:
    budget, param = _requested_budget(body, opts)
    if budget is None:
        return False
    if opts.capabilities.get("reasoning") is False or not info.thinking:
        raise InvalidRequest(f"model {out['model']!r} does not support reasoning", param=param)
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if out["max_tokens"] <= budget:
        out["max_tokens"] += budget
    out.pop("temperature", None)
    out.pop("top_k", None)
    if not 0.95 <= out.get("top_p", 1.0) <= 1.0:
        out.pop("top_p")
    return True


def _structured_output(fmt: Any, out: dict[str, Any], caps: Mapping[str, bool], native: bool,
                       thinking: bool) -> str | None:
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind is None or kind == "text":
        return None
    if caps.get("structured_outputs") is False:
        raise InvalidRequest("this model does not support structured outputs", param="response_format")
    if kind == "json_object":
        return _force_json_tool(out, None, {"type": "object", "additionalProperties": True}, None, thinking)
    if kind != "json_schema" or not isinstance(fmt.get("json_schema"), dict):
        raise InvalidRequest("response_format must be text, json_object or json_schema", param="response_format")
    spec = fmt["json_schema"]
    schema = spec.get("schema") or {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema.schema must be an object", param="response_format.json_schema.schema")
    if native:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return None
    return _force_json_tool(out, spec.get("name"), schema, spec.get("description"), thinking)


def _force_json_tool(out: dict[str, Any], name: Any, schema: dict[str, Any], description: Any,
                     thinking: bool) -> str:
    if thinking:
        raise InvalidRequest("on this model JSON output is produced by a forced tool call, which Anthropic does "
                             "not allow together with reasoning", param="response_format",
                             tip="drop reasoning_effort, or route to a model with native structured outputs")
    if schema.get("type", "object") != "object":
        raise InvalidRequest("the JSON schema's root must be an object", param="response_format.json_schema.schema")
    tools = out.setdefault("tools", [])
    taken = {t["name"] for t in tools}
    tool_name = name if isinstance(name, str) and _TOOL_NAME_RE.match(name) else JSON_TOOL_DEFAULT
    while tool_name in taken:
        tool_name = (tool_name + "_json")[-64:]
    tools.append({"name": tool_name, "input_schema": {"type": "object", **schema},
                  "description": description if isinstance(description, str) and description else
                  "Give your final answer by calling this tool; its input is the JSON answer."})
    choice = out.get("tool_choice")
    if len(tools) == 1 or (choice is not None and choice["type"] == "none"):
        out["tool_choice"] = {"type": "tool", "name": tool_name, "disable_parallel_tool_use": True}
    elif choice is None or choice["type"] == "auto":   # answer in JSON or call a tool, but call one
        out["tool_choice"] = {**(choice or {}), "type": "any"}
    return tool_name


def _cacheable_blocks(out: dict[str, Any]) -> Iterator[Block]:
    yield from out.get("tools") or ()
    yield from out.get("system") or ()
    for turn in out["messages"]:
        for block in turn["content"]:
            yield block
            if isinstance(block.get("content"), list):
                yield from block["content"]


def apply_auto_cache(out: dict[str, Any]) -> int:
    """Place cache_control breakpoints (last tool, last system block, last block of the last user
    turn) on long prompts, keeping client breakpoints and the API's limit of 4. Returns how many."""
    room = MAX_BREAKPOINTS - sum(1 for b in _cacheable_blocks(out) if b.get("cache_control"))
    if room <= 0 or len(orjson.dumps([out.get("system"), out.get("tools"), out["messages"]])) < AUTO_CACHE_MIN_CHARS:
        return 0
    users = [t for t in out["messages"] if t["role"] == "user"]
    candidates = [(out.get("tools") or [None])[-1], (out.get("system") or [None])[-1],
                  users[-1]["content"][-1] if users else None]
    added = 0
    for block in candidates:
        if added < room and block is not None and not block.get("cache_control"):
            block["cache_control"] = {"type": "ephemeral"}
            added += 1
    return added
