"""Bytes -> SSE events. No provider logic here.

`iter_batches(chunks)` reads an async iterator of byte chunks (an aiohttp StreamReader) and
yields, per chunk read, the list of `SSEEvent`s it completed — so a pass-through forwards
everything that arrived in one write. `iter_events` yields them one by one. `data_batches`
reads an upstream stream with the idle rule (only data events count as activity). `raw` keeps the
event's exact bytes (terminator included) so pass-through providers forward it untouched.

A stream's items (StreamReply.events) are bytes holding one or more complete events;
`split_events` takes such an item apart for consumers that look inside.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable

MAX_EVENT_BYTES = 8 * 1024 * 1024


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


class EventSplitter:
    """Bytes in, complete events out. Handles \n\n, \r\n\r\n and events split across chunks;
    `feed` raises ValueError when one event grows beyond `max_event_bytes`."""

    __slots__ = ("buf", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self.buf = b""
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self.buf + chunk if self.buf else chunk
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
        self.buf = buf = buf[start:]
        if len(buf) > self.max_event_bytes:
            raise ValueError("SSE event exceeds the size limit")
        return events

    def end(self) -> list[SSEEvent]:
        """What is left once the byte stream ended (an event without its blank line)."""
        buf, self.buf = self.buf, b""
        return [parse_event(buf + b"\n\n")] if buf.strip() else []


async def iter_batches(chunks: AsyncIterable[bytes], max_event_bytes: int = MAX_EVENT_BYTES
                       ) -> AsyncIterator[list[SSEEvent]]:
    """Split a byte stream into SSE events, one list per chunk read (empty lists skipped).
    Raises ValueError when one event grows beyond `max_event_bytes`."""
    splitter = EventSplitter(max_event_bytes)
    async for chunk in chunks:
        if chunk:
            events = splitter.feed(chunk)
            if events:
                yield events
    tail = splitter.end()
    if tail:
        yield tail


async def data_batches(read: Callable[[], Awaitable[bytes]], idle: float,
                       max_event_bytes: int = MAX_EVENT_BYTES) -> AsyncIterator[list[SSEEvent]]:
    """The events that carry data, one list per read that completed some (`read()` returns
    b"" at the end). `idle` bounds the wait from one data event to the next: comments and
    keep-alives do not reset it, so an upstream that sends only those is cut after `idle`
    (TimeoutError). Raises ValueError for an event over `max_event_bytes`."""
    loop = asyncio.get_running_loop()
    splitter = EventSplitter(max_event_bytes)
    deadline = loop.time() + idle
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await read()
        if not chunk:
            break
        events = [e for e in splitter.feed(chunk) if e.data]
        if events:
            deadline = loop.time() + idle
            yield events
    tail = [e for e in splitter.end() if e.data]
    if tail:
        yield tail


async def iter_events(chunks: AsyncIterable[bytes], max_event_bytes: int = MAX_EVENT_BYTES
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
