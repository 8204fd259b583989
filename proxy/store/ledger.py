"""The token accounting ledger: one SQLite row per request, written in batches off the loop.

`LedgerWriter.record(values)` appends one row, a tuple in LEDGER_COLUMNS order, to an
in-memory list and returns; a background task flushes the list every `interval` seconds (0.25
by default) with multi-row INSERTs in the database thread. In the same transaction managed keys
are charged: `api_keys.balance -= cost` and `last_used_at` moves forward for every key id of
the batch that is a managed key (static and management keys have no row there).

Durability: `close()` flushes everything, so a graceful shutdown loses nothing. A crash (kill -9,
power loss) loses at most the rows recorded during the last flush interval, plus the last
committed transactions that `synchronous=NORMAL` in WAL mode had not yet synced to disk on a
power loss. A failed flush (e.g. the disk is full) keeps its rows in memory and retries; beyond
`max_pending` rows the oldest are dropped and logged.

The columns (`row_values(dict)` makes the tuple from a dict of any of them, None for the rest):
    created_at (unix s; row_values defaults it to now), request_id, key_id, key_label,
    model, preset, provider, upstream_model, endpoint, status (int), error_type,
    stream, cache_hit (bools), prompt_tokens, completion_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens (ints), cost (USD), latency_ms,
    ttft_ms (None if no token came), partial (bool), attempts (int).
A tuple, not a dict: the row is built on every request, and a dict of 23 keys costs several
times as much to build. Values of the wrong type are converted at the write, or the row is
logged and skipped. Rows recorded after close() wait for the next flush() or close().
"""
from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from operator import itemgetter
from typing import Any, Callable

import structlog

from proxy.errors import Unavailable
from proxy.store.base import Ledger
from proxy.store.db import (LEDGER_COLUMNS, NONE_NUMBER, NONE_TEXT, bump_version, Database, grouped,
                            insert_rows, stop_task, transaction)
from proxy.store.retention import Pruner
from proxy.store.usage import (GROUPS, format_usage_table, query_activity, query_analytics, query_balance,
                               query_latency, query_spend, usage_report, utc_day_start)

log = structlog.get_logger(__name__)

__all__ = ["LedgerWriter", "format_usage_table", "row_values", "usage_report", "utc_day_start", "write_batch"]
UNWRITABLE_AFTER = 3.0     # seconds of failed writes before /readyz reports the ledger
_WIDTH = len(LEDGER_COLUMNS)
_KEY_ID, _REQUEST_ID = (LEDGER_COLUMNS.index(c) for c in ("key_id", "request_id"))
_INSERT = f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) VALUES "


def _int0(v: Any) -> int:
    return int(v) if v else 0


def _float0(v: Any) -> float:
    return float(v) if v else 0.0


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


_CONVERT: dict[str, Callable[[Any], Any]] = {c: _text for c in LEDGER_COLUMNS}
_CONVERT.update({c: _int0 for c in ("stream", "cache_hit", "partial", "prompt_tokens",
                                    "completion_tokens", "cached_tokens", "cache_write_tokens",
                                    "reasoning_tokens", "attempts")})
_CONVERT.update(created_at=float, status=_int, cost=_float0, latency_ms=_float, ttft_ms=_float)
_CONVERTERS = tuple(_CONVERT[c] for c in LEDGER_COLUMNS)
# the types a value may already have to be stored as it is (a bool is an int, to SQLite too)
_NONE = type(None)
_AS_IS = {_text: (str, _NONE), _int0: int, _float0: (float, int), _int: (int, _NONE),
          _float: (float, int, _NONE), float: (float, int)}
_ACCEPTED = tuple(_AS_IS[conv] for conv in _CONVERTERS)

