"""Checks of JSON values, as data: small objects called with a value, composed into tables.

`Obj({"temperature": Num(0, 2), "stop": ByType(..., str=Str(), list=ListOf(Str()))})` checks
an object's known keys (null passes for optional ones; other keys pass). A check raises `Bad`
only on the error path; each enclosing check adds its segment of the path (`[1]`, `.role`) on
the way out, and `check_top` turns it into the 400 naming the field (`messages[1].role`).
Containers call their children's bound `__call__` (the quickest call CPython has for them).
"""
from __future__ import annotations

import orjson

from proxy.errors import InvalidRequest

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
