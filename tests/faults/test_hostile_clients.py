"""Hostile clients: bodies over the limit, JSON nested too deep, a body sent byte by byte,
oversized headers, too many concurrent requests for one key. Each gets its documented status
and error envelope, one ledger row where it reached an endpoint, and the gateway keeps serving
without leaking a task or a socket."""
from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import aiohttp
import orjson
import pytest

from tests.faults.conftest import CHAT, assert_envelope, chat

LIMIT = int(0.05 * 1024 * 1024)      # server.max_body_mb: 0.05 in the fault config


async def test_body_over_the_limit_with_content_length_is_413(harness):
    await harness.baseline()
    status, headers, body = await harness.post(chat(text="x" * (LIMIT + 10)))
    assert_envelope(status, headers, body, 413, "invalid_request_error", "payload_too_large")
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"], row["attempts"]) == (413, "invalid_request_error", 0)
    await harness.assert_healthy()


async def test_chunked_body_over_the_limit_is_413(harness):
    """No Content-Length: the limit is enforced while reading, over many chunks."""
    await harness.baseline()
    payload = orjson.dumps(chat(text="x" * (LIMIT + 10)))

    async def pieces():
        for i in range(0, len(payload), 4096):
            yield payload[i:i + 4096]
            await asyncio.sleep(0)

    async with harness.http.post(harness.url + CHAT, data=pieces(),
                                 headers={"Content-Type": "application/json"}) as resp:
        status, headers, body = resp.status, resp.headers, await resp.json()
    assert "Content-Length" not in resp.request_info.headers
    assert_envelope(status, headers, body, 413, "invalid_request_error", "payload_too_large")
    row = await harness.row(headers["x-request-id"])
    assert row["status"] == 413
    await harness.assert_healthy()


