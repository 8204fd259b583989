"""Ledger retention: rows older than `ledger.retention_days` are folded into daily rollups and
deleted in batches; analytics, `modelway usage`, balances and a static key's spend over older
windows answer as before; the setting is checked by `modelway check`."""
from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import orjson
import pytest

from proxy.config import ConfigError, parse_config
from proxy.store import retention
from proxy.store.db import Database, db_path
from proxy.store.ledger import LedgerWriter, row_values
from proxy.store.retention import Pruner, prune_batch
from tests.cli.test_keys_usage_cli import cli
from tests.middlewares.helpers import APP, OTHER, call, key, read_ledger, routes, wait_ledger

DAY = 86400.0
NOW = time.time()
TODAY = NOW - NOW % DAY


@pytest.fixture
async def db(tmp_path):
    database = Database(tmp_path)
    yield database
    await database.aclose()


def history(n: int = 600) -> list[tuple]:
    """Rows over the last 200 days: keys, models, statuses, tokens and costs of all kinds."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        status = rng.choice((200, 200, 200, 429, 502))
        out.append(row_values({
            "created_at": TODAY - rng.randint(0, 200) * DAY + rng.random() * DAY * 0.99,
            "request_id": f"r{i}", "key_id": rng.choice(("k1", "k2", None)), "key_label": "label",
            "model": rng.choice(("gpt", "claude", None)), "status": status,
            "error_type": "provider_error" if status == 502 else None, "cache_hit": rng.random() < 0.2,
            "prompt_tokens": rng.randint(0, 900), "completion_tokens": rng.randint(0, 90),
            "cached_tokens": rng.randint(0, 9), "cache_write_tokens": rng.randint(0, 5),
            "reasoning_tokens": rng.randint(0, 3), "cost": rng.random() / 100}))
    return out


async def views(ledger: LedgerWriter) -> dict:
    """What the account API shows, over windows that reach back past the retention."""
    out = {}
    for group in ("day", "model", "key"):
        for key_id in (None, "k1"):
            for since, until in ((None, None), (TODAY - 150 * DAY, None), (TODAY - 190 * DAY, TODAY - 95 * DAY)):
                rows = await ledger.analytics(key_id, group, since, until)
                out[group, key_id, since, until] = [{k: round(v, 9) if isinstance(v, float) else v
                                                     for k, v in r.items()} for r in rows]
    for key_id in (None, "k1", "k2"):
        b = await ledger.balance(key_id)
        out["balance", key_id] = (b["requests"], round(b["total_spent"], 9), round(b["spent_today"], 9))
    return out


async def test_pruning_folds_old_rows_into_rollups_and_every_view_stays_the_same(tmp_path, db):
    ledger = LedgerWriter(db, interval=3600)
    for row in history():
        ledger.record(row)
    await ledger.flush()
    before = await views(ledger)
    old = sum(1 for r in history() if r[0] < TODAY - 90 * DAY)
    assert 0 < old < 600

    moved = 0
    while n := await db.run(prune_batch, TODAY - 90 * DAY, 7):      # small batches: many transactions
        assert n <= 8
        moved += n
    assert moved == old
    with sqlite3.connect(db_path(tmp_path)) as conn:
        assert conn.execute("SELECT count(*), min(created_at) FROM ledger").fetchone()[0] == 600 - old
        assert conn.execute("SELECT min(created_at) FROM ledger").fetchone()[0] >= TODAY - 90 * DAY
        days = conn.execute("SELECT count(DISTINCT day), sum(requests) FROM ledger_daily").fetchone()
    assert days[1] == old
    assert await views(ledger) == before
    assert await Pruner(db, 90).run_once() == 0           # nothing left to do
    assert await Pruner(db, None).run_once() == 0         # null: keep everything
    await ledger.close()


async def test_retention_through_a_gateway_analytics_usage_and_a_static_keys_balance(tmp_path, make_gateway,
                                                                                     http, monkeypatch):
    """Rows of 120 days ago are pruned at start; the account API and the CLI still count them,
    and a static key's remaining balance (its spend in the ledger) does not grow back."""
    data_dir = tmp_path / "var"
    text = routes(None, keys=[key("app", APP, balance=100), key("other", OTHER)],
                  server={"data_dir": str(data_dir)}, ledger={"retention_days": 30})
    gw = await make_gateway(text)
    for secret, n in ((APP, 4), (OTHER, 2)):
        for i in range(n):
            assert (await gw.client(secret).chat.completions.create(
                model="mock-echo", messages=[{"role": "user", "content": f"hi {i}" * (i + 1)}])).choices
    await wait_ledger(data_dir, 6)
    with sqlite3.connect(db_path(data_dir)) as conn:       # four of them happened long ago
        conn.execute("UPDATE ledger SET created_at = created_at - 120 * 86400 WHERE id <= 4")

    async def seen():
        views = {}
        for path in ("/v1/account/balance", "/v1/account/analytics?group_by=model&since=200d",
                     "/v1/account/analytics?group_by=day&since=200d"):
            status, _, body = await call(http, "GET", gw.url + path, APP)
            assert status == 200, body
            views[path] = body["data"]
        usage = await cli("usage", "--by", "key", "--since", "200d", "--format", "json",
                          "--config", str(tmp_path / "routes.yaml"))
        return views, orjson.loads(usage.stdout)
    before = await seen()
    assert before[0]["/v1/account/balance"]["requests"] == 4

    monkeypatch.setattr(retention, "PRUNE_FIRST", 0.0)     # the next gateway prunes as it starts
    await gw.close()
    gw = await make_gateway(text)
    deadline = time.monotonic() + 5
    while len(read_ledger(data_dir)) != 2:
        assert time.monotonic() < deadline, read_ledger(data_dir)
        await asyncio.sleep(0.05)
    after = await seen()
    assert after == before
    balance = after[0]["/v1/account/balance"]
    assert balance["balance"] == pytest.approx(100 - balance["total_spent"]) and balance["total_spent"] > 0


def test_retention_days_is_checked():
    assert parse_config("ledger: {retention_days: 7}\n").ledger.retention_days == 7
    assert parse_config("ledger: {retention_days: null}\n").ledger.retention_days is None
    assert parse_config("models: {}\n").ledger.retention_days == 90
    for bad in ("0", "-1", "1.5", "'90'"):
        with pytest.raises(ConfigError) as exc:
            parse_config(f"models: {{}}\nledger: {{retention_days: {bad}}}\n", "routes.yaml")
        assert "routes.yaml:2: ledger.retention_days: must be an int >= 1" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config("ledger: {retention: 7}\n", "routes.yaml")
    assert "ledger.retention: unknown field 'retention'" in str(exc.value)
