"""Limits under stress, through `modelway serve` processes as ops run them: balances and daily
limits are never overspent however many requests race across workers; the minute limit's
refusals don't count and advertise a right wait; a worker killed mid-stream gives its
concurrency back; a damaged counters file or a full table never switches limits off."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import aiohttp
import pytest

from proxy.store.counters import SharedCounters
from proxy.store.holdings import Holdings
from tests.middlewares.helpers import CHAT, OPS, call, chat_body, key, routes
from tests.ops.conftest import eventually, ledger_rows, start_server  # noqa: F401  (a fixture)

LIMITED = "sk-mw-limited-0123456789abcdef"
# `pricey` on the mock: 8 prompt + 1 completion tokens of "hi" at $100/$200 per 1M = $0.001 a
# request, while its reservation (~75 body bytes at $100 + 1 token at $200) is ~$0.0077
PRICEY = {"pricey": {"targets": [{"provider": "slowmock"}], "pricing": {"input": 100.0, "output": 200.0}}}
SLOW = {"slowmock": {"type": "mock", "options": {"latency_ms": 300}}}
STREAMY = {"streamy": {"type": "mock", "options": {"chunks": 50, "chunk_delay_ms": 200}}}
BUDGET = 0.01


def config(data_dir, keys, **extra) -> str:
    return f"server: {{data_dir: {data_dir}, drain_seconds: 2}}\n" + routes(
        None, keys=keys, models={**PRICEY, "streamy": {"targets": [{"provider": "streamy"}]}},
        providers={**SLOW, **STREAMY}, **extra)


async def post(url: str, secret: str, model: str = "pricey", **extra) -> tuple[int, dict, dict]:
    """One request on its own connection (SO_REUSEPORT spreads them over the workers)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await call(session, "POST", url + CHAT, secret, chat_body(model, "hi", max_tokens=1, **extra))


def spent(data_dir, label: str) -> float:
    return sum(r["cost"] for r in ledger_rows(data_dir) if r["key_label"] == label)


async def burst_then_sequential(url: str, secret: str, short_code: str) -> int:
    """50 concurrent requests, then one after the other until refused; returns how many passed."""
    results = await asyncio.gather(*(post(url, secret) for _ in range(50)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}, statuses
    assert {b["error"]["code"] for s, _, b in results if s == 429} == {short_code}
    passed = statuses.count(200)
    while True:
        status, headers, body = await post(url, secret)
        if status == 429:
            assert body["error"]["code"] == short_code and int(headers["Retry-After"]) >= 1
            return passed
        passed += 1
        assert passed < 50, "the budget was overspent"


async def test_a_balance_is_never_overspent_by_concurrent_requests_across_workers(start_server, tmp_path):
    data_dir = tmp_path / "var"
    server = await start_server(config(data_dir, [key("ops-app", "sk-unused-0123456789")]), "--workers", "3",
                                workers=3)
    async with aiohttp.ClientSession() as session:
        status, _, body = await call(session, "POST", server.url + "/v1/account/keys", OPS,
                                     {"label": "prepaid", "balance": BUDGET})
    assert status == 201

    async def known_everywhere():      # each worker loads the new key within ~0.5 s
        async def models():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                return (await call(s, "GET", server.url + "/v1/models", body["key"]))[0]
        return set(await asyncio.gather(*(models() for _ in range(12)))) == {200}
    await eventually(known_everywhere, 10, "every worker to know the key", server)
    passed = await burst_then_sequential(server.url, body["key"], "balance_insufficient")
    await eventually(lambda: spent(data_dir, "prepaid") == pytest.approx(passed * 0.001), 10, "the ledger", server)
    assert spent(data_dir, "prepaid") <= BUDGET
    conn = sqlite3.connect(data_dir / "modelway.db")
    try:
        await eventually(lambda: conn.execute("SELECT balance FROM api_keys").fetchone()[0] == pytest.approx(
            BUDGET - passed * 0.001), 10, "the key store's balance charged", server)
    finally:
        conn.close()


async def test_a_daily_limit_is_never_overspent_by_concurrent_requests_across_workers(start_server, tmp_path):
    data_dir = tmp_path / "var"
    server = await start_server(config(data_dir, [key("daily", LIMITED, daily_limit=BUDGET)]), "--workers", "3",
                                workers=3)
    passed = await burst_then_sequential(server.url, LIMITED, "daily_limit_insufficient")
    await eventually(lambda: spent(data_dir, "daily") == pytest.approx(passed * 0.001), 10, "the ledger", server)
    assert spent(data_dir, "daily") <= BUDGET


async def test_a_killed_workers_concurrency_is_released_by_the_supervisor(start_server, tmp_path):
    data_dir = tmp_path / "var"
    server = await start_server(config(data_dir, [key("two", LIMITED, max_concurrent=2)]), "--workers", "3",
                                workers=3)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) for _ in range(2)]
    try:
        streams = [await s.post(server.url + CHAT, json=chat_body("streamy", "slow " * 100, stream=True),
                                headers={"Authorization": f"Bearer {LIMITED}"}) for s in sessions]
        assert [r.status for r in streams] == [200, 200]
        assert (await post(server.url, LIMITED, "streamy"))[0] == 429      # both slots taken
        holders = {int(p.name.split(".")[0]) for p in (data_dir / "counters.holds").iterdir()
                   if any(n for _, _, n, _ in Holdings.read(p))}
        assert holders
        for pid in holders:                             # kill every worker holding a stream mid-stream
            os.kill(pid, signal.SIGKILL)
        for r in streams:
            if not r.closed:
                r.close()
        await eventually(lambda: len(server.events("worker_died")) == len(holders), 10, "the deaths", server)
        await eventually(lambda: len(server.events("listening")) == 3 + len(holders), 20, "replacements", server)
        # the dead workers' slots are free again: two new requests at once both pass
        statuses = [s for s, _, _ in await asyncio.gather(*(post(server.url, LIMITED, "pricey")
                                                            for _ in range(2)))]
        assert statuses == [200, 200]
        assert any(e.get("records") for e in server.events("counters_released"))
    finally:
        for s in sessions:
            await s.close()


