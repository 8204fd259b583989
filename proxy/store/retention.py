"""Ledger retention: rows older than `ledger.retention_days` whole UTC days (before today) are
folded into daily rollups and deleted, in the background, in batches.

`prune_batch` moves at most PRUNE_BATCH rows (plus any sharing the last one's timestamp) in
one short transaction: their counts, tokens, cost, cache hits and errors are added to
`ledger_daily` (one row per UTC day, key and model) and the rows deleted, so every request stays
counted exactly once (usage.py reads both). `Pruner` runs batches until none is left, yielding
the database thread between them (ledger flushes and key lookups go in between), then sleeps
PRUNE_EVERY. Every worker runs one; SQLite's write lock serialises them and a batch that finds
nothing costs one index probe.

Freed pages are reused by new rows: the file stops growing at about retention_days of traffic
but does not shrink (VACUUM it offline to give space back).
"""
from __future__ import annotations

import asyncio
import sqlite3
import time

import structlog

from proxy.store.db import Database, transaction
from proxy.store.usage import DAY, utc_day_start

log = structlog.get_logger(__name__)

PRUNE_BATCH = 5000       # rows per transaction
PRUNE_EVERY = 3600.0     # seconds between rounds
PRUNE_FIRST = 30.0       # seconds after start before the first round

_COUNTED = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
            "cost")
_ROLLUP = f"""INSERT INTO ledger_daily (day, key_id, model, key_label, requests, {', '.join(_COUNTED)},
        cache_hits, errors)
    SELECT strftime('%Y-%m-%d', created_at, 'unixepoch'), coalesce(key_id, ''), coalesce(model, ''),
        max(key_label), count(*), {', '.join(f'sum({c})' for c in _COUNTED)}, sum(cache_hit),
        sum(CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END)
    FROM ledger WHERE created_at {{op}} ? GROUP BY 1, 2, 3
    ON CONFLICT (day, key_id, model) DO UPDATE SET
        key_label = coalesce(excluded.key_label, key_label), requests = requests + excluded.requests,
        {', '.join(f'{c} = {c} + excluded.{c}' for c in _COUNTED)},
        cache_hits = cache_hits + excluded.cache_hits, errors = errors + excluded.errors"""


def cutoff(retention_days: int, now: float | None = None) -> float:
    """Rows created before this are pruned: today and the `retention_days` whole days before
    it are kept."""
    return utc_day_start(now) - retention_days * DAY


def prune_batch(conn: sqlite3.Connection, before: float, batch: int = PRUNE_BATCH) -> int:
    """Fold up to `batch` of the oldest rows created before `before` into their daily rollups
    and delete them, in one transaction. Returns how many rows were moved."""
    with transaction(conn):
        last = conn.execute("SELECT created_at FROM ledger WHERE created_at < ? ORDER BY created_at "
                            "LIMIT 1 OFFSET ?", (before, batch - 1)).fetchone()
        op, bound = ("<=", last[0]) if last is not None else ("<", before)
        conn.execute(_ROLLUP.format(op=op), (bound,))
        return conn.execute(f"DELETE FROM ledger WHERE created_at {op} ?", (bound,)).rowcount


class Pruner:
    """The background task: a round of batches every PRUNE_EVERY seconds. `retention_days`
    may change at runtime (config reload); None keeps every row."""

    def __init__(self, db: Database, retention_days: int | None) -> None:
        self.db = db
        self.retention_days = retention_days

    async def run_once(self, now: float | None = None) -> int:
        """Prune everything due now, batch after batch; returns the rows moved."""
        if self.retention_days is None:
            return 0
        before = cutoff(self.retention_days, now)
        moved = 0
        while True:
            n = await self.db.run(prune_batch, before)
            moved += n
            if n < PRUNE_BATCH:
                break
            await asyncio.sleep(0.01)     # let flushes and lookups have the database thread
        if moved:
            log.info("ledger_pruned", rows=moved, before=time.strftime("%Y-%m-%d", time.gmtime(before)))
        return moved

    async def run(self) -> None:
        await asyncio.sleep(PRUNE_FIRST)
        while True:
            try:
                await self.run_once()
            except Exception as exc:    # a full disk, a locked file: try again next round
                log.error("ledger_prune_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(PRUNE_EVERY)
