"""Request bodies: read (size, time, JSON, nesting) and checked at the edge.

The fields OpenAI's API defines for Chat Completions and Embeddings (the `openai` package's
`types/chat/completion_create_params.py`, `types/embedding_create_params.py` and the message,
tool and content-part types they name) are checked against the tables CHAT_FIELDS,
EMBEDDINGS_FIELDS and MESSAGES_FIELDS (/v1/messages: Anthropic's own fields and OpenAI's passed
on): a wrong JSON type, an unknown enum value or an out-of-range number is a 400
`invalid_request_error` whose `param` is the path of the value (`messages[1].role`,
`tools[0].function.name`). Checks are shallow where a provider looks deeper (a JSON schema is
an object; what is in it is the provider's business); `null` is accepted wherever a field is
optional. Fields not in a table pass through unchanged, and so do unknown tool and
content-part types: other providers define their own. Enums are checked where the gateway
acts on the value (roles, tool_choice, response_format, reasoning_effort, modalities), not
where providers differ (service_tier).

The checks themselves (Str, Num, Enum, ListOf, Obj, Tagged, ...) are in proxy/checks.py.
"""
from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from proxy.checks import (Any_, Bool, ByType, Enum, Int, ListOf, MapOf, Nullable, Num, Obj, Str, Tagged,
                          Uniform, check_top)
from proxy.context import RequestContext
from proxy.errors import InvalidRequest, PayloadTooLarge

__all__ = ["read_json", "json_depth", "check_chat_body", "check_embeddings_body", "check_messages_body",
           "CHAT_FIELDS", "EMBEDDINGS_FIELDS", "MESSAGES_FIELDS"]


# -- reading ----------------------------------------------------------------------------------

async def read_json(request: web.Request, ctx: RequestContext) -> dict:
    """The request body as a JSON object, within `server.max_body_mb`, `body_timeout` and
    `max_json_depth`; anything else is a 400 (408 for a body too slow, 413 for one too big)."""
    server = ctx.state.config.server
    if request.content_length is not None and request.content_length > server.max_body_bytes:
        raise PayloadTooLarge(f"Request body is larger than the limit of {server.max_body_mb:g} MB.")
    content = request.content
    try:
        if request.content_length is not None and content.total_bytes >= request.content_length:
            raw = await request.read()          # already buffered: no timer needed
        else:
            async with asyncio.timeout(server.body_timeout):
                raw = await request.read()
    except TimeoutError:
        raise InvalidRequest("Timed out reading the request body.", code="body_timeout", status=408)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body is larger than the limit of {server.max_body_mb:g} MB.")
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    limit = server.max_json_depth
    if raw.count(b"{") + raw.count(b"[") > limit and json_depth(body, limit) > limit:
        raise InvalidRequest(f"The request body nests deeper than {limit} levels.", code="json_too_deep")
    return body


