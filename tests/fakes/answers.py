"""Deterministic answering, shared by the fake upstreams: a model that echoes, calls tools for
the cities it is asked about, and fills JSON Schemas. Tokens are counted ~4 characters each."""
from __future__ import annotations

import re
from typing import Any

CITIES = ("Paris", "Tokyo", "London", "Berlin", "Rome", "Madrid", "Lisbon")
TOOL_ASK = re.compile(r"\b(call|use|invoke|run)\b.*\b(tool|function)\b|\bweather\b", re.I | re.S)


def tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def cities_in(text: str) -> list[str]:
    found = [(text.find(c), c) for c in CITIES if c in text]
    return [c for _, c in sorted(found)]


def scripted(script: dict, text: str, names: list[str]) -> tuple[str, dict] | None:
    """A scripted tool call: `script` maps a trigger text to (tool name, arguments); the first
    trigger found in the user's text whose tool is offered wins."""
    for trigger, (name, arguments) in script.items():
        if trigger in text and name in names:
            return name, arguments
    return None


def asks_for_tool(text: str, names: list[str]) -> bool:
    return bool(TOOL_ASK.search(text)) or any(n and n in text for n in names)


def sample(schema: Any, fill: str, defs: dict | None = None) -> Any:
    """A value that satisfies a (simple) JSON Schema; strings are `fill`."""
    if not isinstance(schema, dict):
        return fill
    defs = {**(defs or {}), **(schema.get("$defs") or schema.get("definitions") or {})}
    if "$ref" in schema:
        return sample(defs[schema["$ref"].rsplit("/", 1)[-1]], fill, defs)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return sample(schema[key][0], fill, defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if not props:
            return {"echo": fill}
        return {name: sample(sub, fill, defs) for name, sub in props.items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"}, fill, defs)]
    return {"string": fill, "integer": 21, "number": 21.5, "boolean": True, "null": None}.get(kind, fill)


def attachments_note(images: int, documents: int) -> str:
    return f" [images={images} documents={documents}]" if images or documents else ""


def split(text: str, n: int) -> list[str]:
    if not text:
        return []
    size = -(-len(text) // max(1, min(n, len(text))))
    return [text[i:i + size] for i in range(0, len(text), size)]