# pysqlite binds int, float and str directly but looks for an adapter for every None and bool
# (several times the cost of the value itself). The row the accounting middleware builds on
# every request therefore carries 0/1 for the flags and NONE_TEXT / NONE_NUMBER where a value
# is missing, which the INSERT turns into NULL. None works too (row_values), only slower.
_NULLABLE_NUMBERS = ("status", "latency_ms", "ttft_ms")
_MISSING = {c: f"'{NONE_TEXT}'" if _CONVERT[c] is _text else str(NONE_NUMBER) if c in _NULLABLE_NUMBERS else None
            for c in LEDGER_COLUMNS}


# A batch's rows are written grouped by the columns that say who called what and how it ended
# (key_id .. cache_hit), which most rows of a batch share: bound once per INSERT, not per row.
_SHARED = tuple(range(LEDGER_COLUMNS.index("key_id"), LEDGER_COLUMNS.index("cache_hit") + 1))
_OWN = tuple(i for i in range(_WIDTH) if i not in _SHARED)
_shared_values, _own_values = itemgetter(*_SHARED), itemgetter(*_OWN)


def _row(i: int) -> str:
    """Row `i` of a multi-row INSERT (see db.insert_rows): the shared columns' values are
    ?1..?11, row i's own follow. `CASE WHEN ?n = <marker> THEN NULL ELSE ?n END` where a
    value may be missing (in SQLite cheaper than NULLIF, a function call that copies its value)."""
    cells = []
    for n, column in enumerate(LEDGER_COLUMNS):
        n = _SHARED.index(n) + 1 if n in _SHARED else len(_SHARED) + i * len(_OWN) + _OWN.index(n) + 1
        marker = _MISSING[column]
        cells.append(f"?{n}" if marker is None else f"CASE WHEN ?{n} = {marker} THEN NULL ELSE ?{n} END")
    return "(" + ", ".join(cells) + ")"


def row_values(row: dict) -> tuple:
    """The record() tuple of a row given as a dict (keys: LEDGER_COLUMNS; unknown ones ignored)."""
    values = tuple(map(row.get, LEDGER_COLUMNS))
    return values if values[0] is not None else (time.time(), *values[1:])


def _checked(values: tuple) -> tuple:
    if len(values) != _WIDTH:
        raise ValueError(f"a ledger row has {_WIDTH} values, not {len(values)}")
    if all(map(isinstance, values, _ACCEPTED)):
        return values
    return tuple(conv(v) for v, conv in zip(values, _CONVERTERS))


_NUMBERS = itemgetter(*(i for i, c in enumerate(LEDGER_COLUMNS) if _CONVERT[c] is not _text))


def _plain_numbers(rows: list[tuple]) -> bool:
    """True when every row has the right width and only numbers in its number columns, checked
    in C: sum() raises TypeError on anything else (None included). Text columns take any value
    SQLite can bind and store it as text; one it cannot bind fails the INSERT (see write_batch)."""
    try:
        sum(map(sum, map(_NUMBERS, rows)))
    except (TypeError, IndexError):
        return False
    return set(map(len, rows)) <= {_WIDTH}


def _converted(rows: list[tuple]) -> list[tuple]:
    """The rows with their values converted; a row that cannot be is logged and left out."""
    out = []
    for row in rows:
        try:
            out.append(_checked(row))
        except (TypeError, ValueError) as exc:
            rid = row[_REQUEST_ID] if isinstance(row, tuple) and len(row) > _REQUEST_ID else None
            log.error("ledger_row_invalid", error=repr(exc), request_id=rid)
    return out