def json_depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, giving up (returning limit + 1) past the limit."""
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(x for x in v.values() if isinstance(x, (dict, list)))
            elif isinstance(v, list):
                nxt.extend(x for x in v if isinstance(x, (dict, list)))
        level = nxt
    return depth


# -- the tables (after the openai package's types) ---------------------------------------------

class Messages(ListOf):
    """Chat messages: a quick pass when every message is just a plain role and text content
    (most requests), else the full check of each."""
    __slots__ = ()
    PLAIN = frozenset({"system", "developer", "user", "assistant"})

    def __call__(self, value) -> None:
        if value.__class__ is list and value:
            plain = self.PLAIN
            for m in value:
                if not (m.__class__ is dict and len(m) == 2 and m.get("content").__class__ is str
                        and (role := m.get("role")).__class__ is str and role in plain):
                    break
            else:
                return
        ListOf.__call__(self, value)


STR, BOOL, OBJ, ANY = Str(), Bool(), Obj(), Any_()
STRS = ListOf(STR)
TEXT_PART = Obj({"text": STR}, required=("text",))
PART = Tagged("type", {
    "text": TEXT_PART,
    "image_url": Obj({"image_url": Obj({"url": STR, "detail": STR}, required=("url",))}, required=("image_url",)),
    "input_audio": Obj({"input_audio": Obj({"data": STR, "format": STR}, required=("data", "format"))},
                       required=("input_audio",)),
    "file": Obj({"file": Obj({"file_data": STR, "file_id": STR, "filename": STR})}, required=("file",)),
    "refusal": Obj({"refusal": STR}, required=("refusal",)),
}, other=ANY)
CONTENT = ByType("a string or an array of content parts", str=STR, list=ListOf(PART))
TOOL_CALL = Tagged("type", {
    "function": Obj({"id": STR, "function": Obj({"name": STR, "arguments": STR}, required=("name", "arguments"))},
                    required=("function",)),
}, other=ANY)
_ROLE_NAME = {"name": STR}
MESSAGE = Tagged("role", {
    "system": Obj({"content": CONTENT, **_ROLE_NAME}, required=("content",)),
    "developer": Obj({"content": CONTENT, **_ROLE_NAME}, required=("content",)),
    "user": Obj({"content": CONTENT, **_ROLE_NAME}, required=("content",)),
    "assistant": Obj({"content": CONTENT, "refusal": STR, "tool_calls": ListOf(TOOL_CALL),
                      "function_call": Obj({"name": STR, "arguments": STR}), "audio": Obj({"id": STR}),
                      **_ROLE_NAME}),
    "tool": Obj({"content": CONTENT, "tool_call_id": STR}, required=("content", "tool_call_id")),
    "function": Obj({"content": Nullable(STR), "name": STR}, required=("content", "name")),
})
FUNCTION = Obj({"name": STR, "description": STR, "parameters": OBJ, "strict": BOOL}, required=("name",))
TOOL = Tagged("type", {
    "function": Obj({"function": FUNCTION}, required=("function",)),
    "custom": Obj({"custom": Obj({"name": STR, "description": STR, "format": OBJ}, required=("name",))},
                  required=("custom",)),
}, other=ANY)
NAMED = Obj({"name": STR}, required=("name",))
TOOL_CHOICE = ByType("a string or an object", str=Enum("none", "auto", "required"), dict=Tagged("type", {
    "function": Obj({"function": NAMED}, required=("function",)),
    "custom": Obj({"custom": NAMED}, required=("custom",)),
    "allowed_tools": Obj({"allowed_tools": Obj({"mode": Enum("auto", "required"), "tools": ListOf(OBJ)},
                                               required=("mode", "tools"))}, required=("allowed_tools",)),
}, other=ANY))
RESPONSE_FORMAT = Tagged("type", {
    "text": OBJ, "json_object": OBJ,
    "json_schema": Obj({"json_schema": Obj({"name": STR, "description": STR, "schema": OBJ, "strict": BOOL})},
                       required=("json_schema",)),
})
PENALTY = Num(-2, 2)

CHAT_FIELDS = Obj({        # `model` is checked by check_chat_body (a preset may stand for it)
    "messages": Messages(MESSAGE, min_len=1),
    "temperature": Num(0, 2),
    "top_p": Num(0, 1),
    "n": Int(1, 128),
    "max_tokens": Int(1),
    "max_completion_tokens": Int(1),
    "stop": ByType("a string or an array of strings", str=STR, list=STRS),
    "presence_penalty": PENALTY,
    "frequency_penalty": PENALTY,
    "logit_bias": MapOf(Int(-100, 100)),
    "logprobs": BOOL,
    "top_logprobs": Int(0, 20),
    "seed": Int(),
    "stream": BOOL,
    "stream_options": Obj({"include_usage": BOOL, "include_obfuscation": BOOL}),
    "tools": ListOf(TOOL),
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": BOOL,
    "functions": ListOf(FUNCTION),
    "function_call": ByType("a string or an object", str=Enum("none", "auto"), dict=NAMED),
    "response_format": RESPONSE_FORMAT,
    "reasoning_effort": Enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": Enum("low", "medium", "high"),
    "user": STR,
    "safety_identifier": STR,
    "prompt_cache_key": STR,
    "metadata": MapOf(STR),
    "modalities": ListOf(Enum("text", "audio")),
    "audio": Obj({"format": STR, "voice": ByType("a string or an object", str=STR, dict=Obj({"id": STR}))},
                 required=("format", "voice")),
    "prediction": Obj({"type": Enum("content"), "content": ByType("a string or an array of text parts", str=STR,
                                                                  list=ListOf(TEXT_PART))},
                      required=("type", "content")),
    "service_tier": STR,
    "store": BOOL,
    "web_search_options": OBJ,
})

TOKENS = ListOf(Int(0))
EMBEDDINGS_FIELDS = Obj({
    "model": STR,
    "input": ByType("a string or an array", str=STR, list=Uniform(
        "a non-empty array of strings, tokens or token arrays", str=STR, int=Int(0), list=TOKENS)),
    "encoding_format": Enum("float", "base64"),
    "dimensions": Int(1),
    "user": STR,
})

# /v1/messages: Anthropic's own fields its translation does not check (proxy/inbound/messages.py
# checks model, max_tokens, system, messages, stop_sequences, tools, tool_choice, thinking,
# output_config), and the OpenAI fields such a body may carry, passed on: checked as on
# /v1/chat/completions
MESSAGES_FIELDS = Obj({
    **{k: v for k, v in CHAT_FIELDS.fields.items()
       if k not in ("model", "messages", "max_tokens", "tools", "tool_choice")},
    "temperature": Num(0, 1),
    "top_p": Num(0, 1),
    "top_k": Int(0),
    "stream": BOOL,
    "metadata": Obj({"user_id": STR}),
    "service_tier": STR,
})


def check_chat_body(body: dict) -> None:
    """A Chat Completions body: `model` (or a `preset`) and `messages` present, every known
    field well typed."""
    model = body.get("model")
    if model is None and isinstance(body.get("preset"), str):
        body["model"] = model = ""       # the preset names the model
    elif model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not (model or body.get("preset")):
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    if body.get("messages") is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    check_top(body, CHAT_FIELDS)


def check_embeddings_body(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if body.get("input") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    check_top(body, EMBEDDINGS_FIELDS)
    if not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_value")


def check_messages_body(body: dict) -> None:
    """The fields of an Anthropic Messages body that its translation passes on unchecked."""
    check_top(body, MESSAGES_FIELDS)
