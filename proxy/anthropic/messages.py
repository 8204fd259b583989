"""OpenAI messages and content parts -> Anthropic system blocks and alternating turns. Pure.

System/developer messages (anywhere) become top-level system blocks in order; consecutive turns of
one role are merged (tool results lead their user turn); `role: tool` -> tool_result blocks;
assistant tool_calls -> tool_use blocks; reasoning_details -> thinking / redacted_thinking blocks
placed first. Parts: text; image_url (https -> url source, data: -> base64, PDF -> document);
file (data: URL PDF or text -> document); input_audio -> 400. cache_control on parts is kept.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Mapping

import orjson

from proxy.errors import InvalidRequest

Block = dict[str, Any]
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


# --- messages ----------------------------------------------------------------------------

def convert_messages(messages: Any, caps: Mapping[str, bool]) -> tuple[list[Block], list[dict[str, Any]]]:
    """OpenAI messages -> (system blocks, alternating user/assistant turns)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array", param="messages")
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest("each message must be an object", param=path)
        role = msg.get("role")
        handler = _ROLES.get(role) if isinstance(role, str) else None
        if handler is None:
            raise InvalidRequest(f"unsupported role {msg.get('role')!r}", param=f"{path}.role")
        role, blocks = handler(msg, path, caps)
        if role == "system":
            system.extend(blocks)
        elif blocks and turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})
    for turn in turns:   # tool_result blocks must lead their user turn
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    _trim_prefill(turns)
    if not turns:
        raise InvalidRequest("`messages` needs at least one user or assistant message with content",
                             param="messages")
    return system, turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """A final assistant turn is a prefill; the API rejects trailing whitespace there."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    if content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()
        if not content[-1]["text"]:
            content.pop()
    if not content:
        turns.pop()


def _system(msg: dict[str, Any], path: str, caps: Mapping[str, bool]) -> tuple[str, list[Block]]:
    content = msg.get("content")
    if isinstance(content, str):
        return "system", [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("system message content must be a string or text parts", param=f"{path}.content")
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidRequest("system messages take text parts only", param=f"{path}.content[{j}]")
        block = _text_part(part, f"{path}.content[{j}]", caps)
        if block is not None:
            blocks.append(block)
    return "system", blocks


def _user(msg: dict[str, Any], path: str, caps: Mapping[str, bool]) -> tuple[str, list[Block]]:
    return "user", _parts(msg.get("content"), f"{path}.content", caps)


def _tool(msg: dict[str, Any], path: str, caps: Mapping[str, bool]) -> tuple[str, list[Block]]:
    tool_call_id = msg.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise InvalidRequest("tool messages need `tool_call_id`", param=f"{path}.tool_call_id")
    block: Block = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = _parts(msg.get("content"), f"{path}.content", caps)
    if content:
        block["content"] = content
    return "user", [block]


def _assistant(msg: dict[str, Any], path: str, caps: Mapping[str, bool]) -> tuple[str, list[Block]]:
    blocks = reasoning_blocks(msg.get("reasoning_details"), f"{path}.reasoning_details")
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal"):
                raise InvalidRequest("assistant messages take text and refusal parts only",
                                     param=f"{path}.content[{j}]")
            block = _text_part({"text": part.get("refusal"), **part} if kind == "refusal" else part,
                               f"{path}.content[{j}]", caps)
            if block is not None:
                blocks.append(block)
    elif content is not None:
        raise InvalidRequest("message content must be a string or an array of parts", param=f"{path}.content")
    tool_calls = msg.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise InvalidRequest("`tool_calls` must be an array", param=f"{path}.tool_calls")
    for j, call in enumerate(tool_calls):
        blocks.append(_tool_use(call, f"{path}.tool_calls[{j}]"))
    return "assistant", blocks


_ROLES: dict[str, Callable[[dict[str, Any], str, Mapping[str, bool]], tuple[str, list[Block]]]] = {
    "system": _system, "developer": _system, "user": _user, "assistant": _assistant, "tool": _tool,
}


def _tool_use(call: Any, path: str) -> Block:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise InvalidRequest("tool calls must be function calls", param=path)
    call_id, name = call.get("id"), fn.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("tool calls need an `id`", param=f"{path}.id")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("tool calls need `function.name`", param=f"{path}.function.name")
    args = fn.get("arguments")
    if isinstance(args, dict):
        data: Any = args
    elif args is None or (isinstance(args, str) and not args.strip()):
        data = {}
    else:
        try:
            data = orjson.loads(args)
        except (orjson.JSONDecodeError, TypeError):
            raise InvalidRequest(f"tool call arguments are not valid JSON: {str(args)[:80]!r}",
                                 param=f"{path}.function.arguments") from None
    if not isinstance(data, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=f"{path}.function.arguments")
    return {"type": "tool_use", "id": call_id, "name": name, "input": data}


def reasoning_blocks(details: Any, path: str) -> list[Block]:
    """reasoning_details -> thinking / redacted_thinking blocks. Fragments sharing a type and an
    `index` (as streamed) are merged; thinking without a signature cannot be replayed and is
    dropped; details of other providers' formats are skipped."""
    if not details:
        return []
    if not isinstance(details, list):
        raise InvalidRequest("`reasoning_details` must be an array", param=path)
    blocks: list[Block] = []
    last_key: tuple | None = None
    for k, d in enumerate(details):
        if not isinstance(d, dict):
            raise InvalidRequest("each reasoning detail must be an object", param=f"{path}[{k}]")
        fmt, kind = d.get("format"), d.get("type")
        if fmt is not None and not str(fmt).startswith("anthropic"):
            continue
        key = (kind, d["index"]) if d.get("index") is not None else None
        if kind == "reasoning.text":
            text, sig = d.get("text") or "", d.get("signature") or ""
            if not isinstance(text, str) or not isinstance(sig, str):
                raise InvalidRequest("reasoning text and signature must be strings", param=f"{path}[{k}]")
            if key is not None and key == last_key:
                blocks[-1]["thinking"] += text
                blocks[-1]["signature"] = sig or blocks[-1]["signature"]
            else:
                blocks.append({"type": "thinking", "thinking": text, "signature": sig})
        elif kind == "reasoning.encrypted":
            if not isinstance(d.get("data"), str) or not d["data"]:
                raise InvalidRequest("encrypted reasoning needs `data`", param=f"{path}[{k}].data")
            blocks.append({"type": "redacted_thinking", "data": d["data"]})
        last_key = key
    return [b for b in blocks if b["type"] != "thinking" or b["signature"]]


