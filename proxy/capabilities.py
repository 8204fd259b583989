"""What a model can take: the route's `capabilities` over its provider type's defaults. A
request using something the model cannot do gets a clear 400, never a silently ignored field."""
from __future__ import annotations

from proxy.errors import InvalidRequest

NAMES = ("vision", "tools", "structured_outputs", "reasoning", "prompt_caching", "pdf", "audio")


def effective(route, provider_type_defaults: dict) -> dict[str, bool]:
    caps = dict(provider_type_defaults)
    caps.update(route.capabilities)
    return {k: caps.get(k, False) for k in NAMES}


def check(body: dict, caps: dict[str, bool], model: str) -> None:
    """Raise InvalidRequest naming the field when the body needs a capability the model lacks."""
    if not caps["tools"] and body.get("tools"):
        _refuse(model, "tools", "tools")
    fmt = body.get("response_format")
    if not caps["structured_outputs"] and isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        _refuse(model, "structured outputs (response_format)", "response_format")
    effort = body.get("reasoning_effort")
    if not caps["reasoning"] and effort not in (None, "none"):
        _refuse(model, "reasoning (reasoning_effort or a :thinking suffix)", "reasoning_effort")
    if caps["vision"] and caps["pdf"] and caps["audio"]:
        return
    for i, msg in enumerate(body.get("messages") or ()):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part_kind(part)
            if kind is not None and not caps[kind]:
                _refuse(model, {"vision": "images", "pdf": "PDF documents", "audio": "audio input"}[kind],
                        f"messages[{i}].content[{j}]")


def part_kind(part) -> str | None:
    if not isinstance(part, dict):
        return None
    t = part.get("type")
    if t == "image_url":
        url = (part.get("image_url") or {}).get("url", "") if isinstance(part.get("image_url"), dict) else ""
        return "pdf" if isinstance(url, str) and url.startswith("data:application/pdf") else "vision"
    if t == "file":
        return "pdf"
    if t == "input_audio":
        return "audio"
    return None


def _refuse(model: str, what: str, param: str) -> None:
    raise InvalidRequest(f"Model '{model}' does not support {what}.", param=param, code="unsupported_capability",
                         tip="GET /v1/models shows each model's capabilities.")
