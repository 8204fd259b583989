"""proxy.sse: bytes -> SSE events, whatever the chunk boundaries (the upstream's TCP reads)."""
from __future__ import annotations

import pytest

from proxy.sse import DONE, data_event, iter_events
from tests.core.helpers import FIXTURES


async def chunked(raw: bytes, size: int):
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


async def events(raw: bytes, size: int, **kw) -> list:
    return [e async for e in iter_events(chunked(raw, size), **kw)]


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
async def test_recorded_stream_splits_into_its_exact_events_at_any_chunk_size(size):
    raw = (FIXTURES / "tool_stream.sse").read_bytes()
    got = await events(raw, size)
    assert b"".join(e.raw for e in got) == raw
    assert got[-1].raw == DONE and got[-1].data == b"[DONE]"
    assert all(e.data.startswith(b"{") for e in got[:-1])


async def test_crlf_comments_event_names_and_multiline_data():
    raw = b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata:no-space\n\n"
    got = await events(raw, 5)
    assert got[0].is_comment
    assert (got[1].event, got[1].data) == ("message_start", b'{"a":\n1}')
    assert got[2].data == b"no-space"


async def test_last_event_without_blank_line_is_still_delivered():
    got = await events(b'data: {"x":1}\n\ndata: {"y":2}', 4)
    assert [e.data for e in got] == [b'{"x":1}', b'{"y":2}']


async def test_oversized_event_is_an_error():
    with pytest.raises(ValueError):
        await events(b"data: " + b"x" * 5000, 100, max_event_bytes=1000)


def test_data_event_framing():
    assert data_event(b'{"a":1}') == b'data: {"a":1}\n\n'
