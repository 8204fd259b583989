"""An offline estimate of a Messages request's input tokens, for /v1/messages/count_tokens on
targets that are not Claude (a Claude target's count comes from Anthropic itself).

No well-kept tokenizer package works offline for the model families behind the gateway
(tiktoken downloads its BPE files at run time; the one PyPI package bundling a file ships only
cl100k_base, not the o200k_base of current OpenAI models), so the count is an estimate:
  - text (system, message text, tool-use input and tool-result text as JSON/text, tool
    definitions as JSON, thinking text): 1 token per 4 characters, rounded up, per piece;
  - 3 tokens per message and per system block, 3 for the request;
  - an image: 1600 tokens (Anthropic's figure for a ~1.15-megapixel image, the size it scales to);
  - a document: base64 PDFs 1 token per 3 bytes of base64 (~2.2 per byte of PDF, an upper-side
    guess), text documents as text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from proxy.context import JSONReply

if TYPE_CHECKING:
    from proxy.context import RequestContext

CHARS_PER_TOKEN = 4
PER_MESSAGE = 3
IMAGE_TOKENS = 1600


def _text(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _block(block: Any) -> int:
    if isinstance(block, str):
        return _text(block)
    if not isinstance(block, dict):
        return _text(orjson.dumps(block).decode())
    kind = block.get("type")
    if kind == "text":
        return _text(str(block.get("text") or ""))
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        data = source.get("data") if isinstance(source, dict) else None
        if isinstance(data, str):
            return -(-len(data) // 3) if source.get("type") == "base64" else _text(data)
        return IMAGE_TOKENS
    if kind == "thinking":
        return _text(str(block.get("thinking") or ""))
    if kind == "tool_use":
        return _text(str(block.get("name") or "")) + _text(orjson.dumps(block.get("input") or {}).decode())
    if kind == "tool_result":
        return _content(block.get("content") or "")
    return _text(orjson.dumps(block).decode())


def _content(content: Any) -> int:
    if isinstance(content, list):
        return sum(_block(b) for b in content)
    return _block(content)


def estimate(body: dict) -> int:
    """The estimated input tokens of an Anthropic Messages request body (see the module doc)."""
    total = 3
    system = body.get("system")
    if system:
        blocks = system if isinstance(system, list) else [system]
        total += sum(PER_MESSAGE + _block(b) for b in blocks)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += PER_MESSAGE + _content(message.get("content") or "")
    for tool in body.get("tools") or ():
        total += _text(orjson.dumps(tool).decode())
    return total


async def estimate_reply(ctx: "RequestContext", provider, body: dict) -> JSONReply:
    """count_tokens on a target that is not Claude: {"input_tokens": estimate}."""
    return JSONReply({"input_tokens": estimate(body)})