def write_batch(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert the rows and charge managed keys, in one transaction (database thread). A row
    whose values cannot be converted is logged and skipped, so it cannot block the rest."""
    if _plain_numbers(rows):
        try:
            return _insert(conn, rows)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError, OverflowError,
                TypeError):
            pass     # a value SQLite cannot take (or not hashable): convert every row, leave out what fails
    _insert(conn, _converted(rows))


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    groups = grouped(list(map(_shared_values, rows)), map(_own_values, rows))
    with transaction(conn):
        # the write lock is held: this batch's rows get the ids after `last`
        last = conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]
        for shared, own in groups.items():
            insert_rows(conn, _INSERT, _row, own, shared=shared)
        _charge(conn, rows, last)


def _charge(conn: sqlite3.Connection, rows: list[tuple], last: int) -> None:
    """Charge the managed keys among the rows (ids after `last`): balance -= their cost,
    last_used_at moves forward. Static and management keys have no api_keys row."""
    ids = set(map(itemgetter(_KEY_ID), rows))
    ids.discard(NONE_TEXT)
    ids.discard(None)
    if not ids:
        return
    marks = ", ".join("?" * len(ids))
    sums = conn.execute(
        "SELECT key_id, sum(cost), max(created_at) FROM ledger WHERE id > ? AND key_id IN"
        f" (SELECT id FROM api_keys WHERE id IN ({marks})) GROUP BY key_id", (last, *ids)).fetchall()
    if not sums:
        return
    conn.executemany("UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                     [(at, key_id) for key_id, _, at in sums])
    cur = conn.executemany("UPDATE api_keys SET balance = balance - ? WHERE id = ? AND balance IS NOT NULL",
                           [(cost, key_id) for key_id, cost, _ in sums if cost])
    if cur.rowcount > 0:
        bump_version(conn, "balance_version")


class LedgerWriter(Ledger):
    """Batched, non-blocking ledger writes, their health, retention, and the read queries of
    the account API.

    Usage: `await start()` once, `record(row)` per request, `await close()` at shutdown.
    Read helpers flush pending rows first, so a caller reads its own writes; when the ledger
    cannot be written or read they raise Unavailable (503 `ledger_unavailable`).

    Health: a failed flush keeps its rows queued (at most `max_pending`: beyond, the oldest are
    dropped, logged and counted) and is retried every interval; after UNWRITABLE_AFTER seconds
    of failures without a success `health()` says the ledger cannot write, with the error, and
    /readyz turns 503. With `metrics`, it counts `modelway_ledger_write_failures_total` and
    `modelway_ledger_rows_dropped_total` and sets `modelway_ledger_queue_depth`.
    """

    @classmethod
    def build(cls, ctx) -> "LedgerWriter":
        return cls(ctx.db, metrics=ctx.metrics, retention_days=ctx.config.ledger.retention_days)

    def __init__(self, db: Database, *, interval: float = 0.25, max_pending: int = 100_000,
                 metrics=None, retention_days: int | None = None) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        self.metrics = metrics
        self.pruner = Pruner(db, retention_days)
        self._pending: list[tuple] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._prune_task: asyncio.Task | None = None
        self._inflight: asyncio.Future | None = None
        self._failing_since: float | None = None    # monotonic time of the first failure in a row
        self._error: str | None = None
        self._depth = -1                            # the queue depth last published

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, values: tuple) -> None:
        """Queue one ledger row (LEDGER_COLUMNS order). O(1); never blocks, never raises."""
        self._pending.append(values)

    def health(self) -> dict:
        """{writable, queued, error}: writable is False after UNWRITABLE_AFTER seconds of
        failed writes; error is the last failure's while they go on, else None."""
        since = self._failing_since
        writable = since is None or time.monotonic() - since < UNWRITABLE_AFTER
        return {"writable": writable, "queued": len(self._pending), "error": self._error}

    async def start(self) -> None:
        await self.db.open()
        if self.metrics is not None:        # the series exist from the start, at 0
            self.metrics.inc("modelway_ledger_write_failures_total", (), 0)
            self.metrics.inc("modelway_ledger_rows_dropped_total", (), 0)
            self._publish()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-flush")
            self._prune_task = asyncio.create_task(self.pruner.run(), name="ledger-prune")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._pending:
                try:
                    await self.flush()
                except Exception:
                    pass  # logged, counted and requeued by _requeue_on_failure; retried next beat
            self._publish()

    def _publish(self) -> None:
        depth = len(self._pending)
        if self.metrics is not None and depth != self._depth:
            self._depth = depth
            self.metrics.set_gauge("modelway_ledger_queue_depth", {}, depth,
                                   "Ledger rows waiting to be written by this worker (max over workers).")

    async def flush(self) -> None:
        """Write every queued row now. On failure the rows stay queued and the error is raised.
        Cancelling the caller does not cancel the write: it finishes in the database thread."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            write = asyncio.ensure_future(self._write(batch))
            write.add_done_callback(functools.partial(self._requeue_on_failure, batch))
            self._inflight = write
            await asyncio.shield(write)

    async def _write(self, batch: list[tuple]) -> None:
        """Store one batch for good (raises: the batch is requeued)."""
        await self.db.run(write_batch, batch)

    def _requeue_on_failure(self, batch: list[tuple], write: asyncio.Future) -> None:
        exc = write.exception() if not write.cancelled() else asyncio.CancelledError()
        if exc is None:
            self._failing_since = self._error = None
            return
        self._error = f"{type(exc).__name__}: {exc}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        log.error("ledger_flush_failed", rows=len(batch), error=repr(exc))
        self._pending[:0] = batch
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            del self._pending[:excess]
            log.error("ledger_rows_dropped", rows=excess)
        if self.metrics is not None:
            self.metrics.inc("modelway_ledger_write_failures_total", ())
            if excess > 0:
                self.metrics.inc("modelway_ledger_rows_dropped_total", (), excess)

    async def close(self) -> None:
        """Stop the background tasks and write what is left. Idempotent."""
        await stop_task(self._prune_task)
        await stop_task(self._task)
        self._task = self._prune_task = None
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
            self._inflight = None
        try:
            await self.flush()
        except Exception:
            log.error("ledger_rows_lost", rows=len(self._pending))

    async def _read(self, query, *args):
        """Flush, then run a read query; Unavailable if either fails."""
        try:
            await self.flush()
            return await self.db.run(query, *args)
        except (sqlite3.Error, OSError) as exc:
            log.error("ledger_read_failed", error=f"{type(exc).__name__}: {exc}")
            raise Unavailable("The ledger cannot be read or written right now; try again later (the "
                              "gateway's /readyz and logs say why).", code="ledger_unavailable") from exc

    async def activity(self, key_id: str | None = None, limit: int = 50, offset: int = 0,
                       since: float | None = None, until: float | None = None, model: str | None = None,
                       status: str | int | None = None) -> list[dict]:
        """Ledger rows, newest first (all columns plus `id`; stream/cache_hit/partial as bool);
        `model` one model's, `status` "ok", "error" (as analytics counts them) or one status."""
        return await self._read(query_activity, key_id, limit, offset, since, until, model, status)

    async def latency(self, key_id: str | None, since: float, limit: int = 20_000) -> dict:
        """{p50_ms, p99_ms, samples} over the newest `limit` rows since `since` (None: no rows)."""
        return await self._read(query_latency, key_id, since, limit)

    async def analytics(self, key_id: str | None = None, group_by: str = "day",
                        since: float | None = None, until: float | None = None) -> list[dict]:
        """Aggregates per `day` ("YYYY-MM-DD" UTC), `model` or `key` (key_id, key_label):
        requests, prompt/completion/cached/cache_write/reasoning _tokens, cost, cache_hits,
        errors (status >= 400 or an error_type), over rows and daily rollups."""
        if group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
        return await self._read(query_analytics, key_id, group_by, since, until)

    async def balance(self, key_id: str | None = None, now: float | None = None) -> dict:
        """{key_id, balance (managed key's remaining USD, None if unlimited/static/all keys),
        total_spent, spent_today, requests} (rollups of pruned days included)."""
        return await self._read(query_balance, key_id, now)

    async def spend_today(self, key_id: str | None, now: float | None = None) -> float:
        """USD recorded for the key since 00:00 UTC (None: all keys)."""
        return await self._read(query_spend, key_id, utc_day_start(now))
