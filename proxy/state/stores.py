"""One interface per kind of state, an embedded and a shared implementation of each, picked at
start — the shape of Django's cache backends: callers (middlewares, handlers) only see the
interface, the table below says what is behind it.

    kind               interface                          embedded (one VM)             shared
    limits, spend,     proxy.store.limitstore.LimitStore  SharedCounters (data_dir)     RedisLimits (Redis)
    concurrency
    cooldowns          proxy.health.Health                LocalHealth                   RedisHealth (Redis)
    response cache     proxy.response_cache.CacheBackend  ResponseCache (data_dir)      RedisResponseCache (Redis)
    stored responses   proxy.store.responses.ResponseStore SQLiteResponses (data_dir)   PostgresResponses (PostgreSQL)
    keys               proxy.store.base.ManagedKeys       KeyStore (data_dir)           PostgresKeyStore (PostgreSQL)
    ledger             proxy.store.base.Ledger            LedgerWriter (data_dir)       PostgresLedger (PostgreSQL)

A kind's shared implementation is used when routes.yaml's `state:` names the engine it needs;
else the embedded one. Implementations are named by "module:Class" (imported only when picked,
so the embedded mode never loads a driver); each class has `build(ctx: Context)`, and may have
`async start()` / `async close()`. To add a kind: its interface beside the embedded
implementation, one more file for the shared one (proxy/state/<kind>.py), one row in KINDS,
and one attribute read in Gateway._open_services. A third backend is one more column.

Rows whose `embedded` is None are not behind this table yet (their stores are built in
Gateway._open_services); they are listed so `modelway check` can say what a node shares.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config, StateConfig
from proxy.state.urls import masked

ENGINE_NAMES = {"redis": "Redis", "database": "PostgreSQL"}


@dataclass(frozen=True, slots=True)
class Kind:
    name: str                 # as `modelway check` says it
    attr: str                 # the Stores attribute (and Gateway attribute) it is reached by
    engine: str               # "redis" or "database": what its shared implementation needs
    embedded: str | None = None
    shared: str | None = None


KINDS: tuple[Kind, ...] = (
    # one store counts all three (proxy.store.limitstore): a key's limits are one record
    Kind("limits", "limits", "redis", "proxy.store.counters:SharedCounters", "proxy.state.limits:RedisLimits"),
    Kind("spend", "limits", "redis", "proxy.store.counters:SharedCounters", "proxy.state.limits:RedisLimits"),
    Kind("concurrency", "limits", "redis", "proxy.store.counters:SharedCounters", "proxy.state.limits:RedisLimits"),
    Kind("cooldowns", "cooldowns", "redis", "proxy.health:LocalHealth", "proxy.state.cooldowns:RedisHealth"),
    Kind("response cache", "response_cache", "redis", "proxy.response_cache:ResponseCache",
         "proxy.state.response_cache:RedisResponseCache"),
    Kind("keys", "keys", "database", "proxy.store.keys:KeyStore", "proxy.state.pg_keys:PostgresKeyStore"),
    Kind("ledger", "ledger", "database", "proxy.store.ledger:LedgerWriter", "proxy.state.pg_ledger:PostgresLedger"),
    Kind("stored responses", "responses", "database", "proxy.store.responses:SQLiteResponses",
         "proxy.state.pg_responses:PostgresResponses"),
)


@dataclass(slots=True)
class Context:
    """What a store's build() may use."""
    config: Config
    data_dir: str
    db: Any                   # proxy.store.db.Database: the embedded SQLite database
    engines: Any = None       # proxy.state.engines.Engines, when `state:` names one
    events: Any = None        # proxy.state.events.ChangeEvents, with Redis
    metrics: Any = None       # proxy.store.metrics.Metrics: this process's counters


def uses_shared(kind: Kind, state: StateConfig) -> bool:
    return kind.shared is not None and bool(getattr(state, kind.engine))


@dataclass(slots=True)
class Stores:
    """The stores picked for this process, by kind (`stores.cooldowns`, `stores.responses`)."""
    ctx: Context
    picked: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str):
        try:
            return self.picked[name]
        except KeyError:
            raise AttributeError(name) from None

    async def start(self) -> None:
        if self.ctx.engines is not None:
            await self.ctx.engines.start()
        for store in self.picked.values():
            start = getattr(store, "start", None)
            if start is not None:
                await start()
        if self.ctx.events is not None:
            await self.ctx.events.start()

    async def close(self) -> None:
        if self.ctx.events is not None:
            await self.ctx.events.close()
        for store in self.picked.values():
            close = getattr(store, "close", None)
            if close is not None and inspect.isawaitable(closing := close()):   # SharedCounters: sync
                await closing
        if self.ctx.engines is not None:
            await self.ctx.engines.close()

    def status(self) -> dict:
        """/readyz's `state`: the mode, each engine's health, `degraded` while one is down."""
        engines = self.ctx.engines
        if engines is None:
            return {"mode": "embedded", "degraded": False}
        return {"mode": "shared", "degraded": engines.degraded, **engines.status()}

    def prometheus(self) -> str:
        return self.ctx.engines.prometheus() if self.ctx.engines is not None else ""


async def open_stores(config: Config, data_dir: str, db, metrics=None) -> Stores:
    """Pick and start every kind's implementation for this process's lifetime. The engines are
    opened here (an engine that is down does not stop the start: its stores fall back)."""
    ctx = Context(config, data_dir, db, metrics=metrics)
    state = config.state
    if state.shared:
        # the drivers load only when `state:` asks for them
        from proxy.state.engines import Engines
        ctx.engines = Engines(state)
        if ctx.engines.redis is not None:
            from proxy.state.events import ChangeEvents
            ctx.events = ChangeEvents(ctx.engines.redis)
    stores = Stores(ctx)
    for kind in KINDS:
        path = kind.shared if uses_shared(kind, state) else kind.embedded
        if path is not None and kind.attr not in stores.picked:
            stores.picked[kind.attr] = _load(path).build(ctx)
    await stores.start()
    return stores


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def describe(state: StateConfig) -> list[str]:
    """What a node with this `state:` shares and what it keeps to itself, for `modelway check`."""
    lines = []
    for engine in ("redis", "database"):
        url = getattr(state, engine)
        names = [k.name for k in KINDS if k.engine == engine and uses_shared(k, state)]
        if engine == "redis" and url:
            names.append("change events")
        if names:
            lines.append(f"shared: {', '.join(names)} via {ENGINE_NAMES[engine]} ({masked(url)})")
    local = [k.name for k in KINDS if not uses_shared(k, state)]
    if local:
        lines.append(f"embedded (this node's data_dir): {', '.join(local)}")
    return lines
