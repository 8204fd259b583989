"""Request bodies: read (size, time, JSON, nesting) and checked at the edge.

The fields OpenAI's API defines for Chat Completions and Embeddings (the `openai` package's
`types/chat/completion_create_params.py`, `types/embedding_create_params.py` and the message,
tool and content-part types they name) are checked against the tables CHAT_FIELDS,
EMBEDDINGS_FIELDS and MESSAGES_FIELDS (the Anthropic-only fields of /v1/messages): a wrong JSON
type, an unknown enum value or an out-of-range number is a 400 `invalid_request_error` whose
`param` is the path of the value (`messages[1].role`, `tools[0].function.name`). Checks are
shallow where a provider looks deeper (a JSON schema is an object; what is in it is the
provider's business); `null` is accepted wherever a field is optional. Fields not in a table
pass through unchanged, and so do unknown tool and content-part types: other providers define
their own. Enums are checked where the gateway acts on the value (roles, tool_choice,
response_format, reasoning_effort, modalities), not where providers differ (service_tier).

A check is a small object called with the value; it raises `Bad` (only on the error path) and
each enclosing check adds its segment of the path on the way out.
"""
from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

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


# -- checks -----------------------------------------------------------------------------------

class Bad(Exception):
    """A value failed its check: the path below the field (built on the way out), the code
    (invalid_type, invalid_value, missing_required_parameter) and what was expected."""

    def __init__(self, code: str, expected: str, got: str = ""):
        super().__init__(expected)
        self.code, self.expected, self.got, self.path = code, expected, got, []

    def error(self, field: str) -> InvalidRequest:
        param = field + "".join(reversed(self.path))
        if self.code == "missing_required_parameter":
            message = f"Missing required parameter: '{param}'."
        elif self.code == "invalid_type":
            message = f"Invalid type for '{param}': expected {self.expected}, got {self.got}."
        else:
            message = f"Invalid value for '{param}': {self.got}; expected {self.expected}."
        return InvalidRequest(message, param=param, code=self.code)


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


def _bad_type(expected: str, value) -> Bad:
    return Bad("invalid_type", expected, _JSON_TYPES.get(type(value), type(value).__name__))


def _shown(value) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Check:
    __slots__ = ()
    what = "a value"

    def __call__(self, value) -> None:
        raise NotImplementedError


class Str(Check):
    __slots__ = ()
    what = "a string"

    def __call__(self, value) -> None:
        if value.__class__ is not str:
            raise _bad_type(self.what, value)


class Bool(Check):
    __slots__ = ()
    what = "a boolean"

    def __call__(self, value) -> None:
        if value is not True and value is not False:
            raise _bad_type(self.what, value)


