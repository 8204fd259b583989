"""The Gateway: long-lived services plus the live State (config, table, providers, chain),
swapped atomically on reload. A request keeps the State it started with."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import structlog

from proxy.config import Config, load_config
from proxy.health import Health, LocalHealth
from proxy.pipeline import Chain, Handler, build_middlewares
from proxy.providers import provider_class
from proxy.providers.base import Provider
from proxy.routing import RouteTable
from proxy.store.files import private_dir
from proxy.tracing import Tracing, from_env

log = structlog.get_logger("modelway")


@dataclass(slots=True)
class State:
    config: Config
    table: RouteTable
    providers: dict[str, Provider]
    disabled: dict[str, str]          # provider name -> why it is off
    chain: Chain
    endpoints: dict[str, tuple[tuple, Handler]]   # endpoint -> (leading before hooks, handler)
    health: Health = field(default_factory=LocalHealth)
    loaded_at: float = field(default_factory=time.time)
    inflight: int = 0
    _caps: dict = field(default_factory=dict)

    def capabilities(self, route, target) -> dict[str, bool]:
        """The route's capabilities over its target provider type's defaults (memoised)."""
        key = (route.name, target.provider)
        caps = self._caps.get(key)
        if caps is None:
            from proxy.capabilities import effective
            ptype = self.config.providers[target.provider].type
            caps = self._caps[key] = effective(route, provider_class(ptype).default_capabilities)
        return caps


class Gateway:
    def __init__(self, config: Config, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.state: State | None = None
        self.data_dir = os.path.abspath(config.server.data_dir)
        self.draining = False
        self.cutting = False                    # the drain deadline is passing: end what is open
        self.requests: set[asyncio.Task] = set()  # handler tasks of the API requests in flight
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()  # closing retired tables after a reload
        self._spend_flusher: asyncio.Task | None = None
        self.tracer: Tracing | None = None        # OTEL_* traces, set up by start() in the worker

    async def start(self) -> None:
        self.tracer = from_env()                # before anything opens: a bad OTEL_* value stops here
        private_dir(self.data_dir)
        await self._open_services()
        for warning in self.config.warnings:
            log.warning("config_warning", message=warning)
        self.state = await self._build(self.config, old=None)

    async def _build(self, config: Config, old: State | None) -> State:
        from proxy.dispatch import dispatch
        from proxy.account import account_endpoint
        from proxy.console.api import console_endpoint
        from proxy.models import list_models_endpoint
        from proxy.responses import endpoint as responses
        providers: dict[str, Provider] = {}
        disabled: dict[str, str] = {}
        started: list[Provider] = []
        try:
            for name, pc in config.providers.items():
                if pc.disabled_reason:
                    disabled[name] = pc.disabled_reason
                    continue
                reuse = old.providers.get(name) if old else None
                if reuse is not None and reuse.config == pc:
                    providers[name] = reuse
                    continue
                provider = provider_class(pc.type)(pc)
                if self.tracer is not None:
                    provider.trace_headers = self.tracer.headers
                await provider.start()
                started.append(provider)
                providers[name] = provider
            chain = Chain(build_middlewares(config, self))
        except BaseException:
            for provider in started:
                await provider.close()
            raise
        endpoints = {"chat": chain.wrap(dispatch), "embeddings": chain.wrap(dispatch),
                     "messages": chain.wrap(dispatch), "count_tokens": chain.wrap(dispatch),
                     "completions": chain.wrap(dispatch), "models": chain.wrap(list_models_endpoint),
                     "account": chain.wrap(account_endpoint), "responses": responses.wrap(chain.wrap(dispatch)),
                     "stored_responses": chain.wrap(responses.stored), "console": chain.wrap(console_endpoint)}
        if old is not None and config.state != old.config.state:
            log.warning("config_warning", message="state: changes take effect at the next restart")
        return State(config, RouteTable.build(config.models), providers, disabled, chain, endpoints, self.cooldowns)

    async def reload(self) -> bool:
        """Re-read the config file; swap on success, keep the old table on any problem. The
        retired table's providers and middlewares are closed in the background once its
        in-flight requests are done. Reloads never overlap."""
        async with self._reload_lock:
            try:
                config = load_config(self.config_path)
                state = await self._build(config, self.state)
            except Exception as exc:  # ConfigError, MiddlewareBuildError, provider start failure
                for line in str(exc).splitlines():
                    log.error("reload_failed", problem=line, pid=os.getpid())
                return False
            old, self.state, self.config = self.state, state, config
            self.ledger.pruner.retention_days = config.ledger.retention_days
            for warning in config.warnings:
                log.warning("config_warning", message=warning)
            log.info("config_reloaded", version=config.version, models=len(config.models), pid=os.getpid())
            task = asyncio.ensure_future(self._close_unused(old, state))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return True

    async def _close_unused(self, old: State, new: State) -> None:
        stale = [p for n, p in old.providers.items() if new.providers.get(n) is not p]
        deadline = time.monotonic() + self.config.server.drain_seconds
        while old.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await old.chain.close()
        for p in stale:
            await p.close()

    async def _open_services(self) -> None:
        """Storage that lives as long as the process, shared by middlewares and endpoints:
        one SQLite database (ledger + managed keys, in its own thread), per-worker metrics
        snapshots; the stores picked per kind (proxy/state/stores.py: the limit counters, the
        response cache, cooldowns, stored responses)."""
        from proxy.store.db import Database
        from proxy.store.metrics import Metrics
        from proxy.state.stores import open_stores
        self.db = Database(self.data_dir)
        self.metrics = Metrics(self.data_dir)
        self.stores = await open_stores(self.config, self.data_dir, self.db, self.metrics)   # embedded or shared
        self.responses, self.cooldowns = self.stores.responses, self.stores.cooldowns
        self.response_cache = self.stores.response_cache
        self.keys, self.ledger = self.stores.keys, self.stores.ledger
        self.counters = self.stores.limits      # the per-key limits (LimitStore): data_dir's counters or Redis
        await self.metrics.start()
        self._spend_flusher = asyncio.ensure_future(self._flush_spend())

    async def _flush_spend(self) -> None:
        """This worker's spend reaches the shared counters (other workers' budget checks)."""
        from proxy.store.counters import SPEND_FLUSH_SECONDS
        while True:
            await asyncio.sleep(SPEND_FLUSH_SECONDS)
            flushing = self.counters.flush_spend()
            if flushing is not None:
                await flushing

    def cut_requests(self) -> None:
        """At the drain deadline: every API request still in flight ends cleanly, a stream with
        an error event and [DONE], a request not yet answered with a 503 server_shutting_down
        (its handler sees the cancellation and writes that), never a dropped connection."""
        self.cutting = True
        for task in list(self.requests):
            task.cancel()

    async def close(self) -> None:
        from proxy.store.db import stop_task
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.state:
            await self.state.chain.close()
            for p in self.state.providers.values():
                await p.close()
        await self.keys.close()
        await self.ledger.close()          # flushes every queued ledger row
        await self.metrics.close()
        await stop_task(self._spend_flusher)
        await self.stores.close()          # the response cache and the counters write what is pending
        await self.db.aclose()
        if self.tracer is not None:
            await self.tracer.shutdown()      # exports what is queued
