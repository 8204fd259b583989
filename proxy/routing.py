"""Pure model-name resolution: RouteTable + resolve(model, table) -> RouteMatch or a typed error.

Order (SPEC §3): presets are expanded earlier by the presets middleware; then an exact route
name; then a `:thinking[:low|medium|high]` suffix on a known name; then the longest wildcard
prefix (`openai/*` forwards the rest); else 404 model_not_found with the closest names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Mapping

from proxy.config import ModelRoute
from proxy.context import RouteMatch
from proxy.errors import InvalidRequest, ModelNotFound

EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True, slots=True)
class RouteTable:
    exact: Mapping[str, ModelRoute]
    wildcards: tuple[tuple[str, ModelRoute], ...]   # (prefix, route), longest prefix first

    @classmethod
    def build(cls, models: Mapping[str, ModelRoute]) -> "RouteTable":
        exact = {n: r for n, r in models.items() if not r.wildcard}
        wild = sorted(((n[:-1], r) for n, r in models.items() if r.wildcard), key=lambda p: -len(p[0]))
        return cls(exact, tuple(wild))

    def names(self) -> list[str]:
        return list(self.exact) + [p + "*" for p, _ in self.wildcards]


def resolve(model: str, table: RouteTable, allows: Callable[[str], bool] | None = None) -> RouteMatch:
    """The route for `model`, else ModelNotFound whose tip suggests close names (only those
    `allows` admits: a key is never told of models it may not use)."""
    route = table.exact.get(model)
    if route is not None:
        return RouteMatch(route, model)
    name, effort = split_thinking(model)
    route = table.exact.get(name)
    if route is not None:
        return RouteMatch(route, name, reasoning_effort=effort)
    for prefix, route in table.wildcards:
        if name.startswith(prefix) and len(name) > len(prefix):
            return RouteMatch(route, name, wildcard_rest=name[len(prefix):], reasoning_effort=effort)
    raise ModelNotFound(f"The model '{model}' does not exist or is not routed by this gateway.",
                        param="model", tip=closest_tip(name, table, allows))


def split_thinking(model: str) -> tuple[str, str | None]:
    base, sep, rest = model.partition(":thinking")
    if not sep:
        return model, None
    if rest == "":
        return base, "medium"
    if rest[:1] == ":" and rest[1:] in EFFORTS:
        return base, rest[1:]
    raise InvalidRequest(f"Invalid reasoning suffix in model '{model}'.", param="model",
                         tip="Use ':thinking', ':thinking:low', ':thinking:medium' or ':thinking:high'.")


def sendable_names(name: str, table: RouteTable) -> list[str]:
    """Names a client could send: the exact routes, and for each wildcard route its prefix with
    the rest of `name` after its first '/' (`opnai/gpt-4o` -> `openai/gpt-4o`), never a pattern."""
    _, slash, rest = name.partition("/")
    wild = [prefix + (rest if slash else name) for prefix, _ in table.wildcards]
    return list(table.exact) + [w for w in wild if not w.endswith("/")]


def closest_tip(name: str, table: RouteTable, allows: Callable[[str], bool] | None = None) -> str:
    names = [n for n in sendable_names(name, table) if allows is None or allows(n)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    if not close:
        lowered = name.lower()
        close = [n for n in names if lowered in n.lower() or n.lower() in lowered][:3]
    if close:
        return "Did you mean " + ", ".join(repr(c) for c in close) + "? GET /v1/models lists every model."
    return "GET /v1/models lists the models this key may use."
