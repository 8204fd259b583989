"""The response cache in Redis, shared by every node (the `CacheBackend` of proxy/response_cache.py).

Keys are `mw:cache:<digest>` (the digest middlewares/cache.py computes), values the stored answer:
its JSON bytes as they are, or zlib-compressed (level 1, in a thread) when longer than
COMPRESS_OVER bytes (a stored answer starts with `{`, zlib's output never does). Expiry is Redis's own (`SET ... PX`);
the size is bounded by the server's `maxmemory` with an evicting `maxmemory-policy` (README).

Lookups are on the request's path: those of one event-loop iteration go as one MGET (a busy node
needs few connections and round trips), bounded by `timeout_ms` (50 ms by default); a lookup
that fails or times out is a miss, never an error. Stores are not: `put_later` queues the entry
and one writer task sends what has queued as pipelines of up to BATCH SETs (bounded by
`write_timeout_ms`); until written an entry is served from memory, and a queue of MAX_BACKLOG
entries drops new ones.

Redis down (a refused or reset connection, or TIMEOUTS_TO_TRIP timeouts in a row): the node
uses `fallback`, its embedded cache in data_dir, for lookups and stores; logged once per outage
(`cache_backend_down`, then `cache_backend_up`), every failed call counted in
`modelway_cache_backend_errors_total{op}`. While down, a PING at most every `probe_seconds`
(sent by the next lookup or store, never awaited by it) brings Redis back. Given the node's
Redis engine (`build()` from the stores table), its health counts too (`engine` below).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.response_cache import CacheBackend, ResponseCache

log = structlog.get_logger("modelway")

PREFIX = "mw:cache:"
COMPRESS_OVER = 2048          # bytes; smaller answers are stored as they are (bench/redis_cache.py)
MAX_BACKLOG = 5000            # entries waiting for the writer; more are dropped
BATCH = 256                   # entries per pipeline
TIMEOUTS_TO_TRIP = 3          # timed-out calls in a row that switch the node to its local cache
PROBE_TIMEOUT = 1.0           # seconds a probe (PING) may take; it is never on a request's path
SLOW = (TimeoutError, RedisTimeoutError)        # counted toward TIMEOUTS_TO_TRIP
DOWN = (RedisConnectionError, OSError)          # else: the server is gone, trip at once


class RedisResponseCache(CacheBackend):
    """`client`: a redis.asyncio.Redis returning bytes (not decode_responses), owned by the
    caller. `fallback`: the node-local cache used while Redis is down, owned (closed) by this."""

    def __init__(self, client, fallback: CacheBackend | None = None, *, timeout_ms: float = 50.0,
                 write_timeout_ms: float = 500.0, probe_seconds: float = 1.0, metrics=None, engine=None):
        self.client = client
        # optional: the node's Redis engine (proxy/state/engines.py). Its health counts too: while
        # it is down this cache uses the fallback; a refused or reset connection is reported to it
        # (one log line, its probe, /readyz degraded). Timeouts still trip this cache alone.
        self.engine = engine
        self.fallback = fallback
        self.timeout = timeout_ms / 1000.0
        self.write_timeout = write_timeout_ms / 1000.0
        self.probe_seconds = probe_seconds
        self.metrics = metrics
        self.up = True                # until a call says otherwise
        self.error: str | None = None
        self._error_logged = False      # an error reply (not an outage) is logged once
        self._timeouts = 0
        self._probe_at = 0.0
        self._probe: asyncio.Task | None = None
        self.pending: dict[str, tuple[bytes, float]] = {}   # key -> (value, ttl), not yet sent
        self.sending: dict[str, tuple[bytes, float]] = {}   # the batch in flight
        self._writer: asyncio.Task | None = None
        self._batch: dict[str, asyncio.Future] | None = None   # lookups joining this iteration's MGET

    @classmethod
    def build(cls, ctx) -> "RedisResponseCache":
        """For the stores table (proxy/state/stores.py): over the node's Redis client, the
        embedded cache in data_dir as the fallback."""
        redis = ctx.engines.redis
        return cls(redis.client, ResponseCache.build(ctx), timeout_ms=ctx.config.state.redis_timeout_ms,
                   metrics=ctx.metrics, engine=redis)

    # -- the interface -------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.up and (self.engine is None or self.engine.up)

    def might_have(self, key: str) -> bool:
        if self.usable:
            return True
        self._maybe_probe()
        return self.fallback is not None and self.fallback.might_have(key)

    async def get(self, key: str) -> bytes | None:
        queued = self.pending.get(key) or self.sending.get(key)
        if queued is not None:
            return queued[0]
        if not self.usable:
            self._maybe_probe()
            return await self.fallback.get(key) if self.fallback is not None else None
        batch = self._batch
        if batch is not None:                 # another lookup of this loop iteration sends it
            found = batch.get(key)
            if found is None:
                found = batch[key] = asyncio.get_running_loop().create_future()
            raw = await asyncio.shield(found)     # a cancelled request leaves the others' lookup alone
        else:
            raw = await self._lookup(key)
        return None if raw is None else _decode(raw)

    async def _lookup(self, key: str) -> bytes | None:
        """Open this loop iteration's batch, let the other lookups of the iteration join it, send
        them all as one MGET within `timeout`; a failure answers every one None (a miss)."""
        self._batch = batch = {}
        keys, values = [key], [None]
        try:
            await asyncio.sleep(0)
            self._batch = None
            keys += batch
            async with asyncio.timeout(self.timeout):
                values = await self.client.mget([PREFIX + k for k in keys]) if batch else [
                    await self.client.get(PREFIX + key)]
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
        else:
            self._timeouts = 0
        finally:
            if self._batch is batch:
                self._batch = None
            answers = values[1:] if len(values) == len(keys) else itertools.repeat(None)
            for found, value in zip(batch.values(), answers):
                if not found.done():
                    found.set_result(value)
        return values[0]

    def put_later(self, key: str, value: bytes, ttl: float) -> None:
        if not self.usable:
            self._maybe_probe()
            if self.fallback is not None:
                self.fallback.put_later(key, value, ttl)
            return
        if len(self.pending) >= MAX_BACKLOG:       # Redis is not keeping up: skip, never queue forever
            return
        self.pending[key] = (value, ttl)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def flush(self) -> None:
        while self._writer is not None:
            await asyncio.shield(self._writer)
        if self.fallback is not None:
            await self.fallback.flush()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.fallback is not None:
            await self.fallback.close()

    # -- writes --------------------------------------------------------------------------
    async def _write(self) -> None:
        """Send what has queued, one pipeline per round, until nothing is left."""
        try:
            while self.pending and self.usable:
                self.sending = batch = self._take()
                try:
                    await self._send(batch)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._failed("set", exc)
                    if not self.usable and self.fallback is not None:   # keep them on this node
                        for key, (value, ttl) in batch.items():
                            self.fallback.put_later(key, value, ttl)
                else:
                    self._timeouts = 0
                finally:
                    self.sending = {}
            if self.pending and self.fallback is not None:        # went down with entries queued
                for key, (value, ttl) in self.pending.items():
                    self.fallback.put_later(key, value, ttl)
            self.pending = {}
        finally:
            self._writer = None

    def _take(self) -> dict[str, tuple[bytes, float]]:
        if len(self.pending) <= BATCH:
            batch, self.pending = self.pending, {}
            return batch
        pending = self.pending
        return {key: pending.pop(key) for key in list(itertools.islice(pending, BATCH))}

    async def _send(self, batch: dict[str, tuple[bytes, float]]) -> None:
        entries = [(PREFIX + key, value, max(1, int(ttl * 1000))) for key, (value, ttl) in batch.items()]
        if any(len(value) > COMPRESS_OVER for _, value, _ in entries):
            entries = await asyncio.to_thread(_compressed, entries)    # zlib lets go of the GIL
        async with asyncio.timeout(self.write_timeout):
            async with self.client.pipeline(transaction=False) as pipe:
                for name, value, ms in entries:
                    pipe.set(name, value, px=ms)
                await pipe.execute()

    # -- health --------------------------------------------------------------------------
    def _failed(self, op: str, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.inc("modelway_cache_backend_errors_total", (op,))
        if not isinstance(exc, SLOW + DOWN):    # an error reply (e.g. OOM under maxmemory noeviction)
            if not self._error_logged:
                self._error_logged = True
                # the class only: redis-py's message quotes the command, i.e. the stored answer
                log.warning("cache_backend_error", op=op, error=type(exc).__name__)
            return
        slow = isinstance(exc, SLOW)       # (the builtin TimeoutError is an OSError too)
        if self.engine is not None and not slow:
            self.engine.failed(exc, trip=True)      # logged once by the engine, which probes it
            return
        if slow:
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_TRIP:
                return
        if self.up:
            self.up, self.error, self._timeouts = False, _describe(exc), 0
            self._probe_at = time.monotonic() + self.probe_seconds
            log.warning("cache_backend_down", backend="redis", op=op, error=self.error,
                        fallback="node-local cache until Redis answers again")

    def _maybe_probe(self) -> None:
        if self.up or self._probe is not None or time.monotonic() < self._probe_at:
            return
        self._probe_at = time.monotonic() + self.probe_seconds
        self._probe = asyncio.ensure_future(self._ping())

    async def _ping(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, PROBE_TIMEOUT)):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError):
            if self.metrics is not None:
                self.metrics.inc("modelway_cache_backend_errors_total", ("probe",))
        else:
            if not self.up:
                self.up, self.error, self._timeouts = True, None, 0
                log.info("cache_backend_up", backend="redis")
        finally:
            self._probe = None


def _compressed(entries: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
    return [(name, zlib.compress(value, 1) if len(value) > COMPRESS_OVER else value, ms)
            for name, value, ms in entries]


def _decode(raw: bytes) -> bytes | None:
    if raw[:1] == b"{":
        return raw
    try:
        return zlib.decompress(raw)
    except zlib.error:       # not ours, or damaged: a miss
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__