async def test_chunked_body_under_the_limit_is_read_whole(harness):
    """A valid body that arrives in many small chunks is read whole, not cut at the first."""
    await harness.baseline()
    text = "y" * (LIMIT // 2)
    payload = orjson.dumps(chat(text=text))

    async def pieces():
        for i in range(0, len(payload), 1024):
            yield payload[i:i + 1024]
            await asyncio.sleep(0.001)

    async with harness.http.post(harness.url + CHAT, data=pieces(),
                                 headers={"Content-Type": "application/json"}) as resp:
        status, body = resp.status, await resp.json()
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == text
    await harness.assert_healthy()


async def test_large_body_with_content_length_is_read_whole(make_harness):
    """2 MB under a 4 MB limit, sent at once: it still reaches the server in many segments."""
    h = await make_harness(max_body_mb=4)
    text = "z" * (2 * 1024 * 1024)
    status, _, body = await h.post(chat(text=text))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("depth, code", [(40, "json_too_deep"), (5000, None)])
async def test_json_nested_past_max_json_depth_is_400(harness, depth, code):
    await harness.baseline()
    nested = "[" * depth + "]" * depth
    raw = '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "metadata": %s}' % nested
    status, headers, body = await harness.post(raw.encode())
    err = assert_envelope(status, headers, body, 400, "invalid_request_error", code)
    assert "32" in err["message"] or code is None
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (400, "invalid_request_error")
    await harness.assert_healthy()


async def test_json_at_max_depth_is_accepted(harness):
    nested = "[" * 28 + "]" * 28          # 28 + the 2 levels around it + the body itself < 32
    raw = '{"model": "ok", "messages": [{"role": "user", "content": "deep"}], "x_nested": %s}' % nested
    status, _, body = await harness.post(raw.encode())
    assert status == 200, body


async def _raw_request(url: str, head: bytes):
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def test_slow_client_sending_its_body_byte_by_byte_is_cut_off_with_408(harness):
    """server.body_timeout is 0.5 s; the client would need 3 s to send its 60-byte body."""
    await harness.baseline()
    body = orjson.dumps(chat())
    reader, writer = await _raw_request(harness.url, (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode())
    started = time.monotonic()

    async def dribble():
        for b in body:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.ensure_future(dribble())
    try:
        status, headers, raw = await asyncio.wait_for(_read_response(reader), 5)
        took = time.monotonic() - started
        assert status == 408, raw
        assert 0.4 < took < 2, took
        err = orjson.loads(raw)["error"]
        assert (err["type"], err["code"]) == ("invalid_request_error", "body_timeout")
    finally:
        sender.cancel()
        writer.close()
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (408, "invalid_request_error")
    await harness.assert_healthy()


async def test_oversized_header_is_refused_and_the_gateway_keeps_serving(harness):
    await harness.baseline()
    async with harness.http.post(harness.url + CHAT, json=chat(), headers={"X-Junk": "j" * 100_000}) as resp:
        assert resp.status in (400, 431)
    await harness.assert_healthy()


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_max_concurrent_per_key_is_429_and_released_after(make_harness, faulty):
    """Two streams hold the key's two slots: a third request is refused with 429; clients that
    go away give their slots back."""
    secret = "sk-fault-concurrency-0123456789"
    h = await make_harness(middlewares="auth, ratelimit, accounting",
                           extra=f"keys: [{{label: tight, sha256: {sha(secret)}, max_concurrent: 2}}]")
    h.headers = {"Authorization": f"Bearer {secret}"}
    await h.baseline()
    held = []
    async with aiohttp.ClientSession() as streams:
        for _ in range(2):
            resp = await streams.post(h.url + CHAT, json=chat("bad/endless", stream=True), headers=h.headers)
            assert resp.status == 200
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 3)
            held.append(resp)
        status, headers, body = await h.post(chat())
        assert_envelope(status, headers, body, 429, "rate_limit_error", "concurrency_limit_exceeded")
        assert int(headers["Retry-After"]) >= 1
        refused = headers["x-request-id"]
        status, _, _ = await h.post(chat(), headers={"Authorization": "Bearer nope"})
        assert status == 401
        for resp in held:
            resp.close()                             # the clients go away mid-stream
    assert await faulty.wait_idle()
    row = await h.row(refused)
    assert (row["status"], row["error_type"], row["attempts"]) == (429, "rate_limit_error", 0)
    deadline = time.monotonic() + 3                  # the slots are given back as the streams unwind
    while True:
        status, _, body = await h.post(chat())
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status == 200, body
    status, _, body = await h.post(chat())
    assert status == 200, body
    await h.assert_healthy()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1024 / 1024


async def giant_names_rss_growth(h, prefix: str, want_status: int, count: int = 400) -> float:
    """MB the process's RSS grew by over `count` requests, each for a new 100 KB model name
    `prefix/<hex>` (hex: no "error" or "slow" in it, which would make the mock fail or wait)."""
    await h.baseline()

    async def giant() -> None:
        status, _, body = await h.post(chat(prefix + "/" + secrets.token_hex(50_000)))
        assert status == want_status, body

    for _ in range(4):                  # the allocator's arenas grow to their working size first
        await asyncio.gather(*(giant() for _ in range(8)))
    before = rss_mb()
    for _ in range(count // 8):
        await asyncio.gather(*(giant() for _ in range(8)))
    return rss_mb() - before


async def test_giant_model_names_on_a_wildcard_route_are_not_kept_in_memory(make_harness):
    """400 requests, each for a new 100 KB model name on a wildcard route, through the cache
    middleware (on by route or not, it resolves every chat request): all answered 200, and the
    gateway's memory does not keep the names (40 MB of them; kept with their resolved route,
    RSS grew by well over 80 MB)."""
    h = await make_harness(middlewares="cache, accounting", max_body_mb=1,
                           extra='  "wild/*": {targets: [{provider: mock}]}')
    grown = await giant_names_rss_growth(h, "wild", 200)
    assert grown < 25, f"RSS grew by {grown:.0f} MB over 400 giant model names"
    await h.assert_healthy()


async def test_giant_model_names_failing_upstream_are_not_kept_in_memory(make_harness):
    """800 such names on a wildcard route whose provider is down: each request fails (502),
    and each failure counts toward its target's cooldown, keyed by (provider, upstream model):
    the 10,000 targets the cooldown store keeps must not mean 10,000 names of 100 KB."""
    h = await make_harness(max_body_mb=1)
    grown = await giant_names_rss_growth(h, "dead", 502, count=800)    # kept: 80 MB
    assert grown < 40, f"RSS grew by {grown:.0f} MB over 800 giant model names"
    await h.assert_healthy()
