"""Cooldowns every node shares (the `Health` interface of proxy/health.py over Redis): a target
that fails on one node is skipped on all.

Reads are on every request's path, so they stay synchronous and local: a `LocalHealth` is this
node's copy. A cooldown that starts or ends here is written to the Redis hash
`modelway:cooldowns` ({"[provider, model]": unix deadline}) and announced on the change-event
channel, in one round trip, in the background; every other node applies the event to its copy
as it arrives (pub/sub, not a poll: a millisecond on a LAN, no traffic while nothing changes);
every 10 s each node also reads the whole hash, so an event it missed reaches it anyway. A
node that (re)subscribes reads the hash and announces its own cooldowns the others have not
heard of (those it started while Redis was down).

Consecutive failures (`cooldown_after`) are counted by each node on the requests it saw; once
a node cools a target down, every node skips it until the deadline, and the first node that
gets an answer from it ends the cooldown everywhere. While Redis is down, the copy alone
decides: each node's own cooldowns, as in the embedded mode.
"""
from __future__ import annotations

import time

import orjson
import structlog

from proxy.health import Health, LocalHealth
from proxy.state.engines import EngineDown, RedisEngine
from proxy.state.events import ChangeEvents

log = structlog.get_logger("modelway")

HASH = "modelway:cooldowns"
KIND = "cooldowns"


class RedisHealth(Health):
    def __init__(self, engine: RedisEngine, events: ChangeEvents):
        self.engine = engine
        self.events = events
        self.local = LocalHealth()
        events.subscribe(KIND, self._on_event, self._resync)

    @classmethod
    def build(cls, ctx) -> "RedisHealth":
        return cls(ctx.engines.redis, ctx.events)

    def remaining(self, target) -> float:
        return self.local.remaining(target)

    def failure(self, target, after: int, seconds: float) -> bool:
        started = self.local.failure(target, after, seconds)
        if started:
            self._announce(target)
        return started

    def rate_limited(self, target, seconds: float) -> bool:
        started = self.local.rate_limited(target, seconds)
        if started:
            self._announce(target)
        return started

    def success(self, target) -> bool:
        ended = self.local.success(target)
        if ended:
            self.events.publish(KIND, {"target": list(target), "until": 0}, ("HDEL", HASH, _field(target)))
        return ended

    def snapshot(self) -> dict[tuple, float]:
        return self.local.snapshot()

    def _announce(self, target) -> None:
        until = time.time() + self.local.remaining(target)
        self.events.publish(KIND, {"target": list(target), "until": until}, ("HSET", HASH, _field(target), until))

    def _on_event(self, payload: dict) -> None:
        target = tuple(payload["target"])
        left = float(payload["until"]) - time.time()
        if left > 0:
            self.local.hold(target, left)
        else:
            self.local.success(target)
        log.info("cooldown_shared", provider=target[0], model=target[1], seconds=round(max(left, 0.0), 1),
                 source=payload.get("node"))

    async def _resync(self, reconnected: bool) -> None:
        try:
            entries = await self.engine.call(_hgetall)
        except EngineDown:
            return
        now, remote, expired = time.time(), set(), []
        for field, value in entries.items():
            target, left = tuple(orjson.loads(field)), float(value) - now
            if left > 0:
                self.local.hold(target, left)
                remote.add(target)
            else:
                expired.append(field)
        for target in self.local.snapshot() if reconnected else ():
            if target not in remote:           # started here while Redis was down
                self._announce(target)
        if expired:
            try:
                await self.engine.call(_hdel, expired)
            except EngineDown:
                pass


def _field(target) -> bytes:
    return orjson.dumps(list(target))


async def _hgetall(client) -> dict:
    return await client.hgetall(HASH)


async def _hdel(client, fields: list) -> None:
    await client.hdel(HASH, *fields)
