"""The shared ledger's reads and retention in PostgreSQL: the SQL of proxy/store/usage.py and
proxy/store/retention.py for the `ledger` and `ledger_daily` tables of schema version 3, with
the same results (days are UTC, sums over rows and rollups count each request once, text sorts
bytewise as SQLite's does, NULL first when ascending). Functions take an asyncpg connection first.

Retention: every node runs a pruner; a batch folds rows into their day's rollup and deletes
them in one statement (DELETE ... RETURNING feeds the INSERT), so a row is folded exactly once
even if two nodes prune at the same time, and a transaction-scoped advisory lock lets only one
of them work at a time.
"""
from __future__ import annotations

import asyncio
import math
import time

import structlog

from proxy.store.db import LEDGER_COLUMNS
from proxy.store.retention import PRUNE_BATCH, PRUNE_EVERY, PRUNE_FIRST, cutoff
from proxy.store.usage import DAY, GROUPS, _day, utc_day_start

log = structlog.get_logger(__name__)

PRUNE_LOCK = 0x6D776C6564676572        # "mwledger": pg_try_advisory_xact_lock's bigint
_BOOL_COLUMNS = ("stream", "cache_hit", "partial")
_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_DAY = "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_ERROR = "CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END"


class _Params:
    """Numbered parameters ($1, $2, ...) collected in order."""

    def __init__(self) -> None:
        self.values: list = []

    def __call__(self, value) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _where(p: _Params, key_id: str | None, since: float | None, until: float | None) -> str:
    clauses = []
    if key_id is not None:
        clauses.append(f"key_id = {p(key_id)}")
    if since is not None:
        clauses.append(f"created_at >= {p(float(since))}")
    if until is not None:
        clauses.append(f"created_at < {p(float(until))}")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _where_days(p: _Params, key_id: str | None, since: float | None, until: float | None) -> str:
    """The rollup days of a window: every day that overlaps [since, until)."""
    clauses = []
    if key_id is not None:
        clauses.append(f"key_id = {p(key_id)}")
    if since is not None:
        clauses.append(f"day >= {p(_day(since))}")
    if until is not None:
        clauses.append(f"day < {p(_day(until if until % DAY == 0 else until + DAY))}")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


_STATUS_SQL = {"ok": "status < 400 AND error_type IS NULL", "error": "(status >= 400 OR error_type IS NOT NULL)"}


async def activity(conn, key_id: str | None, limit: int, offset: int, since: float | None,
                   until: float | None = None, model: str | None = None,
                   status: str | int | None = None) -> list[dict]:
    p = _Params()
    where = _where(p, key_id, since, until)
    clauses = [where[len(" WHERE "):]] if where else []
    if model is not None:
        clauses.append(f"model = {p(model)}")
    if isinstance(status, int):
        clauses.append(f"status = {p(status)}")
    elif status is not None:
        clauses.append(_STATUS_SQL[status])
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    rows = await conn.fetch(f"SELECT id, {', '.join(LEDGER_COLUMNS)} FROM ledger{where} "
                            f"ORDER BY created_at DESC, id DESC LIMIT {p(limit)} OFFSET {p(offset)}", *p.values)
    out = [dict(r) for r in rows]
    for r in out:
        for c in _BOOL_COLUMNS:
            r[c] = bool(r[c])
    return out


async def latency(conn, key_id: str | None, since: float, limit: int) -> dict:
    """p50 and p99 of latency_ms (nearest rank) over the newest `limit` rows since `since`."""
    p = _Params()
    where = _where(p, key_id, since, None)
    values = sorted(r[0] for r in await conn.fetch(
        f"SELECT latency_ms FROM ledger{where} AND latency_ms IS NOT NULL ORDER BY created_at DESC "
        f"LIMIT {p(limit)}", *p.values))
    n = len(values)
    if not n:
        return {"p50_ms": None, "p99_ms": None, "samples": 0}
    return {"p50_ms": values[max(math.ceil(n * 0.50), 1) - 1], "p99_ms": values[max(math.ceil(n * 0.99), 1) - 1],
            "samples": n}


# group -> (its columns over ledger rows, over rollups, the outer select, the order)
_GROUP_SQL = {
    "day": (f"{_DAY} AS day", "day", "day", "day ASC"),
    "model": ("coalesce(model, '') AS model", "model", "model", 'cost DESC, model COLLATE "C" ASC NULLS FIRST'),
    "key": ("key_id, max(key_label) AS key_label", "nullif(key_id, '') AS key_id, max(key_label) AS key_label",
            "key_id, max(key_label) AS key_label", 'cost DESC, key_id COLLATE "C" ASC NULLS FIRST'),
}
_ROW_AGGREGATES = ", ".join(
    ["count(*) AS requests"] + [f"sum({c}) AS {c}" for c in _SUMS] +
    ["sum(cost) AS cost", "sum(cache_hit) AS cache_hits", f"sum({_ERROR}) AS errors"])
