"""The shared engines, Redis (redis-py's asyncio client, hiredis parser) and PostgreSQL (an
asyncpg pool), open for the Gateway's lifetime, each with its health.

Every call goes through `Engine.call`, bounded by the engine's timeout (`state.redis_timeout_ms`,
`state.database_timeout_ms`). A refused connection marks the engine down at once, a timeout
after `TIMEOUTS_TO_TRIP` in a row: from then on calls fail at once with `EngineDown` (no
waiting on a dead engine), the stores use their node-local fallback, the change is logged once,
and `/readyz` says `degraded`. A probe (`PING`, `SELECT 1`) runs every `PROBE_SECONDS`, up or
down: it notices a dead engine when nothing else calls it and brings the engine back when it
answers again, running the `on_up` hooks (the PostgreSQL schema upgrade, the change-event
subscriber's resync).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Awaitable, Callable

import asyncpg
import structlog
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.state import schema
from proxy.state.urls import masked

log = structlog.get_logger("modelway")

PROBE_SECONDS = 1.0          # health probe period, up or down
TIMEOUTS_TO_TRIP = 3         # consecutive timed-out calls that mark an engine down
CONNECT_SECONDS = 2.0        # opening the PostgreSQL pool / a probe's own bound (not the hot path)
MIGRATE_SECONDS = 30.0       # a schema upgrade at start may wait for another node's lock
POOL_SIZE = 10               # PostgreSQL connections per process


class EngineDown(Exception):
    """The engine cannot be used now (down, timed out or refused); the caller falls back."""


class Engine:
    """One engine's health and its bounded calls. Subclasses open the client and probe it."""

    name = "engine"
    failures: tuple[type[BaseException], ...] = (OSError,)
    timeouts: tuple[type[BaseException], ...] = (TimeoutError,)   # counted; TIMEOUTS_TO_TRIP in a row trip

    def __init__(self, url: str, timeout_ms: float):
        self.url = url
        self.timeout = timeout_ms / 1000.0
        self.up = False
        self.error: str | None = "not connected yet"
        self.changed_at = time.time()
        self._timeouts = 0
        self._reported = False      # the current outage has been logged
        self._became_up = asyncio.Event()
        self._probe: asyncio.Task | None = None
        self.on_up: list[Callable[[], Awaitable[None]]] = []

    # -- the client's lifetime ----------------------------------------------------------
    async def start(self) -> None:
        """One probe now (a healthy engine is used from the first request); then every second."""
        await self._check()
        self._probe = asyncio.ensure_future(self._probing())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _probing(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            await self._check()

    async def _check(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, CONNECT_SECONDS)):
                await self.probe()
        except asyncio.CancelledError:
            raise
        except self.timeouts as exc:
            self.timed_out(exc)
            return
        except Exception as exc:    # any other failure of the probe: the engine is not usable
            self.failed(exc, trip=True)
            return
        if not self.up:
            try:
                async with asyncio.timeout(MIGRATE_SECONDS):
                    for hook in self.on_up:
                        await hook()
            except Exception as exc:  # a failed hook (e.g. the schema upgrade) keeps it down, logged
                self.failed(exc, trip=True)
                return
            self._mark_up()

    async def probe(self) -> None:
        raise NotImplementedError

    # -- calls -------------------------------------------------------------------------
    async def call(self, fn: Callable, *args):
        """`await fn(client, *args)` within the timeout; EngineDown when the engine is down or
        this call failed for the engine's sake (refused, reset, timed out)."""
        if not self.up:
            raise EngineDown(self.error or "down")
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.run(fn, *args)
        except self.timeouts as exc:
            self.timed_out(exc)
            raise EngineDown(f"{self.name} call timed out after {self.timeout * 1000:.0f} ms") from exc
        except self.failures as exc:
            self.failed(exc, trip=True)
            raise EngineDown(f"{self.name}: {type(exc).__name__}") from exc
        self._timeouts = 0
        return result

    async def run(self, fn: Callable, *args):
        raise NotImplementedError

    async def wait_up(self) -> None:
        while not self.up:
            self._became_up.clear()
            await self._became_up.wait()

    # -- health ------------------------------------------------------------------------
    def failed(self, exc: BaseException, trip: bool) -> None:
        """A failed call or probe; `trip`: it makes the engine unusable. Logged once per outage."""
        if trip and (self.up or not self._reported):
            self._mark_down(exc)

    def timed_out(self, exc: BaseException) -> None:
        """A slow answer: the engine is down only after TIMEOUTS_TO_TRIP of them in a row."""
        self._timeouts += 1
        self.failed(exc, trip=self._timeouts >= TIMEOUTS_TO_TRIP)

    def _mark_down(self, exc: BaseException) -> None:
        was_up = self.up
        self.up, self.error, self.changed_at, self._timeouts = False, _describe(exc), time.time(), 0
        self._reported = True
        log.warning("state_engine_down", engine=self.name, url=masked(self.url), error=self.error,
                    fallback="node-local state until it answers again", was_up=was_up)
        self.went_down()

    def went_down(self) -> None:
        """Hook: drop what a dead server left behind (a pool's connections)."""

    def _mark_up(self) -> None:
        self.up, self.error, self.changed_at, self._timeouts = True, None, time.time(), 0
        log.info("state_engine_up", engine=self.name, url=masked(self.url))
        self._became_up.set()

    def status(self) -> dict:
        return {"up": self.up, "since": round(self.changed_at, 3), "error": self.error}


