"""Chat completion -> Responses `response` object (pure).

`shell(...)` is the response object before any output (status in_progress), built from the
request; `output_items(message, ...)` turns a chat message into output items; `finish(...)`
fills status, output and usage.

    reasoning_content / reasoning_details -> one `reasoning` item first: summary text = the
                                           reasoning text; encrypted_content = the details
                                           (signatures), encoded (request.encode_reasoning)
    content / refusal                    -> `message` item, `output_text` / `refusal` part
    tool_calls                           -> one `function_call` item each (namespace split back), or
                                           `custom_tool_call` (input = the `input` argument)
    finish_reason length / content_filter -> status incomplete, incomplete_details.reason
                                           max_output_tokens / content_filter; else completed
    usage                                -> input_tokens (= prompt_tokens, cached included),
                                           input_tokens_details {cached_tokens, cache_write_tokens},
                                           output_tokens, output_tokens_details.reasoning_tokens,
                                           total_tokens, cost
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from proxy.responses.items import encode_reasoning

__all__ = ["new_id", "reasoning_id", "response_of", "shell", "output_items", "finish", "usage", "status_of",
           "merge_details", "public"]

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def reasoning_id(response_id: str, index: int) -> str:
    """A reasoning item's id names its response (rs_<response hex>_<output index>), so an item
    sent back by id alone is found in the stored response (proxy/responses/endpoint.py)."""
    return f"rs_{response_id.removeprefix('resp_')}_{index}"


def response_of(item_id: str) -> str | None:
    """The id of the response a gateway-made reasoning item id names, or None."""
    base, sep, index = item_id[3:].rpartition("_") if item_id.startswith("rs_") else ("", "", "")
    return f"resp_{base}" if sep and base and index.isdigit() else None


def shell(body: dict, response_id: str, model: str, dropped: tuple[str, ...] = ()) -> dict:
    """The response object as the request describes it, before any output."""
    tools = [t for t in body.get("tools") or () if not (isinstance(t, dict) and t.get("type") in dropped)]
    reasoning = body.get("reasoning") or None
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": model, "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (reasoning or {}).get("effort"), "summary": (reasoning or {}).get("summary")},
        "store": body.get("store", True), "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_p": body.get("top_p"),
        "truncation": "disabled", "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def merge_details(details: list) -> list:
    """Streamed reasoning_details fragments (same type and index) folded into whole details."""
    out: list[dict] = []
    for d in details:
        if not isinstance(d, dict):
            continue
        last = out[-1] if out else None
        if last is not None and last.get("type") == d.get("type") and last.get("index") == d.get("index"):
            for key, value in d.items():
                if key in ("text", "data", "summary") and isinstance(value, str):
                    last[key] = (last.get(key) or "") + value
                elif value is not None:
                    last[key] = value
        else:
            out.append(dict(d))
    return out


def reasoning_text(message: dict) -> str:
    text = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(text, str) and text:
        return text
    return "".join(d.get("text") or d.get("summary") or "" for d in message.get("reasoning_details") or ()
                   if isinstance(d, dict))


def reasoning_item(item_id: str, text: str, details: list, status: str = "completed") -> dict:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if text else [],
            "encrypted_content": encode_reasoning(details) if details else None, "status": status}


def message_item(item_id: str, text: str | None, refusal: str | None = None, status: str = "completed") -> dict:
    content: list[dict] = []
    if text is not None:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, names: dict,
              status: str = "completed") -> dict:
    namespace, plain, kind = names.get(name, (None, name, "function"))
    if kind == "custom":
        item = {"id": item_id.replace("fc_", "ctc_", 1), "type": "custom_tool_call", "status": status,
                "call_id": call_id, "name": plain, "input": custom_input(arguments)}
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": plain,
                "arguments": arguments}
    if namespace:
        item["namespace"] = namespace
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's free-form input from the one-string-argument call the model made."""
    try:
        parsed = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments
    return parsed.get("input", "") if isinstance(parsed, dict) and isinstance(parsed.get("input"), str) else arguments


def output_items(message: dict, names: dict, status: str = "completed", response_id: str = "") -> list[dict]:
    items: list[dict] = []
    details = merge_details(message.get("reasoning_details") or [])
    text = reasoning_text(message)
    if text or details:
        items.append(reasoning_item(reasoning_id(response_id, 0) if response_id else new_id("rs"), text, details))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if content or message.get("refusal") or not message.get("tool_calls"):
        items.append(message_item(new_id("msg"), content or ("" if not message.get("refusal") else None),
                                  message.get("refusal"), status))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        items.append(call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "",
                               fn.get("arguments") or "", names))
    return items


def usage(u: dict | None, cost: float | None) -> dict:
    u = u or {}
    ptd = u.get("prompt_tokens_details") or {}
    ctd = u.get("completion_tokens_details") or {}
    prompt, completion = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": ptd.get("cached_tokens") or 0,
                                 "cache_write_tokens": ptd.get("cache_write_tokens") or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": ctd.get("reasoning_tokens") or 0},
        "total_tokens": prompt + completion}
    cost = u.get("cost") if cost is None else cost
    if cost is not None:
        out["cost"] = cost
    return out


def status_of(finish_reason: str | None) -> tuple[str, dict | None]:
    reason = INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def finish(response: dict, output: list[dict], finish_reason: str | None, usage_: dict | None) -> dict:
    status, details = status_of(finish_reason)
    response.update(status=status, incomplete_details=details, output=output, usage=usage_)
    if status == "completed":
        response["completed_at"] = int(time.time())
    return response


def from_completion(response: dict, completion: dict, names: dict, cost: float | None) -> dict:
    choice = (completion.get("choices") or [{}])[0]
    finish_reason = choice.get("finish_reason")
    status = "incomplete" if finish_reason in INCOMPLETE else "completed"
    items = output_items(choice.get("message") or {}, names, status, response.get("id") or "")
    return finish(response, items, finish_reason, usage(completion.get("usage"), cost))


def public(response: dict, include_encrypted: bool) -> dict:
    """The object a client sees: reasoning items keep encrypted_content only when asked for."""
    if include_encrypted or not any(i.get("type") == "reasoning" for i in response.get("output") or ()):
        return response
    output = [{**i, "encrypted_content": None} if i.get("type") == "reasoning" else i for i in response["output"]]
    return {**response, "output": output}
