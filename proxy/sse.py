"""Bytes -> SSE events. No provider logic here.

`iter_events(content)` reads an aiohttp StreamReader (or any async iterator of byte chunks)
and yields `SSEEvent`s as soon as each blank-line-terminated event is complete. `raw` keeps
the event's exact bytes (terminator included) so pass-through providers can forward it
untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator


@dataclass(slots=True)
class SSEEvent:
    raw: bytes            # the event exactly as received, ending with a blank line
    event: str | None     # the `event:` field, if any
    data: bytes           # the `data:` lines joined with b"\n"

    @property
    def is_comment(self) -> bool:
        return self.event is None and not self.data


def parse_event(raw: bytes) -> SSEEvent:
    event = None
    data_lines = []
    for line in raw.splitlines():
        if not line or line[:1] == b":":
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return SSEEvent(raw, event, b"\n".join(data_lines))


async def iter_events(chunks: AsyncIterable[bytes], max_event_bytes: int = 8 * 1024 * 1024
                      ) -> AsyncIterator[SSEEvent]:
    """Split a byte stream into SSE events. Handles \\n\\n, \\r\\n\\r\\n and events split across
    chunks. Raises ValueError when one event grows beyond `max_event_bytes`."""
    buf = b""
    async for chunk in chunks:
        if not chunk:
            continue
        buf = buf + chunk if buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            raw, buf = buf[:end + 2], buf[end + 2:]
            yield parse_event(raw)
        if len(buf) > max_event_bytes:
            raise ValueError("SSE event exceeds the size limit")
    if buf.strip():
        yield parse_event(buf + b"\n\n")


def data_event(payload: bytes) -> bytes:
    """Frame JSON bytes as one SSE data event."""
    return b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