@pytest.mark.parametrize("damage", ["bad header", "truncated"])
async def test_a_damaged_counters_file_is_rebuilt_and_limits_hold(start_server, tmp_path, damage):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    path = data_dir / "counters.bin"
    SharedCounters(path).close()
    data = bytearray(path.read_bytes())
    if damage == "bad header":
        data[:8] = b"\0" * 8          # the right size, a bad header: every limit was off
    else:
        data = data[:4096]            # truncated: startup failed
    path.write_bytes(bytes(data))
    server = await start_server(config(data_dir, [key("one", LIMITED, minute_limit=1)]), "--workers", "2",
                                workers=2)
    [event] = server.events("counters_rebuilt")
    assert event["moved_to"].startswith(str(path) + ".damaged-") and os.path.exists(event["moved_to"])
    statuses = [s for s, _, _ in await asyncio.gather(*(post(server.url, LIMITED, "streamy")
                                                        for _ in range(10)))]
    assert sorted(statuses) == [200] + [429] * 9


async def test_a_key_past_the_first_4096_is_still_limited(start_server, tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    path = data_dir / "counters.bin"
    counters = SharedCounters(path)             # 4,100 keys used lately: the table grew
    for i in range(4100):
        counters.admit(f"static:used{i}", time.time(), 1000, None)
    counters.close()
    assert path.stat().st_size == 64 + 2 * 4096 * 64
    server = await start_server(config(data_dir, [key("new", LIMITED, minute_limit=1, max_concurrent=1)]),
                                "--workers", "2", workers=2)
    statuses = [s for s, _, _ in await asyncio.gather(*(post(server.url, LIMITED, "streamy")
                                                        for _ in range(30)))]
    assert sorted(statuses) == [200] + [429] * 29


async def test_a_retrying_client_is_told_the_right_wait_and_its_refusals_do_not_count(start_server, tmp_path):
    data_dir = tmp_path / "var"
    server = await start_server(config(data_dir, [key("rpm", LIMITED, minute_limit=20, max_concurrent=1)]),
                                "--workers", "2", workers=2)
    # concurrency refusals do not use up the minute: 1 of 5 passes, then 19 more fit (GCRA: one
    # more every 3 s, so maybe one more while this runs)
    statuses = [s for s, _, _ in await asyncio.gather(*(post(server.url, LIMITED) for _ in range(5)))]
    assert statuses.count(200) == 1
    passed = 1
    while (await post(server.url, LIMITED, "streamy"))[0] == 200:
        passed += 1
    assert 20 <= passed <= 21
    # a client retrying every 0.2 s is told the real wait (<= 3 s, never a minute), and its
    # refusals do not push it back: it gets through within those 3 s
    loop = asyncio.get_running_loop()
    started, waits = loop.time(), []
    while True:
        status, headers, body = await post(server.url, LIMITED, "streamy")
        if status == 200:
            break
        assert body["error"]["code"] == "minute_limit_exceeded"
        waits.append(int(headers["Retry-After"]))
        assert int(headers["X-RateLimit-Reset-Minute"]) <= 60 and int(headers["X-RateLimit-Remaining-Minute"]) == 0
        assert loop.time() - started < 4, waits
        await asyncio.sleep(0.2)                      # the client's own retry pace
    assert waits and all(1 <= w <= 3 for w in waits) and waits == sorted(waits, reverse=True)
