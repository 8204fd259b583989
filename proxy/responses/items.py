"""Responses input items -> chat messages (pure), and the reasoning codec.

Items
    message user/system/developer -> user/system/system message; input_text -> text part,
                                    input_image -> image_url part, input_file -> file part
    message assistant            -> assistant message (output_text / refusal text)
    function_call                -> tool_calls on the assistant message
    custom_tool_call             -> the same, arguments {"input": input}
    function_call_output, custom_tool_call_output -> role tool message
    reasoning                    -> reasoning_details of the next assistant message, from its
                                    encrypted_content (the gateway's own encoding, see
                                    encode_reasoning); a reasoning item without it is skipped
"""
from __future__ import annotations

import base64
from typing import Any

import orjson

from proxy.errors import InvalidRequest

__all__ = ["to_messages", "input_items", "chat_name", "encode_reasoning", "decode_reasoning"]

REASONING_PREFIX = "mw1:"     # encrypted_content the gateway wrote (base64url JSON reasoning_details)


def encode_reasoning(details: list) -> str:
    return REASONING_PREFIX + base64.urlsafe_b64encode(orjson.dumps(details)).decode()


def decode_reasoning(blob: Any) -> list | None:
    """reasoning_details from an encrypted_content the gateway wrote; None for anything else."""
    if not isinstance(blob, str) or not blob.startswith(REASONING_PREFIX):
        return None
    try:
        details = orjson.loads(base64.urlsafe_b64decode(blob[len(REASONING_PREFIX):]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return details if isinstance(details, list) else None


def chat_name(namespace: str | None, name: str) -> str:
    return f"{namespace}__{name}" if namespace else name


def input_items(value: Any) -> list[dict]:
    """`input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input",
                             code="invalid_type")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"'input[{i}]' must be an object.", param=f"input[{i}]", code="invalid_type")
        if "type" not in item and "role" in item:
            item = {"type": "message", **item}
        if item.get("type") == "message" and isinstance(item.get("content"), str):   # stored as OpenAI lists it
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item = {**item, "content": [{"type": part, "text": item["content"]}]}
        out.append(item)
    return out


# -- messages ----------------------------------------------------------------------------------

def to_messages(items: list[dict], where: str, reverse: dict) -> list[dict]:
    out: list[dict] = []
    open_: dict | None = None       # the assistant message being built from consecutive items
    for i, item in enumerate(items):
        param = f"{where}[{i}]"
        kind = item.get("type")
        if kind == "message" and item.get("role") == "assistant":
            if open_ is None or open_.get("content") is not None or open_.get("tool_calls"):
                open_ = {"role": "assistant", "content": None}
                out.append(open_)
            open_["content"] = _assistant_text(item.get("content"), param)
        elif kind == "message":
            open_ = None
            out.append(_user_side(item, param))
        elif kind in ("function_call", "custom_tool_call"):
            if open_ is None:
                open_ = {"role": "assistant", "content": None}
                out.append(open_)
            open_.setdefault("tool_calls", []).append(_call(item, param, reverse))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            open_ = None
            out.extend(_call_output(item, param))
        elif kind == "reasoning":
            details = decode_reasoning(item.get("encrypted_content"))
            if not details:
                continue
            if open_ is None or open_.get("content") is not None or open_.get("tool_calls"):
                open_ = {"role": "assistant", "content": None}
                out.append(open_)
            open_.setdefault("reasoning_details", []).extend(details)
        else:
            raise InvalidRequest(f"Input items of type {kind!r} are not supported by this gateway.",
                                 param=f"{param}.type", code="unsupported_item")
    return [m for m in out if m["role"] != "assistant" or m.get("content") is not None or m.get("tool_calls")
            or m.get("reasoning_details")]


def _assistant_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{param}.content' must be a string or an array.", param=f"{param}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text", "text"):
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        else:
            raise InvalidRequest(f"Assistant content parts of type {kind!r} are not supported.",
                                 param=f"{param}.content[{j}].type")
    return "".join(texts)


def _user_side(item: dict, param: str) -> dict:
    role = item.get("role")
    if role not in ("user", "system", "developer"):
        raise InvalidRequest(f"'{param}.role' must be user, system, developer or assistant.", param=f"{param}.role")
    role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{param}.content' must be a string or an array.", param=f"{param}.content")
    parts = [_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    if role == "system" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts if p["type"] == "text")}
    return {"role": role, "content": parts}


def _part(part: Any, param: str) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest("input_image needs an 'image_url' (file ids are not supported).",
                                 param=f"{param}.image_url")
        image = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data") or part.get("file_url")
        if not isinstance(data, str) or not data:
            raise InvalidRequest("input_file needs 'file_data' or 'file_url' (file ids are not supported).",
                                 param=f"{param}.file_data")
        if not data.startswith(("data:", "http://", "https://")):
            data = "data:application/pdf;base64," + data
        return {"type": "file", "file": {"filename": part.get("filename") or "document.pdf", "file_data": data}}
    raise InvalidRequest(f"Content parts of type {kind!r} are not supported.", param=f"{param}.type")


def _call(item: dict, param: str, reverse: dict) -> dict:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{param}.name' is required.", param=f"{param}.name")
    namespace = item.get("namespace")
    upstream = reverse.get((namespace, name)) or chat_name(namespace, name)
    arguments = item.get("arguments")
    if item.get("type") == "custom_tool_call":
        arguments = orjson.dumps({"input": item.get("input") or ""}).decode()
    elif not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": upstream, "arguments": arguments}}


def _call_output(item: dict, param: str) -> list[dict]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
    output = item.get("output")
    if isinstance(output, str):
        return [{"role": "tool", "tool_call_id": call_id, "content": output}]
    if not isinstance(output, list):
        raise InvalidRequest(f"'{param}.output' must be a string or an array.", param=f"{param}.output")
    parts = [_part(p, f"{param}.output[{j}]") for j, p in enumerate(output)]
    text = "".join(p["text"] for p in parts if p["type"] == "text")
    rest = [p for p in parts if p["type"] != "text"]
    out = [{"role": "tool", "tool_call_id": call_id, "content": text}]
    if rest:                    # chat tool messages are text-only: images and files follow as a user turn
        out.append({"role": "user", "content": rest})
    return out
