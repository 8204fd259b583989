"""The ledger: batched rows land exactly once, reads see them, managed keys get charged."""
import asyncio
import random
import sqlite3

import pytest

from proxy.store.db import Database, db_path
from proxy.store.keys import KeyStore
from proxy.store.ledger import LedgerWriter, format_usage_table, row_values, usage_report

DAY = 86400.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY    # a UTC midnight


@pytest.fixture
async def db(tmp_path):
    database = Database(tmp_path)
    yield database
    await database.aclose()


def _count(tmp_path, sql="SELECT count(*) FROM ledger"):
    with sqlite3.connect(db_path(tmp_path)) as conn:
        return conn.execute(sql).fetchone()


async def test_concurrent_records_become_exactly_n_rows(tmp_path, db):
    ledger = LedgerWriter(db, interval=0.01)
    await ledger.start()
    n = 200
    usages = [(random.randint(1, 500), random.randint(0, 300), random.random() / 100)
              for _ in range(n)]

    async def request(i: int) -> None:
        await asyncio.sleep(random.random() / 20)
        prompt, completion, cost = usages[i]
        ledger.record(row_values({"request_id": f"req-{i}", "key_id": "k1", "model": "m", "status": 200,
                                  "prompt_tokens": prompt, "completion_tokens": completion,
                                  "cost": cost, "latency_ms": 12.5, "ttft_ms": None, "stream": True}))

    await asyncio.gather(*(request(i) for i in range(n)))
    await ledger.close()

    count, ids, prompt, completion, cost = _count(
        tmp_path, "SELECT count(*), count(DISTINCT request_id), sum(prompt_tokens), "
                  "sum(completion_tokens), sum(cost) FROM ledger")
    assert count == ids == n
    assert prompt == sum(u[0] for u in usages)
    assert completion == sum(u[1] for u in usages)
    assert cost == pytest.approx(sum(u[2] for u in usages))


async def test_graceful_close_flushes_pending_rows(tmp_path, db):
    ledger = LedgerWriter(db, interval=3600)
    await ledger.start()
    for i in range(5):
        ledger.record(row_values({"request_id": f"r{i}", "model": "m", "status": 200}))
    assert ledger.pending == 5
    assert _count(tmp_path) == (0,)
    await ledger.close()
    assert ledger.pending == 0
    assert _count(tmp_path) == (5,)