class RedisEngine(Engine):
    name = "redis"
    failures = (RedisError, OSError)
    timeouts = (TimeoutError, RedisTimeoutError)

    def __init__(self, url: str, timeout_ms: float):
        super().__init__(url, timeout_ms)
        options = {"retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
        self.client = aioredis.Redis.from_url(url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                              **options)
        # pub/sub reads block until a message comes: a client of its own, no read timeout
        self.listener = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=CONNECT_SECONDS,
                                                **options)

    async def probe(self) -> None:
        await self.client.ping()

    async def run(self, fn: Callable, *args):
        return await fn(self.client, *args)

    async def close(self) -> None:
        await super().close()
        await self.client.aclose()
        await self.listener.aclose()


class PostgresEngine(Engine):
    """An asyncpg pool, opened on the first successful probe (so a node starts while its
    database is down) and kept; a dead server's connections are expired when it goes down."""

    name = "postgresql"
    failures = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.exceptions.OperatorInterventionError, OSError)

    def __init__(self, url: str, timeout_ms: float):
        super().__init__(url, timeout_ms)
        self.pool: asyncpg.Pool | None = None
        self.on_up.append(self._upgrade)

    async def _upgrade(self) -> None:
        """Create or upgrade the schema before anything uses the database (each time it is back)."""
        async with self.pool.acquire() as conn:
            before, after = await schema.upgrade(conn)
        if before != after:
            log.info("state_schema_upgraded", engine=self.name, version_before=before, version=after)

    async def probe(self) -> None:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=POOL_SIZE,
                                                  timeout=CONNECT_SECONDS, command_timeout=MIGRATE_SECONDS)
        await self.pool.fetchval("SELECT 1")

    async def run(self, fn: Callable, *args):
        async with self.pool.acquire() as conn:
            return await fn(conn, *args)

    def went_down(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None

    async def close(self) -> None:
        await super().close()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CONNECT_SECONDS):
                    await self.pool.close()
            self.pool = None


class Engines:
    """The engines `state:` names (none in the embedded mode)."""

    def __init__(self, state_config):
        self.redis = RedisEngine(state_config.redis, state_config.redis_timeout_ms) if state_config.redis else None
        self.database = (PostgresEngine(state_config.database, state_config.database_timeout_ms)
                         if state_config.database else None)

    @property
    def all(self) -> list[Engine]:
        return [e for e in (self.redis, self.database) if e is not None]

    async def start(self) -> None:
        await asyncio.gather(*(e.start() for e in self.all))

    async def close(self) -> None:
        for engine in self.all:
            await engine.close()

    def status(self) -> dict:
        """For /readyz: each configured engine's health; `degraded` when one is down."""
        return {e.name: e.status() for e in self.all}

    @property
    def degraded(self) -> bool:
        return any(not e.up for e in self.all)

    def prometheus(self) -> str:
        """This process's view of its engines, in Prometheus text (metrics stay per node)."""
        if not self.all:
            return ""
        lines = ["# HELP modelway_state_backend_up 1 while this node uses the shared engine, 0 while it "
                 "falls back to node-local state.", "# TYPE modelway_state_backend_up gauge"]
        lines += [f'modelway_state_backend_up{{engine="{e.name}"}} {int(e.up)}' for e in self.all]
        return "\n".join(lines) + "\n"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
