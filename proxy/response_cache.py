"""The response cache store: diskcache on disk, through its public API, off the event loop.

Reads: each process keeps the set of keys it knows are stored, so a miss costs a set lookup —
no thread hop, no SQLite query. A known key is fetched in a thread (`Cache.get`).

Writes: batched; every `flush_seconds` one thread job writes the pending entries in one
transaction (`Cache.transact()` around `Cache.set`s). Until then they are served from memory
(read-your-writes). Expiry and eviction are diskcache's; eviction (`Cache.cull`) runs at most
every `cull_seconds`, so the directory may overshoot its size limit by that many seconds of
answers.

Other workers' entries: each batch also takes the next number of a sequence kept in the cache
(`Cache.incr`, in the batch's transaction, so numbers are taken in commit order) and stores the
list of its keys under that number (the feed). Every `poll_seconds` a worker reads the feed
entries after the last number it has seen. A feed entry that has gone (expired, evicted) or a
sequence that went back (the cache was cleared) makes the worker list every key again. Nothing
depends on SQLite's rowids, which a table without AUTOINCREMENT reuses.

A damaged database (not SQLite, or corrupt) is moved aside as `cache.db.corrupt-<time>` and a
fresh cache started: it is only a cache.

`CacheBackend` is the interface middlewares/cache.py uses; `ResponseCache` (here) is the embedded
implementation, `RedisResponseCache` (proxy/state/response_cache.py) the one several nodes share.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

import diskcache
import structlog

from proxy.store.files import DIR_MODE, FILE_MODE, private_db, private_dir, private_file

log = structlog.get_logger(__name__)
MAX_BACKLOG = 5000   # entries waiting for their batch write
SEQ_KEY = "modelway:seq"          # the feed's last number
FEED = "modelway:feed:"           # + number -> the keys of that batch, comma-separated
FEED_TTL = 300.0                  # a worker stalled longer than this lists every key again
DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class PrivateDisk(diskcache.Disk):
    """diskcache's Disk with its value files (answers over 32 KB) 0600 in 0700 directories;
    diskcache itself creates them with the process umask."""

    def __init__(self, directory: str, **kwargs):
        super().__init__(directory, **kwargs)
        self.root = directory

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        size, mode, filename, db_value = super().store(value, read, key=key)
        if filename:
            path = os.path.join(self.root, filename)
            os.chmod(path, FILE_MODE)
            os.chmod(os.path.dirname(path), DIR_MODE)
            os.chmod(os.path.dirname(os.path.dirname(path)), DIR_MODE)
        return size, mode, filename, db_value


def open_store(directory: str, size_limit: int) -> diskcache.Cache:
    """diskcache.Cache on `directory`, files private; a damaged database moved aside. Workers
    starting together take a lock: one repairs, the others open what it made."""
    private_dir(directory)
    db = os.path.join(directory, diskcache.core.DBNAME)
    with open(private_file(os.path.join(directory, ".lock")), "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        private_db(db)
        try:
            return _cache(directory, size_limit)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF not in DAMAGED:
                raise
            aside = f"{db}.corrupt-{int(time.time())}"
            os.replace(db, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.replace(db + suffix, aside + suffix)
            log.error("cache_db_damaged", path=db, moved_to=aside, error=str(exc))
            private_db(db)
            return _cache(directory, size_limit)


def _cache(directory: str, size_limit: int) -> diskcache.Cache:
    # cull_limit=0: no eviction work inside every set; the writer culls every cull_seconds
    return diskcache.Cache(directory, size_limit=size_limit, eviction_policy="least-recently-stored",
                           cull_limit=0, disk=PrivateDisk)


class CacheBackend(ABC):
    """Where the response cache keeps answers: `key` is a hex digest of the canonical request,
    `value` the stored answer (JSON bytes), `ttl` seconds. Lookups are on the request's path;
    stores never are (`put_later` returns at once). A backend that cannot answer says "miss"."""

    def might_have(self, key: str) -> bool:
        """False when `key` is surely not stored, which the caller knows without awaiting get()."""
        return True

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None (absent, expired, or the backend cannot answer now)."""

    @abstractmethod
    def put_later(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds, off the caller's path (a full backlog drops it)."""

    async def flush(self) -> None:
        """Wait until what put_later() took has been written."""

    async def close(self) -> None:
        """Write what is pending and release the backend."""


class ResponseCache(CacheBackend):
    @classmethod
    def build(cls, ctx) -> "ResponseCache":
        """For the stores table (proxy/state/stores.py): `data_dir/cache`, cache.size_limit_mb."""
        return cls(os.path.join(ctx.data_dir, "cache"), ctx.config.cache.size_limit_mb)

    def __init__(self, directory: str, size_limit_mb: float, *, poll_seconds: float = 0.5,
                 flush_seconds: float = 0.25, cull_seconds: float = 1.0):
        self.store = open_store(directory, int(size_limit_mb * 1024 * 1024))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache")
        self.poll_seconds = poll_seconds
        self.flush_seconds = flush_seconds
        self.cull_seconds = cull_seconds
        self._culled_at = 0.0
        self.known: set[str] = set()
        self.writing: dict[str, tuple[bytes, float]] = {}   # key -> (value, ttl), not yet on disk
        self.flushing: dict[str, tuple[bytes, float]] = {}  # the batch being written now
        self._seen: int | None = None     # the last feed number read; None: list every key
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
        try:
            value = await self._run(self.store.get, key)
        except sqlite3.Error:       # a cache that cannot be read is a miss, not a failed request
            log.exception("cache_read_failed")
            return None
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
        store = self.store
        with store.transact():
            seq = store.incr(SEQ_KEY)
            for key, (value, ttl) in batch.items():
                store.set(key, value, expire=ttl)
            store.set(f"{FEED}{seq}", ",".join(batch), expire=FEED_TTL)
        now = time.time()
        if now - self._culled_at >= self.cull_seconds:
            self._culled_at = now
            store.cull()     # expired entries, then the least recently stored over size_limit

    async def _scan(self) -> None:
        try:
            self._seen, keys = await self._run(self._new_keys, self._seen)
        except sqlite3.Error:
            log.exception("cache_scan_failed")
            return
        self.known.update(keys)

    def _new_keys(self, seen: int | None) -> tuple[int, list[str]]:
        """(the feed's last number, the keys stored after number `seen`); every key when
        `seen` is None or the feed since it is incomplete."""
        store = self.store
        last = store.get(SEQ_KEY, 0)
        if seen is not None and seen <= last:
            keys: list[str] = []
            for n in range(seen + 1, last + 1):
                entry = store.get(f"{FEED}{n}")
                if entry is None:
                    break
                keys.extend(entry.split(","))
            else:
                return last, keys
        return last, [k for k in store.iterkeys() if not k.startswith("modelway:")]

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
        self.store.close()