async def test_activity_is_paginated_newest_first(db):
    ledger = LedgerWriter(db)
    for i in range(25):
        ledger.record(row_values({"created_at": T0 + i, "request_id": f"r{i}", "key_id": "a" if i % 5 else "b",
                                  "model": "m", "cost": 0.01, "status": 200, "cache_hit": i == 3}))
    pages = [await ledger.activity(limit=10, offset=o) for o in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    ids = [r["request_id"] for p in pages for r in p]
    assert ids == [f"r{i}" for i in range(24, -1, -1)]
    assert pages[2][1]["cache_hit"] is True and pages[2][0]["cache_hit"] is False

    own = await ledger.activity("b", limit=100)
    assert [r["request_id"] for r in own] == ["r20", "r15", "r10", "r5", "r0"]
    recent = await ledger.activity(limit=100, since=T0 + 20)
    assert len(recent) == 5
    await ledger.close()


async def test_analytics_groups_by_day_model_and_key(db):
    ledger = LedgerWriter(db)
    rows = [
        (T0 + 10, "k1", "gpt", 200, 100, 10, 0.5, False),
        (T0 + 20, "k1", "claude", 200, 200, 20, 1.0, True),
        (T0 + DAY + 5, "k2", "gpt", 502, 50, 0, 0.0, False),
        (T0 + DAY + 6, "k2", "gpt", 200, 10, 5, 0.25, False),
    ]
    for at, key, model, status, p, c, cost, hit in rows:
        ledger.record(row_values({"created_at": at, "key_id": key, "key_label": key.upper(), "model": model,
                                  "status": status, "prompt_tokens": p, "completion_tokens": c,
                                  "cached_tokens": 5, "cost": cost, "cache_hit": hit,
                                  "error_type": "upstream_error" if status >= 500 else None}))

    by_day = await ledger.analytics(group_by="day")
    assert [(d["day"], d["requests"], d["cost"], d["errors"]) for d in by_day] == [
        ("2023-11-14", 2, 1.5, 0), ("2023-11-15", 2, 0.25, 1)]
    by_model = {d["model"]: d for d in await ledger.analytics(group_by="model")}
    assert by_model["gpt"]["requests"] == 3 and by_model["gpt"]["prompt_tokens"] == 160
    assert by_model["claude"]["cache_hits"] == 1 and by_model["claude"]["cached_tokens"] == 5
    by_key = await ledger.analytics(group_by="key")
    assert [(k["key_id"], k["key_label"], k["completion_tokens"]) for k in by_key] == [
        ("k1", "K1", 30), ("k2", "K2", 5)]
    only_k2 = await ledger.analytics("k2", group_by="model", since=T0 + DAY, until=T0 + 2 * DAY)
    assert [(d["model"], d["requests"]) for d in only_k2] == [("gpt", 2)]
    with pytest.raises(ValueError):
        await ledger.analytics(group_by="provider")
    await ledger.close()

    report = usage_report(db_path(db.path.parent), by="key")
    assert [r["key_id"] for r in report] == ["k1", "k2"]
    table = format_usage_table(report, "key")
    assert table.splitlines()[0].split()[:2] == ["key_id", "requests"]
    assert table.splitlines()[-1].split()[:2] == ["TOTAL", "4"]


async def test_managed_key_balance_is_charged(db):
    keys = KeyStore(db)
    record, _ = await keys.acreate("team", balance=1.0)
    key_id = record["id"]
    ledger = LedgerWriter(db)
    await ledger.start()
    ledger.record(row_values({"key_id": key_id, "model": "m", "cost": 0.25}))
    ledger.record(row_values({"key_id": key_id, "model": "m", "cost": 0.1}))
    ledger.record(row_values({"key_id": "static-key", "model": "m", "cost": 5.0}))
    summary = await ledger.balance(key_id)
    assert summary["balance"] == pytest.approx(0.65)
    assert summary["total_spent"] == pytest.approx(0.35)
    assert summary["spent_today"] == pytest.approx(0.35)
    assert summary["requests"] == 2
    assert await ledger.spend_today(key_id) == pytest.approx(0.35)
    assert await ledger.spend_today(None) == pytest.approx(5.35)
    stored = await keys.aget(key_id)
    assert stored["balance"] == pytest.approx(0.65)
    assert stored["last_used_at"] is not None
    assert stored["usage_today"] == pytest.approx(0.35)
    await ledger.close()
    await keys.close()


async def test_cancelled_reader_does_not_lose_the_batch_it_was_flushing(tmp_path, db):
    ledger = LedgerWriter(db, interval=3600)
    await ledger.start()
    for i in range(50):
        ledger.record(row_values({"request_id": f"r{i}", "model": "m"}))
    reader = asyncio.create_task(ledger.activity())    # flushes first, like a client that
    await asyncio.sleep(0)                              # disconnects mid-request
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    ledger.record(row_values({"request_id": "last", "model": "m"}))
    await ledger.close()
    assert _count(tmp_path) == (51,)


async def test_an_unwritable_row_is_skipped_not_retried_forever(tmp_path, db):
    ledger = LedgerWriter(db)
    ledger.record(row_values({"request_id": "good", "model": "m", "prompt_tokens": 3}))
    ledger.record(row_values({"request_id": "bad", "model": "m", "prompt_tokens": "many"}))
    await ledger.flush()
    assert ledger.pending == 0
    assert _count(tmp_path, "SELECT group_concat(request_id) FROM ledger") == ("good",)
    await ledger.close()


async def test_a_value_sqlite_cannot_bind_is_converted_and_the_batch_kept(tmp_path, db):
    # rows as the accounting middleware builds them: every number column a number, -1 / '' for
    # a missing value, so the batch is first inserted as it is
    numbers = {"status": 200, "stream": 0, "cache_hit": 0, "completion_tokens": 0, "cached_tokens": 0,
               "cache_write_tokens": 0, "reasoning_tokens": 0, "latency_ms": 1.5, "ttft_ms": -1,
               "partial": 0, "attempts": 1}
    ledger = LedgerWriter(db)
    ledger.record(row_values({**numbers, "request_id": "plain", "model": "m", "preset": "",
                              "prompt_tokens": 3, "cost": 0.5}))
    ledger.record(row_values({**numbers, "request_id": "odd", "model": {"name": "m"}, "preset": "",
                              "prompt_tokens": 4, "cost": 0.0}))    # SQLite cannot bind the dict
    await ledger.flush()
    assert ledger.pending == 0
    rows = _count(tmp_path, "SELECT group_concat(request_id || '|' || model || '|' || prompt_tokens || '|'"
                            " || coalesce(ttft_ms, 'null') || '|' || coalesce(preset, 'null'), ' ')"
                            " FROM (SELECT * FROM ledger ORDER BY id)")
    assert rows == ("plain|m|3|null|null odd|{'name': 'm'}|4|null|null",)
    await ledger.close()


async def test_a_mixed_batch_is_written_value_for_value(tmp_path, db):
    # rows of several keys, models and outcomes in one batch, in group sizes that are not
    # multiples of the INSERT's 32 rows: each row comes back exactly as it was recorded
    ledger = LedgerWriter(db, interval=3600)
    expected = []
    for i in range(150):
        key, model, status = [("k1", "m1", 200), ("k2", "m1", 200), ("k1", "m2", 502), ("k3", "m3", 429)][i % 7 % 4]
        row = {"created_at": T0 + i, "request_id": f"req-{i}", "key_id": key, "key_label": key.upper(),
               "model": model, "preset": "p" if i % 5 == 0 else "", "provider": "up",
               "upstream_model": model + "-up", "endpoint": "chat", "status": status,
               "error_type": "" if status == 200 else "upstream_error", "stream": i % 2, "cache_hit": 0,
               "prompt_tokens": i, "completion_tokens": 2 * i, "cached_tokens": i % 3, "cache_write_tokens": 0,
               "reasoning_tokens": i % 4, "cost": i / 1000, "latency_ms": i + 0.5,
               "ttft_ms": -1 if i % 2 == 0 else i / 10, "partial": 0, "attempts": 1 + i % 2}
        ledger.record(row_values(row))
        expected.append(tuple(None if row[c] in ("", -1) and c in ("preset", "error_type", "ttft_ms") else row[c]
                              for c in row))
    await ledger.flush()
    columns = ", ".join(row)      # the columns, in the order of the expected tuples
    with sqlite3.connect(db_path(tmp_path)) as conn:
        got = conn.execute(f"SELECT {columns} FROM ledger ORDER BY created_at").fetchall()
    assert got == expected
    await ledger.close()


async def test_a_ledger_that_cannot_write_keeps_a_bounded_queue_says_so_and_catches_up(tmp_path, db):
    """Writes refused (a read-only database): rows stay queued up to max_pending, the oldest
    beyond are dropped and counted, health turns unwritable after UNWRITABLE_AFTER seconds of
    failures, and the queue lands once writes work again."""
    from proxy.store import ledger as ledger_module
    from proxy.store.metrics import Metrics
    metrics = Metrics()
    ledger = LedgerWriter(db, interval=3600, max_pending=10, metrics=metrics)
    await ledger.start()
    await db.run(lambda conn: conn.execute("PRAGMA query_only = ON"))
    for i in range(25):
        ledger.record(row_values({"request_id": f"r{i}", "model": "m", "status": 200}))
    with pytest.raises(sqlite3.OperationalError):
        await ledger.flush()
    health = ledger.health()
    assert health["writable"] is True and health["queued"] == 10    # one failure is not yet "cannot write"
    assert "readonly" in health["error"]
    ledger._failing_since -= ledger_module.UNWRITABLE_AFTER          # ... but seconds of them are
    assert ledger.health()["writable"] is False
    text = metrics.render()
    assert "modelway_ledger_write_failures_total 1\n" in text
    assert "modelway_ledger_rows_dropped_total 15\n" in text
    await db.run(lambda conn: conn.execute("PRAGMA query_only = OFF"))
    await ledger.flush()
    assert ledger.health() == {"writable": True, "queued": 0, "error": None}
    assert [r[0] for r in sqlite3.connect(db_path(tmp_path)).execute(
        "SELECT request_id FROM ledger ORDER BY id")] == [f"r{i}" for i in range(15, 25)]    # the newest kept
    await ledger.close()
