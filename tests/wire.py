"""Wire helpers shared by the test suites: a chat request body, two tool definitions, and the
`data:` payloads of an SSE body, parsed here independently of the gateway's own SSE code."""
from __future__ import annotations

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat_body(model: str = "gpt-4o-mini", text: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_data(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order (comment lines skipped; a multi-line
    `data:` field is joined with newlines)."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[len(b"data: "):] for ln in block.split(b"\n") if ln.startswith(b"data: ")]
        if lines:
            out.append(b"\n".join(lines))
    return out