# --- content parts -----------------------------------------------------------------------

def _parts(content: Any, path: str, caps: Mapping[str, bool]) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or an array of parts", param=path)
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        convert = _PARTS.get(kind) if isinstance(kind, str) else None
        if convert is None:
            raise InvalidRequest(f"unsupported content part type {kind!r}", param=f"{path}[{j}]")
        block = convert(part, f"{path}[{j}]", caps)
        if block is not None:
            blocks.append(block)
    return blocks


def _with_cache(block: Block, part: dict[str, Any]) -> Block:
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _text_part(part: dict[str, Any], path: str, caps: Mapping[str, bool]) -> Block | None:
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest("text parts need a string `text`", param=f"{path}.text")
    return _with_cache({"type": "text", "text": text}, part) if text else None


def _media_block(media_type: str, source: Block, path: str, caps: Mapping[str, bool]) -> Block:
    if media_type in IMAGE_TYPES:
        if caps.get("vision") is False:
            raise InvalidRequest("this model does not accept images", param=path, code="unsupported_content")
        return {"type": "image", "source": source}
    if media_type == "application/pdf":
        if caps.get("pdf") is False:
            raise InvalidRequest("this model does not accept PDF documents", param=path, code="unsupported_content")
        return {"type": "document", "source": source}
    raise InvalidRequest(f"unsupported media type {media_type!r}; Claude takes image/jpeg, image/png, "
                         "image/gif, image/webp and application/pdf", param=path, code="unsupported_content")


def parse_data_url(url: str, path: str) -> tuple[str, str]:
    """`data:<media type>;base64,<data>` -> (media type, base64 data)."""
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or "base64" not in params[1:] or not data:
        raise InvalidRequest("data: URLs must be base64-encoded (data:<type>;base64,<data>)", param=path)
    media_type = params[0].strip().lower()
    return ("image/jpeg" if media_type == "image/jpg" else media_type), data


def _image_part(part: dict[str, Any], path: str, caps: Mapping[str, bool]) -> Block:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("image_url parts need `image_url.url`", param=f"{path}.image_url")
    if url.startswith("data:"):
        media_type, data = parse_data_url(url, f"{path}.image_url.url")
        block = _media_block(media_type, {"type": "base64", "media_type": media_type, "data": data}, path, caps)
    elif url.startswith(("https://", "http://")):
        pdf = url.lower().split("?", 1)[0].endswith(".pdf")
        block = _media_block("application/pdf" if pdf else "image/jpeg", {"type": "url", "url": url}, path, caps)
    else:
        raise InvalidRequest("image_url must be an https:// or data: URL", param=f"{path}.image_url.url")
    return _with_cache(block, part)


def _file_part(part: dict[str, Any], path: str, caps: Mapping[str, bool]) -> Block:
    file = part.get("file")
    if not isinstance(file, dict):
        raise InvalidRequest("file parts need a `file` object", param=f"{path}.file")
    data, filename = file.get("file_data"), file.get("filename")
    if not isinstance(data, str) or not data:
        raise InvalidRequest("file parts need `file_data` (a base64 data: URL); uploaded file_id references "
                             "are not portable to Claude", param=f"{path}.file")
    if data.startswith("data:"):
        media_type, data = parse_data_url(data, f"{path}.file.file_data")
    elif isinstance(filename, str) and filename.lower().endswith((".pdf", ".txt")):
        media_type = "application/pdf" if filename.lower().endswith(".pdf") else "text/plain"
    else:
        raise InvalidRequest("file_data must be a data: URL such as data:application/pdf;base64,...",
                             param=f"{path}.file.file_data")
    if media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest("text/plain file_data is not valid base64 UTF-8", param=f"{path}.file") from None
        block: Block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    else:
        block = _media_block(media_type, {"type": "base64", "media_type": media_type, "data": data}, path, caps)
    if isinstance(filename, str) and filename and block["type"] == "document":
        block["title"] = filename
    return _with_cache(block, part)


def _audio_part(part: dict[str, Any], path: str, caps: Mapping[str, bool]) -> Block:
    raise InvalidRequest("Claude models do not accept audio input (input_audio)", param=path,
                         code="unsupported_content")


_PARTS: dict[str, Callable[[dict[str, Any], str, Mapping[str, bool]], Block | None]] = {
    "text": _text_part, "image_url": _image_part, "file": _file_part, "input_audio": _audio_part,
}


