"""SIGTERM (`systemctl stop`): stop accepting, let the open streams finish within
`server.drain_seconds`, flush the ledger, exit 0."""
from __future__ import annotations

import asyncio
import signal

import aiohttp
import orjson
import pytest

from tests.ops.conftest import CHAT, eventually, ledger_rows, sse_data, stream_text, wait_exit

CONFIG = """\
server: {{data_dir: ./var, drain_seconds: {drain}}}
middlewares: [access_log, accounting]
providers:
  slow: {{type: mock, options: {{chunks: 10, chunk_delay_ms: {delay}}}}}
  late: {{type: mock, options: {{latency_ms: 5000}}}}
models:
  streamy: {{targets: [{{provider: slow}}]}}
  tardy: {{targets: [{{provider: late}}]}}
"""
TEXT = "one two three four five six seven eight nine ten"


async def open_streams(url: str, n: int) -> tuple[aiohttp.ClientSession, list]:
    """n streams, each past its first event."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    body = {"model": "streamy", "stream": True, "messages": [{"role": "user", "content": TEXT}]}

    async def one():
        resp = await session.post(url + CHAT, json=body)
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        return resp, first

    return session, await asyncio.gather(*(one() for _ in range(n)))


async def test_sigterm_lets_open_streams_finish_and_the_ledger_has_every_row(start_server, tmp_path):
    n = 20
    server = await start_server(CONFIG.format(drain=10, delay=100))      # each stream lasts ~1 s
    session, streams = await open_streams(server.url, n)
    try:
        server.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: server.events("draining"), 5, "the draining log line", server)
        with pytest.raises(aiohttp.ClientConnectionError):           # no longer accepting
            async with session.get(server.url + "/healthz") as resp:
                await resp.read()
        for resp, first in streams:
            raw = first + await asyncio.wait_for(resp.read(), 10)
            assert stream_text(raw) == TEXT
    finally:
        await session.close()
    assert await wait_exit(server, 10) == 0
    assert server.events("stopped")
    rows = ledger_rows(tmp_path / "var")
    assert len(rows) == n
    assert all((r["status"], r["error_type"], r["partial"]) == (200, None, 0) for r in rows)
    server.close()


async def test_streams_outliving_drain_seconds_get_an_error_event_and_a_row(start_server, tmp_path):
    """A stream that would outlast drain_seconds is ended cleanly (error event, [DONE]) just
    before the deadline, not cut mid-chunk; the ledger says 503, not a client disconnect."""
    n = 5
    server = await start_server(CONFIG.format(drain=1, delay=400))        # each stream lasts ~4 s
    session, streams = await open_streams(server.url, n)
    try:
        server.proc.send_signal(signal.SIGTERM)
        for resp, first in streams:
            try:
                raw = first + await asyncio.wait_for(resp.read(), 10)
            except aiohttp.ClientPayloadError as exc:
                raise AssertionError(f"the stream was cut without an error event: {exc}") from None
            events = sse_data(raw)
            assert events[-1] == b"[DONE]"
            assert orjson.loads(events[-2])["error"]["type"] == "api_error"       # 503: shutting down
    finally:
        await session.close()
    assert await wait_exit(server, 10) == 0
    rows = ledger_rows(tmp_path / "var")
    assert len(rows) == n
    assert all((r["status"], r["partial"]) == (503, 1) for r in rows), rows
    server.close()


async def test_requests_not_answered_by_the_drain_deadline_get_a_503_not_a_dropped_connection(start_server,
                                                                                            tmp_path):
    """A request still waiting for its upstream at the deadline (plain, or a stream whose first
    byte has not come) is answered 503 server_shutting_down in the error envelope, and its
    ledger row says so, not that the client went away."""
    server = await start_server(CONFIG.format(drain=1, delay=100))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        async def ask(stream: bool):
            body = {"model": "tardy", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(server.url + CHAT, json=body) as resp:
                return resp.status, await resp.json()
        asks = [asyncio.ensure_future(ask(stream)) for stream in (False, True)]
        await asyncio.sleep(0.5)             # both are in, waiting for the mock's 5 s
        server.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(*asks), 10)
    for status, body in answers:
        assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    assert await wait_exit(server, 10) == 0
    rows = ledger_rows(tmp_path / "var")
    assert sorted((r["status"], r["error_type"], r["partial"], r["stream"]) for r in rows) == [
        (503, "api_error", 0, 0), (503, "api_error", 0, 1)]
    server.close()
