"""Change events between nodes: small JSON notices on Redis pub/sub, one channel per kind of
state (`modelway:events:<kind>`), so a store can keep a node-local copy fresh (cooldowns now;
key changes and the like later).

Pub/sub is fire-and-forget: a node that was cut off from Redis misses what was published
meanwhile, and a publish that timed out is not sent again. So a subscriber gives a
`resync(reconnected)` coroutine too, run after every (re)subscription (`reconnected=True`: with
the subscription open first and the resync after, nothing published in between is lost) and
every RESYNC_SECONDS while subscribed (`False`): it reads the authoritative state (e.g. a Redis
hash) and merges it into the local copy.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

import orjson
import structlog
from redis.exceptions import RedisError

from proxy.state.engines import EngineDown, RedisEngine

log = structlog.get_logger("modelway")

PREFIX = "modelway:events:"
RESYNC_SECONDS = 10.0     # a missed event reaches the local copy within this


@dataclass(slots=True)
class _Subscriber:
    on_event: Callable[[dict], None]
    resync: Callable[[bool], Awaitable[None]] | None


class ChangeEvents:
    def __init__(self, engine: RedisEngine):
        self.engine = engine
        self.node = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"   # this process: its own events are skipped
        self._subscribers: dict[str, _Subscriber] = {}
        self._listener: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self.subscribed = asyncio.Event()                      # set while the subscription is open

    def subscribe(self, kind: str, on_event: Callable[[dict], None],
                  resync: Callable[[bool], Awaitable[None]] | None = None) -> None:
        """Before start(): `on_event(payload)` for every event of `kind` another process published."""
        self._subscribers[kind] = _Subscriber(on_event, resync)

    def publish(self, kind: str, payload: dict, *before: tuple) -> None:
        """Send in the background (never awaited on a request's path). `before`: Redis commands
        ((name, *args) tuples) sent in the same round trip ahead of the PUBLISH, e.g. the write
        the event announces. Dropped while Redis is down: subscribers resync when it is back."""
        if not self.engine.up:
            return
        message = orjson.dumps({**payload, "node": self.node})
        task = asyncio.ensure_future(self._send(PREFIX + kind, message, before))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, channel: str, message: bytes, before: tuple) -> None:
        with contextlib.suppress(EngineDown):      # logged by the engine, once per outage
            await self.engine.call(_pipeline, before + (("PUBLISH", channel, message),))

    async def start(self) -> None:
        if self._subscribers:
            self._listener = asyncio.ensure_future(self._listen())
            self._refresher = asyncio.ensure_future(self._refresh())

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        for task in (self._listener, self._refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen(self) -> None:
        channels = [PREFIX + kind for kind in self._subscribers]
        while True:
            await self.engine.wait_up()
            pubsub = self.engine.listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                for sub in self._subscribers.values():
                    if sub.resync is not None:
                        await sub.resync(True)
                self.subscribed.set()
                async for message in pubsub.listen():
                    self._deliver(message)
            except self.engine.timeouts as exc:
                self.engine.timed_out(exc)
                await asyncio.sleep(0.1)
            except (RedisError, OSError, EngineDown) as exc:
                self.engine.failed(exc, trip=not isinstance(exc, EngineDown))
                await asyncio.sleep(0.1)    # the engine's probe decides when it is back
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            if self.subscribed.is_set():
                for sub in self._subscribers.values():
                    if sub.resync is not None:
                        with contextlib.suppress(EngineDown):
                            await sub.resync(False)

    def _deliver(self, message: dict) -> None:
        if message.get("type") != "message":
            return
        kind = message["channel"].decode()[len(PREFIX):]
        sub = self._subscribers.get(kind)
        try:
            payload = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            log.warning("state_event_malformed", kind=kind)
            return
        if sub is not None and payload.get("node") != self.node:
            try:
                sub.on_event(payload)
            except Exception:    # one bad event must not stop the listener
                log.exception("state_event_failed", kind=kind)


async def _pipeline(client, commands: tuple) -> list:
    async with client.pipeline(transaction=False) as pipe:
        for name, *args in commands:
            pipe.execute_command(name, *args)
        return await pipe.execute()
