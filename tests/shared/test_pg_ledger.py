"""The shared ledger in PostgreSQL: rows from several nodes all stored exactly once and charged
once, spooled to the node's SQLite while the database is down and replayed once it is back
(nothing lost, nothing doubled), and the same answers as the embedded ledger for the same rows."""
from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import asyncpg
import pytest

from proxy.errors import StateUnavailable
from proxy.state.pg_keys import PostgresKeyStore
from proxy.state.pg_ledger import PostgresLedger, spooled, write_rows
from proxy.store.db import NONE_NUMBER, NONE_TEXT, Database
from proxy.store.keys import hash_secret
from proxy.store.ledger import LedgerWriter, row_values
from tests.shared.pgdb import engines, pg_url, postgres_server, within  # noqa: F401  (fixtures)

DAY = 86400.0


def request_row(i: int, key_id: str = NONE_TEXT, cost: float = 0.01, created_at: float | None = None,
                request_id: str | None = None) -> tuple:
    """A row as the accounting middleware builds it (markers for missing values)."""
    return (time.time() if created_at is None else created_at, request_id or f"req_{i}", key_id,
            "label-" + key_id if key_id else NONE_TEXT, "gpt-x", NONE_TEXT, "mock", "echo", "chat",
            200, NONE_TEXT, 0, 0, 10, 5, 0, 0, 0, cost, 12.5, NONE_NUMBER, 0, 1)


@pytest.fixture
async def node(engines, tmp_path):  # noqa: F811
    """`await node(name)`: a PostgresLedger with its own engine and SQLite spool; all closed after."""
    made: list[PostgresLedger] = []

    async def make(name: str = "a", **options) -> PostgresLedger:
        (tmp_path / name).mkdir(exist_ok=True)
        ledger = PostgresLedger(await engines(), Database(tmp_path / name), **options)
        await ledger.start()
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.close()
        await ledger.db.aclose()


async def _count(url: str, sql: str = "SELECT count(*), count(DISTINCT uid) FROM ledger"):
    conn = await asyncpg.connect(url)
    try:
        return tuple(await conn.fetchrow(sql))
    finally:
        await conn.close()


async def test_rows_from_two_nodes_are_all_stored_once_and_charged_once(node, engines, pg_url):  # noqa: F811
    keys = PostgresKeyStore(await engines())
    await keys.start()
    try:
        await asyncio.wait_for(keys.listening.wait(), 5)
        record, secret = await keys.acreate("paid", balance=10.0)
        a, b = await node("a"), await node("b")
        for i in range(300):
            (a if i % 2 else b).record(request_row(i, record["id"], cost=0.01))
        a.record(request_row(1000, request_id="same-client-id"))   # X-Request-Id chosen by a client:
        b.record(request_row(1001, request_id="same-client-id"))   # two requests, two rows
        await a.flush()
        await b.flush()
        assert await _count(pg_url) == (302, 302)
        assert await _count(pg_url, "SELECT count(*) FROM ledger WHERE request_id = 'same-client-id'") == (2,)
        balance = (await a.balance(record["id"]))["balance"]
        assert balance == pytest.approx(10.0 - 300 * 0.01)
        # the charge reaches every node's key copy (NOTIFY), as a balance check reads it
        await within(1.0, lambda: keys.lookup(hash_secret(secret))["balance"] == pytest.approx(balance))
        listed = await keys.alist()
        assert listed[0]["usage_today"] == pytest.approx(3.0) and listed[0]["last_used_at"] is not None
    finally:
        await keys.close()


async def test_a_batch_written_twice_is_stored_and_charged_once(engines, pg_url):  # noqa: F811
    engine = await engines()
    keys = PostgresKeyStore(engine)
    record, _ = await keys.acreate("paid", balance=1.0)
    rows = [request_row(i, record["id"], cost=0.25) for i in range(2)]
    assert await engine.call(write_rows, ["n:1", "n:2"], rows) == 2
    assert await engine.call(write_rows, ["n:1", "n:2"], rows) == 0      # a replay after a lost reply
    assert (await keys.aget(record["id"]))["balance"] == pytest.approx(0.5)
    assert await _count(pg_url) == (2, 2)


