"""The response cache store: diskcache on disk, off the event loop, and off the hot path.

Reads: each process keeps the set of keys it knows are stored (loaded at start, then the rows
other workers added, read every `poll_seconds` from diskcache's table in a thread), so a miss
costs a set lookup — no thread hop, no SQLite query. A known key is fetched in a thread.
Another worker's fresh entry becomes visible within `poll_seconds`.

Writes: batched; every `flush_seconds` one thread job writes the pending entries in one
transaction. Until then they are served from memory (read-your-writes). An entry small enough
for diskcache to keep inside its database (under `disk_min_file_size`, 32 KB: nearly every
chat answer) is written as a row of diskcache's own `Cache` table, exactly the row
`Cache.set(key, value, expire=ttl, tag=<this process>)` would write, 32 rows per INSERT: a
fraction of the SQL work and GIL hand-offs of a SELECT and an INSERT per entry. Larger entries
go through `Cache.set`. Reads, expiry and eviction stay diskcache's; eviction (`cull`) runs at
most every `cull_seconds`, so the directory may overshoot its size limit by that many seconds
of answers.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import diskcache
import structlog

from proxy.store.db import insert_rows, transaction

log = structlog.get_logger(__name__)
MAX_BACKLOG = 5000   # entries waiting for their batch write
# diskcache 5's row for a str key (raw = 1) and a bytes value kept in the database (size 0,
# mode MODE_RAW, no file, never accessed), tagged with the writing process. On a conflict
# (another worker stored the same key meanwhile) the newer answer wins, unless that row's
# value lives in a file, which an UPDATE here would orphan; then the other worker's answer stays.
_INSERT = ("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size,"
           " mode, filename, value) VALUES ")
_UPSERT = (" ON CONFLICT (key, raw) DO UPDATE SET store_time = excluded.store_time,"
           " expire_time = excluded.expire_time, access_time = excluded.access_time,"
           " value = excluded.value WHERE Cache.filename IS NULL")


def _row(i: int) -> str:
    """Row `i` of a multi-row INSERT (db.insert_rows): its own key and value; the store and
    access time (?1), expiry (?2) and tag (?3) are the batch's, bound once per INSERT."""
    return f"(?{4 + 2 * i}, 1, ?1, ?2, ?1, 0, ?3, 0, 1, NULL, ?{5 + 2 * i})"


class ResponseCache:
    def __init__(self, directory: str, size_limit_mb: float, *, poll_seconds: float = 0.5,
                 flush_seconds: float = 0.25, cull_seconds: float = 1.0):
        os.makedirs(directory, exist_ok=True)
        # cull_limit=0: no eviction work inside every set; the writer culls every cull_seconds
        self.store = diskcache.Cache(directory, size_limit=int(size_limit_mb * 1024 * 1024),
                                     eviction_policy="least-recently-stored", cull_limit=0)
        self.db_file = os.path.join(directory, diskcache.core.DBNAME)
        self.inline_limit = self.store.disk.min_file_size
        self._conn: sqlite3.Connection | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache")
        self.poll_seconds = poll_seconds
        self.flush_seconds = flush_seconds
        self.cull_seconds = cull_seconds
        self._culled_at = 0.0
        self.known: set[str] = set()
        self.writing: dict[str, tuple[bytes, float]] = {}   # key -> (value, ttl), not yet on disk
        self.flushing: dict[str, tuple[bytes, float]] = {}  # the batch being written now
        self._last_rowid = 0
        self.tag = secrets.token_hex(8)   # marks this process's rows, which the scan skips
        self._poller: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._flush_due = False     # a _flush_soon() task is running

    def _run(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def might_have(self, key: str) -> bool:
        """False when `key` is surely not stored, which the caller knows without awaiting get()."""
        return self._poller is None or key in self.known   # put_later() adds to known at once

    async def get(self, key: str) -> bytes | None:
        if self._poller is None:
            self._poller = asyncio.ensure_future(self._poll())
            await self._scan()
        pending = self.writing.get(key) or self.flushing.get(key)
        if pending is not None:
            return pending[0]
        if key not in self.known:
            return None
        value = await self._run(self.store.get, key)
        if value is None:
            self.known.discard(key)   # expired or evicted
        return value

    def put_later(self, key: str, value: bytes, ttl: float) -> None:
        if len(self.writing) >= MAX_BACKLOG:      # the disk is not keeping up: skip, never queue forever
            return
        self.writing[key] = (value, ttl)
        self.known.add(key)
        if not self._flush_due:
            self._flush_due = True
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            while self.writing:
                await asyncio.sleep(self.flush_seconds)
                await self._write_batch()
        finally:
            self._flush_due = False

    async def _write_batch(self) -> None:
        batch, self.writing = self.writing, {}
        self.flushing = batch      # still served from memory until written
        try:
            await asyncio.shield(self._run(self._write, batch))
        except Exception:
            log.exception("cache_write_failed", entries=len(batch))
        finally:
            self.flushing = {}

    async def flush(self) -> None:
        while self.writing:
            await self._write_batch()

    def _write(self, batch: dict[str, tuple[bytes, float]]) -> None:
        now = time.time()
        by_ttl: dict[float, list[tuple[str, bytearray]]] = {}   # nearly always one ttl
        large = []
        for key, (value, ttl) in batch.items():
            if len(value) < self.inline_limit:   # bytearray: pysqlite binds it without an adapter lookup
                rows = by_ttl.get(ttl)
                if rows is None:
                    rows = by_ttl[ttl] = []
                rows.append((key, bytearray(value)))
            else:
                large.append((key, value, ttl))
        if by_ttl:
            conn = self._connection()
            with transaction(conn):
                for ttl, rows in by_ttl.items():
                    insert_rows(conn, _INSERT, _row, rows, shared=(now, now + ttl, self.tag), suffix=_UPSERT)
        for key, value, ttl in large:
            self.store.set(key, value, expire=ttl, tag=self.tag)
        if now - self._culled_at >= self.cull_seconds:
            self._culled_at = now
            self.store.cull()     # expired entries, then the least recently stored over size_limit

    def _connection(self) -> sqlite3.Connection:
        """This process's connection to diskcache's database for the batch writes and the scan
        of new keys (executor thread only). WAL mode is persistent in the file; synchronous is
        per connection and set as diskcache sets it."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.db_file, isolation_level=None, check_same_thread=False, timeout=60)
            self._conn.execute("PRAGMA synchronous = NORMAL")
        return self._conn

    async def _scan(self) -> None:
        try:
            self._last_rowid, keys = await self._run(self._new_keys, self._last_rowid)
        except sqlite3.Error:
            log.exception("cache_scan_failed")
            return
        self.known.update(keys)

    def _new_keys(self, after: int) -> tuple[int, list[str]]:
        """(highest rowid, keys of the rows after `after` up to it that other processes wrote:
        this one's rows carry its `tag`, and their keys are in `known` already)."""
        conn = self._connection()
        top = conn.execute("SELECT max(rowid) FROM Cache").fetchone()[0] or 0
        rows = conn.execute("SELECT key FROM Cache WHERE rowid > ? AND rowid <= ? AND raw = 1"
                            " AND (tag IS NULL OR tag != ?)", (after, top, self.tag)).fetchall()
        return max(top, after), [key for (key,) in rows]

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self._scan()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.flush()
        self.executor.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
        self.store.close()
