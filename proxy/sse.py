"""Bytes -> SSE events. No provider logic here.

`iter_batches(chunks)` reads an async iterator of byte chunks (an aiohttp StreamReader) and
yields, per chunk read, the list of `SSEEvent`s it completed — so a pass-through forwards
everything that arrived in one write. `iter_events` yields them one by one. `raw` keeps the
event's exact bytes (terminator included) so pass-through providers forward it untouched.

A stream's items (StreamReply.events) are bytes holding one or more complete events;
`split_events` takes such an item apart for consumers that look inside.
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
    if raw[:6] == b"data: " and raw.find(b"\n", 6) == len(raw) - 2:   # the common one-line event
        return SSEEvent(raw, None, raw[6:-2])
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


async def iter_batches(chunks: AsyncIterable[bytes], max_event_bytes: int = 8 * 1024 * 1024
                       ) -> AsyncIterator[list[SSEEvent]]:
    """Split a byte stream into SSE events, one list per chunk read (empty lists skipped).
    Handles \n\n, \r\n\r\n and events split across chunks. Raises ValueError when one
    event grows beyond `max_event_bytes`."""
    buf = b""
    async for chunk in chunks:
        if not chunk:
            continue
        buf = buf + chunk if buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            events.append(parse_event(buf[start:end + 2]))
            start = end + 2
        buf = buf[start:]
        if len(buf) > max_event_bytes:
            raise ValueError("SSE event exceeds the size limit")
        if events:
            yield events
    if buf.strip():
        yield [parse_event(buf + b"\n\n")]


async def iter_events(chunks: AsyncIterable[bytes], max_event_bytes: int = 8 * 1024 * 1024
                      ) -> AsyncIterator[SSEEvent]:
    """The events of `iter_batches`, one at a time."""
    async for batch in iter_batches(chunks, max_event_bytes):
        for event in batch:
            yield event


def split_events(blob: bytes) -> list[bytes]:
    """The complete events in a stream item (each ending with a blank line)."""
    if blob.count(b"\n\n") <= 1:
        return [blob]
    return [part + b"\n\n" for part in blob.split(b"\n\n") if part]


def data_event(payload: bytes) -> bytes:
    """Frame JSON bytes as one SSE data event."""
    return b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