class Num(Check):
    """A number (an integer when `integer`), within [lo, hi] when given. JSON true/false are not numbers."""
    __slots__ = ("lo", "hi", "integer", "what")

    def __init__(self, lo: float | None = None, hi: float | None = None, *, integer: bool = False):
        self.lo, self.hi, self.integer = lo, hi, integer
        self.what = "an integer" if integer else "a number"

    def __call__(self, value) -> None:
        cls = value.__class__
        if cls is not int and (self.integer or cls is not float):
            raise _bad_type(self.what, value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            bounds = (f"between {self.lo:g} and {self.hi:g}" if self.lo is not None and self.hi is not None
                      else f">= {self.lo:g}" if self.lo is not None else f"<= {self.hi:g}")
            raise Bad("invalid_value", f"{self.what} {bounds}", _shown(value))


def Int(lo: float | None = None, hi: float | None = None) -> Num:
    return Num(lo, hi, integer=True)


class Enum(Check):
    __slots__ = ("values", "what")

    def __init__(self, *values: str):
        self.values = frozenset(values)
        self.what = "one of " + ", ".join(repr(v) for v in values)

    def __call__(self, value) -> None:
        if value.__class__ is not str:
            raise _bad_type("a string", value)
        if value not in self.values:
            raise Bad("invalid_value", self.what, _shown(value))


class Any_(Check):
    """Anything, null included: a field whose shape is the provider's business."""
    __slots__ = ()

    def __call__(self, value) -> None:
        return None


class Nullable(Check):
    __slots__ = ("check", "what")

    def __init__(self, check: Check):
        self.check, self.what = check.__call__, check.what + " or null"

    def __call__(self, value) -> None:
        if value is not None:
            self.check(value)


class ListOf(Check):
    __slots__ = ("item", "min_len", "what")

    def __init__(self, item: Check, min_len: int = 0):
        self.item, self.min_len = item.__call__, min_len     # bound methods: the quickest to call
        self.what = "a non-empty array" if min_len else "an array"

    def __call__(self, value) -> None:
        if value.__class__ is not list:
            raise _bad_type(self.what, value)
        if len(value) < self.min_len:
            raise Bad("invalid_value", self.what, "an empty array")
        item = self.item
        i = 0
        try:
            for i, v in enumerate(value):      # noqa: B007  (i names the failing item)
                item(v)
        except Bad as bad:
            bad.path.append(f"[{i}]")
            raise


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


class MapOf(Check):
    """An object whose every value passes `value`."""
    __slots__ = ("value",)
    what = "an object"

    def __init__(self, value: Check):
        self.value = value.__call__

    def __call__(self, value) -> None:
        if value.__class__ is not dict:
            raise _bad_type(self.what, value)
        check, key = self.value, ""
        try:
            for key, v in value.items():      # noqa: B007
                check(v)
        except Bad as bad:
            bad.path.append(f".{key}")
            raise


class Obj(Check):
    """An object: the known keys checked (null passes for optional ones and Nullable required
    ones), `required` present; other keys pass."""
    __slots__ = ("fields", "calls", "required", "nullable")
    what = "an object"

    def __init__(self, fields: dict[str, Check] | None = None, required: tuple[str, ...] = ()):
        self.fields = fields or {}
        self.calls = {k: v.__call__ for k, v in self.fields.items()}
        self.required = required
        self.nullable = frozenset(k for k in required if isinstance(self.fields.get(k), Nullable))

    def __call__(self, body) -> None:
        if body.__class__ is not dict:
            raise _bad_type(self.what, body)
        for name in self.required:
            if body.get(name) is None and name not in self.nullable:
                bad = Bad("missing_required_parameter", "")
                bad.path.append(f".{name}")
                raise bad
        calls = self.calls
        name = ""
        try:
            for name, value in body.items():      # noqa: B007
                check = calls.get(name)
                if check is not None and value is not None:
                    check(value)
        except Bad as bad:
            bad.path.append(f".{name}")
            raise


class ByType(Check):
    """One check per JSON type (e.g. a string or an array of strings)."""
    __slots__ = ("by_type", "what")

    def __init__(self, what: str, **by_type: Check):
        names = {"str": str, "list": list, "dict": dict, "int": int}
        self.by_type = {names[k]: v.__call__ for k, v in by_type.items()}
        self.what = what

    def __call__(self, value) -> None:
        check = self.by_type.get(value.__class__)
        if check is None:
            raise _bad_type(self.what, value)
        check(value)


class Uniform(Check):
    """A non-empty array whose items are all of one JSON type, each checked by that type's check
    (OpenAI's `input`: strings, tokens or token arrays, not a mix)."""
    __slots__ = ("by_type", "what")

    def __init__(self, what: str, **by_type: Check):
        self.by_type = ByType(what, **by_type).by_type
        self.what = what

    def __call__(self, value) -> None:
        if value.__class__ is not list:
            raise _bad_type(self.what, value)
        if not value:
            raise Bad("invalid_value", self.what, "an empty array")
        cls = value[0].__class__
        check = self.by_type.get(cls)
        i = 0
        try:
            if check is None:
                raise _bad_type(self.what, value[0])
            for i, v in enumerate(value):      # noqa: B007
                if v.__class__ is not cls:
                    raise _bad_type(_JSON_TYPES[cls] + " like the first item", v)
                check(v)
        except Bad as bad:
            bad.path.append(f"[{i}]")
            raise


class Tagged(Check):
    """An object told apart by a string field (`type`, `role`): each variant's own check;
    an unknown tag is refused unless `other` (a check, e.g. Any_()) takes it."""
    __slots__ = ("tag", "variants", "other", "tag_enum")
    what = "an object"

    def __init__(self, tag: str, variants: dict[str, Check], other: Check | None = None):
        self.tag, self.other = tag, other
        self.variants = {k: v.__call__ for k, v in variants.items()}
        self.tag_enum = Enum(*variants)

    def __call__(self, value) -> None:
        if value.__class__ is not dict:
            raise _bad_type(self.what, value)
        kind = value.get(self.tag)
        check = self.variants.get(kind) if kind.__class__ is str else None
        if check is None:
            try:
                if kind is None:
                    raise Bad("missing_required_parameter", "")
                if kind.__class__ is not str or self.other is None:
                    self.tag_enum(kind)
            except Bad as bad:
                bad.path.append(f".{self.tag}")
                raise
            check = self.other
        check(value)


def check_top(body: dict, fields: Obj) -> None:
    """A request body's fields, a failure raised as the 400 naming the field's path."""
    try:
        fields(body)
    except Bad as bad:
        raise bad.error(bad.path.pop()[1:]) from None


# -- the tables (after the openai package's types) ---------------------------------------------

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
    **{k: v for k, v in CHAT_FIELDS.fields.items() if k not in ("model", "messages", "max_tokens", "tools", "tool_choice")},
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