async def test_database_down_rows_spooled_then_replayed_exactly_once(  # noqa: F811
        node, engines, pg_url, postgres_server):  # noqa: F811
    keys = PostgresKeyStore(await engines())
    record, _ = await keys.acreate("paid", balance=100.0)
    ledger = await node("a")
    for i in range(50):
        ledger.record(request_row(i, record["id"], cost=0.5))
    await ledger.flush()
    # a clean stop: the test server runs with synchronous_commit=off, so an immediate one may
    # lose its own last commits, which is not what is tested here
    postgres_server.stop(kill=False)
    try:
        for i in range(50, 250):
            ledger.record(request_row(i, record["id"], cost=0.5))
            if i % 40 == 0:
                await ledger.flush()          # never raises: the rows go to the spool
        await ledger.flush()
        assert ledger.pending == 0 and ledger.health()["writable"]
        assert len(await ledger.db.run(spooled, 10_000)) == 200
        with pytest.raises(StateUnavailable):
            await ledger.activity()
    finally:
        postgres_server.start()
    # replayed by the node itself once the database answers
    await within(15.0, lambda: ledger.db.run(lambda c: not spooled(c, 1)))
    assert await _count(pg_url) == (250, 250)
    assert (await keys.aget(record["id"]))["balance"] == pytest.approx(100.0 - 250 * 0.5)
    # a crash after the commit but before the spool was emptied: the same rows again
    again = [(9_000_000 + i, f"x:{i}", *request_row(i, record["id"], cost=0.5)) for i in range(3)]
    await ledger.engine.call(write_rows, [r[1] for r in again], [r[2:] for r in again])
    await ledger.db.run(lambda c: c.executemany(
        f"INSERT INTO ledger_spool VALUES ({', '.join('?' * 25)})", again))
    ledger._spooled = True
    assert await ledger.replay() == 3
    assert await _count(pg_url) == (253, 253)
    assert (await keys.aget(record["id"]))["balance"] == pytest.approx(100.0 - 253 * 0.5)


def _mixed_rows(now: float) -> list[tuple]:
    """Rows over 10 days, several keys and models, errors, cache hits, missing values."""
    rnd = random.Random(7)
    rows = []
    for i in range(400):
        key = rnd.choice(["key_a", "key_b", NONE_TEXT])
        at = now - rnd.uniform(0, 10 * DAY)
        if i % 7 == 0:      # a row given as a dict (None for what is missing)
            rows.append(row_values({"created_at": at, "request_id": f"r{i}", "key_id": key or None,
                                    "model": rnd.choice(["m1", "m2", None]), "status": 500,
                                    "error_type": "upstream_error", "cost": rnd.random() / 100,
                                    "prompt_tokens": rnd.randint(0, 99), "stream": True}))
        else:
            row = list(request_row(i, key, cost=rnd.random() / 100, created_at=at))
            row[4] = rnd.choice(["m1", "m2", "B-upper", "a-lower"])
            row[12] = rnd.choice([0, 1])
            row[9] = rnd.choice([200, 200, 429, 500])
            row[19] = round(rnd.uniform(1, 900), 3)
            rows.append(tuple(row))
    return rows


def _same(left, right) -> None:
    assert len(left) == len(right)
    for x, y in zip(left, right):
        assert x.keys() == y.keys()
        for name in x:
            if isinstance(x[name], float):
                assert x[name] == pytest.approx(y[name], rel=1e-9, abs=1e-12), name
            else:
                assert x[name] == y[name], name


async def test_reads_equal_the_embedded_ledgers_for_the_same_rows_with_retention(node, tmp_path):
    now = time.time()
    rows = _mixed_rows(now)
    (tmp_path / "embedded").mkdir()
    sqlite_db = Database(tmp_path / "embedded")
    embedded = LedgerWriter(sqlite_db, retention_days=3)
    shared = await node("a", retention_days=3)
    try:
        for row in rows:
            embedded.record(row)
            shared.record(row)
        await embedded.flush()
        await shared.flush()
        assert await embedded.pruner.run_once(now) == await shared.pruner.run_once(now) > 0
        strip = lambda rs: [{k: v for k, v in r.items() if k != "id"} for r in rs]  # noqa: E731
        _same(strip(await shared.activity(limit=1000)), strip(await embedded.activity(limit=1000)))
        _same(strip(await shared.activity("key_a", 20, 5, now - 2 * DAY)),
              strip(await embedded.activity("key_a", 20, 5, now - 2 * DAY)))
        for model, status in (("m1", None), (None, "ok"), (None, "error"), ("m2", 500), (None, 200)):
            _same(strip(await shared.activity(None, 1000, 0, None, None, model, status)),
                  strip(await embedded.activity(None, 1000, 0, None, None, model, status)))
        for key, since, limit in ((None, now - 2 * DAY, 20_000), ("key_a", now - 3 * DAY, 7), (None, now + 1, 10)):
            assert await shared.latency(key, since, limit) == await embedded.latency(key, since, limit)
        for group in ("day", "model", "key"):
            for key, since, until in ((None, None, None), ("key_b", now - 6 * DAY, now - DAY),
                                      (None, now - 8 * DAY, None)):
                _same(await shared.analytics(key, group, since, until),
                      await embedded.analytics(key, group, since, until))
        for key in (None, "key_a", "nope"):
            _same([await shared.balance(key, now)], [await embedded.balance(key, now)])
            assert await shared.spend_today(key, now) == pytest.approx(await embedded.spend_today(key, now))
    finally:
        await embedded.close()
        sqlite_db.close()