_ROLLUP_AGGREGATES = ", ".join(f"sum({c}) AS {c}" for c in ("requests", *_SUMS, "cost", "cache_hits", "errors"))
_OUTER = ", ".join(f"coalesce(sum({c}), 0.0)::float8 AS {c}" if c == "cost" else f"coalesce(sum({c}), 0)::bigint AS {c}"
                   for c in ("requests", *_SUMS, "cost", "cache_hits", "errors"))


async def analytics(conn, key_id: str | None, group_by: str, since: float | None, until: float | None) -> list[dict]:
    if group_by not in _GROUP_SQL:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    rows_group, days_group, outer, order = _GROUP_SQL[group_by]
    p = _Params()
    where, where_days = _where(p, key_id, since, until), _where_days(p, key_id, since, until)
    sql = (f"SELECT {outer}, {_OUTER} FROM ("
           f"SELECT {rows_group}, {_ROW_AGGREGATES} FROM ledger{where} GROUP BY 1 UNION ALL "
           f"SELECT {days_group}, {_ROLLUP_AGGREGATES} FROM ledger_daily{where_days} GROUP BY 1"
           f") AS both_ GROUP BY 1 ORDER BY {order}")
    return [dict(r) for r in await conn.fetch(sql, *p.values)]


async def spend(conn, key_id: str | None, since: float | None) -> float:
    p = _Params()
    where = _where(p, key_id, since, None)
    return await conn.fetchval(f"SELECT coalesce(sum(cost), 0.0)::float8 FROM ledger{where}", *p.values)


async def balance(conn, key_id: str | None, now: float | None) -> dict:
    p = _Params()
    where, where_days = _where(p, key_id, None, None), _where_days(p, key_id, None, None)
    requests, total = await conn.fetchrow(
        f"SELECT coalesce(sum(n), 0)::bigint, coalesce(sum(c), 0.0)::float8 FROM ("
        f"SELECT count(*) AS n, sum(cost) AS c FROM ledger{where} UNION ALL "
        f"SELECT sum(requests), sum(cost) FROM ledger_daily{where_days}) AS both_", *p.values)
    found = None
    if key_id is not None:
        found = await conn.fetchval("SELECT balance FROM api_keys WHERE id = $1", key_id)
    return {"key_id": key_id, "balance": found, "total_spent": total,
            "spent_today": await spend(conn, key_id, utc_day_start(now)), "requests": requests}


_COUNTED = (*_SUMS, "cost")
_PRUNE = f"""
WITH moved AS (DELETE FROM ledger WHERE created_at {{op}} $1 RETURNING *),
folded AS (
    INSERT INTO ledger_daily (day, key_id, model, key_label, requests, {', '.join(_COUNTED)}, cache_hits, errors)
    SELECT {_DAY}, coalesce(key_id, ''), coalesce(model, ''), max(key_label), count(*),
        {', '.join(f'sum({c})' for c in _COUNTED)}, sum(cache_hit), sum({_ERROR})
    FROM moved GROUP BY 1, 2, 3
    ON CONFLICT (day, key_id, model) DO UPDATE SET
        key_label = coalesce(EXCLUDED.key_label, ledger_daily.key_label),
        requests = ledger_daily.requests + EXCLUDED.requests,
        {', '.join(f'{c} = ledger_daily.{c} + EXCLUDED.{c}' for c in _COUNTED)},
        cache_hits = ledger_daily.cache_hits + EXCLUDED.cache_hits, errors = ledger_daily.errors + EXCLUDED.errors
)
SELECT count(*) FROM moved
"""


async def prune_batch(conn, before: float, batch: int = PRUNE_BATCH) -> int:
    """Fold up to `batch` of the oldest rows created before `before` (plus any sharing the last
    one's timestamp) into their daily rollups and delete them; 0 if another node is at it."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
            return 0
        last = await conn.fetchval("SELECT created_at FROM ledger WHERE created_at < $1 ORDER BY created_at "
                                   "OFFSET $2 LIMIT 1", before, batch - 1)
        op, bound = ("<=", last) if last is not None else ("<", before)
        return await conn.fetchval(_PRUNE.format(op=op), bound)


class PostgresPruner:
    """retention.Pruner's rounds over the shared ledger, through the engine."""

    def __init__(self, engine, retention_days: int | None) -> None:
        self.engine = engine
        self.retention_days = retention_days

    async def run_once(self, now: float | None = None) -> int:
        if self.retention_days is None:
            return 0
        before = cutoff(self.retention_days, now)
        moved = 0
        while True:
            n = await self.engine.call(prune_batch, before)
            moved += n
            if n < PRUNE_BATCH:
                break
            await asyncio.sleep(0.01)
        if moved:
            log.info("ledger_pruned", rows=moved, before=time.strftime("%Y-%m-%d", time.gmtime(before)))
        return moved

    async def run(self) -> None:
        await asyncio.sleep(PRUNE_FIRST)
        while True:
            try:
                await self.run_once()
            except Exception as exc:    # the database is down: next round
                log.error("ledger_prune_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(PRUNE_EVERY)
