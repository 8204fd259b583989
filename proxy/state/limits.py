"""Per-key limits every node shares (the LimitStore of proxy.store.limitstore over Redis): the
minute limit, max_concurrent and the money reservations of balance / daily_limit, exact across
nodes. The same algorithm as the embedded counters (proxy.store.limits), run by one Lua script
(proxy.state.limits_lua) on a Redis hash per key, `modelway:limits:{<key id>}`, with its leases
in `modelway:leases:{<key id>}`.

One round trip per request on the hot path: `acquire` is one EVALSHA (the caller awaits it);
`release` and the spend of keys without money limits are queued and sent pipelined, off the
request's path. What a node holds (requests in flight, reserved money) is leased: the node
renews its leases every lease_seconds / 3; a node that dies stops renewing, and its holdings are
given back by the next admission after the lease expires (nothing leaks beyond lease_seconds).

Redis down or slow (each call bounded by state.redis_timeout_ms, see proxy.state.engines): the
node counts on its own mmap'd counters (the embedded storage) — limits are then per node —
logged once per outage (`limits_counting_locally`); `modelway_state_backend_up{engine="redis"}`
and /readyz say so. Back to Redis as soon as the engine's probe (once a second) sees it answer.
Releases of requests admitted by Redis wait for it (at most MAX_PENDING, then dropped, logged);
a request admitted locally is released locally.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from typing import Callable

import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from proxy.state.engines import EngineDown, RedisEngine
from proxy.state.limits_lua import LUA, SHA
from proxy.store import limits
from proxy.store.counters import SharedCounters
from proxy.store.limits import DAY_US
from proxy.store.limitstore import LimitStore

log = structlog.get_logger("modelway")

CODES = (None, limits.MINUTE, limits.CONCURRENCY, limits.DAILY, limits.DAILY_SHORT, limits.BALANCE,
         limits.BALANCE_SHORT)
SHORT = {4, 6}                   # refusals whose Retry-After depends on what is reserved
LEASE_SECONDS = 30.0             # default of state.lease_seconds
MAX_PENDING = 100_000            # releases / spends kept while Redis is down
CLOSE_SECONDS = 2.0              # close(): the last releases and spend, at most this long
SHARED = "redis"                 # a hold's last item: admitted by Redis (a local hold has 2 items)


def record_keys(key_id: str) -> tuple[str, str]:
    """The key's hash and lease set (one hash tag: the same Redis Cluster slot)."""
    return f"modelway:limits:{{{key_id}}}", f"modelway:leases:{{{key_id}}}"


def _arg(value: int | None) -> int | str:
    return "" if value is None else value


async def run_script(client, keys: tuple[str, str], args: tuple):
    """EVALSHA, loading the script first if this Redis does not have it (a restart)."""
    try:
        return await client.evalsha(SHA, 2, *keys, *args)
    except NoScriptError:
        await client.script_load(LUA)
        return await client.evalsha(SHA, 2, *keys, *args)


async def run_many(client, calls: list) -> list:
    """Many script calls ((keys, args, ...) each) in one pipelined round trip; a call's error is
    its reply. A Redis that lost the script (a restart) gets it again and the calls it refused."""
    replies = await _pipelined(client, calls)
    again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if again:
        await client.script_load(LUA)
        for i, reply in zip(again, await _pipelined(client, [calls[i] for i in again])):
            replies[i] = reply
    return replies


async def run_one(client, calls: list) -> list:
    """One script call, without a pipeline's overhead (a lone request: the usual case at low
    load); an error reply is returned, as run_many does."""
    keys, args = calls[0][0], calls[0][1]
    try:
        return [await run_script(client, keys, args)]
    except ResponseError as exc:
        return [exc]


async def _pipelined(client, calls: list) -> list:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(SHA, 2, *call[0], *call[1])
    return await pipe.execute(raise_on_error=False)


class RedisLimits(LimitStore):
    def __init__(self, engine: RedisEngine, local: SharedCounters, lease_seconds: float = LEASE_SECONDS):
        self.engine = engine
        self.local = local
        self.lease_ms = int(lease_seconds * 1000)
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._held: dict[str, list[int]] = {}          # key id -> [in flight, reserved] this node holds in Redis
        self._zeroed: set[str] = set()                 # keys this node stopped holding since the last renewal
        self._calls: list[tuple] = []                  # (keys, args, reply future or None) not sent yet
        self._spend: dict[tuple[str, int], int] = {}   # (key id, UTC day) -> micro-USD not sent yet
        self._reserved: dict[str, int] = {}            # key id -> reserved, as the last short refusal saw
        self._static: dict[str, tuple[int, Callable[[], int]]] = {}
        self._sender: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._logged_at = 0.0            # engine.changed_at when counting locally was last logged
        self._fell_back = False
        self._dropping = False
        self.round_trips = self.calls = 0          # pipelines and script calls sent (logged at close)
        engine.on_up.append(self._back)

    @classmethod
    def build(cls, ctx) -> "RedisLimits":
        return cls(ctx.engines.redis, SharedCounters.in_dir(ctx.data_dir), ctx.config.state.lease_seconds)

    async def start(self) -> None:
        self._renewer = asyncio.ensure_future(self._renewing())

    # --- admission ---------------------------------------------------------------------------
    def acquire(self, key_id, now, minute_limit, max_concurrent, reserve=0, daily=None, stamp=0, balance=0):
        if not self.engine.up:
            return self._locally(key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance)
        return self._acquire(key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance)

    async def _acquire(self, key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance) -> tuple:
        concurrent = max_concurrent is not None
        holds = reserve or concurrent
        if holds:      # counted as held before Redis is: a renewal meanwhile never undercounts
            self._hold(key_id, int(concurrent), reserve)
        reply = asyncio.get_running_loop().create_future()
        self._submit(record_keys(key_id), ("admit", "", self.node, self.lease_ms, _arg(minute_limit),
                                           _arg(max_concurrent), reserve, _arg(daily), stamp, balance), reply)
        try:
            code, remaining, wait, reserved = await reply
        except (EngineDown, RedisError) as exc:
            if holds:
                self._hold(key_id, -int(concurrent), -reserve)
            return self._locally(key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance, exc)
        if code:
            if holds:
                self._hold(key_id, -int(concurrent), -reserve)
            if code in SHORT:
                self._reserved[key_id] = reserved
            return CODES[code], remaining, wait, None
        if holds or daily is not None or stamp:
            return None, remaining, wait, (reserve, concurrent, SHARED)
        return None, remaining, wait, None

    def _locally(self, key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance,
                 why: BaseException | None = None) -> tuple:
        if self._logged_at != self.engine.changed_at:   # once per outage (or per up period of lone timeouts)
            self._logged_at, self._fell_back = self.engine.changed_at, True
            log.warning("limits_counting_locally", engine="redis", error=str(why or self.engine.error),
                        note="limits are per node until Redis answers again")
        return self.local.acquire(key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance)

    def _hold(self, key_id: str, inflight: int, reserve: int) -> None:
        held = self._held.get(key_id)
        if held is None:
            held = self._held[key_id] = [0, 0]
        held[0] += inflight
        held[1] += reserve
        if held[0] <= 0 and held[1] <= 0:
            del self._held[key_id]
            self._zeroed.add(key_id)     # the next renewal clears what a timed-out reply may have left

    def reserved(self, key_id: str) -> int:
        if not self.engine.up:
            return self.local.reserved(key_id)
        return self._reserved.pop(key_id, 0)

    # --- release and spend, pipelined off the request's path --------------------------------
    def release(self, key_id: str, now: float, hold: tuple, cost: int) -> None:
        if len(hold) == 2:
            self.local.release(key_id, now, hold, cost)
            return
        reserve, concurrent, _ = hold
        if reserve or concurrent:
            self._hold(key_id, -int(concurrent), -reserve)
        day = int(now * 1_000_000) // DAY_US
        self._submit(record_keys(key_id), ("settle", "", self.node, self.lease_ms, day, reserve, cost,
                                          int(concurrent)))

    def _submit(self, keys, args, reply: asyncio.Future | None = None) -> None:
        """Queue a script call for the next pipeline: an admission (`reply` awaited by its
        request) or a release (kept, in order, until Redis takes it)."""
        if reply is None and len(self._calls) >= MAX_PENDING:
            if not self._dropping:     # once until the queue drains
                self._dropping = True
                log.error("limits_releases_dropped", engine="redis", pending=len(self._calls),
                          note="their cost is not counted in Redis (the ledger has it); what they held "
                               "is freed by the next renewal")
            return
        self._calls.append((keys, args, reply))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        """Send what is queued, one pipeline at a time: a lone request's admission goes at once,
        a burst's admissions and releases share round trips (and a connection)."""
        try:
            while self._calls:
                batch, self._calls = self._calls, []
                self._dropping = False
                self.round_trips += 1
                self.calls += len(batch)
                try:
                    replies = await self.engine.call(run_one if len(batch) == 1 else run_many, batch)
                except EngineDown as exc:
                    for _, _, reply in batch:
                        if reply is not None and not reply.done():
                            reply.set_exception(exc)       # admitted locally instead
                    self._calls[:0] = [call for call in batch if call[2] is None]
                    if not self.engine.up:
                        await self.engine.wait_up()
                    continue
                for (_, _, reply), result in zip(batch, replies):
                    if reply is not None and not reply.done():
                        if isinstance(result, Exception):
                            reply.set_exception(result)
                        else:
                            reply.set_result(result)
        finally:
            self._sender = None

    def defer_spend(self, key_id: str, usd: float, now: float) -> None:
        slot = key_id, int(now // 86400)
        self._spend[slot] = self._spend.get(slot, 0) + round(usd * 1_000_000)

    async def flush_spend(self) -> None:
        if not self._spend:
            return
        pending, self._spend = self._spend, {}
        calls = [(record_keys(key_id), ("add_spend", "", self.node, self.lease_ms, day, micro))
                 for (key_id, day), micro in pending.items()]
        try:
            await self.engine.call(run_many, calls)
        except EngineDown:
            if len(self._spend) < MAX_PENDING:
                for slot, micro in pending.items():
                    self._spend[slot] = self._spend.get(slot, 0) + micro

    # --- static balances ---------------------------------------------------------------------
    def seed_static(self, key_id: str, stamp: int, left: Callable[[], int]) -> None:
        """Seeded in Redis in the background (again each time Redis comes back: it may have
        restarted empty), and in the local counters at once for the fallback."""
        self._static[key_id] = stamp, left
        self.local.seed_static(key_id, stamp, left)
        if self.engine.up:
            task = asyncio.ensure_future(self._seed(self.engine.client, key_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _seed(self, client, key_id: str) -> None:
        stamp, left = self._static[key_id]
        keys = record_keys(key_id)
        try:
            found = int(await client.hget(keys[0], "stamp") or 0)
            if found != stamp:
                await run_script(client, keys, ("seed", "", self.node, self.lease_ms, stamp, left()))
        except Exception as exc:   # noqa: BLE001  Redis went away meanwhile: seeded again when it is back
            log.warning("limits_seed_deferred", key_id=key_id, error=type(exc).__name__)

    async def _back(self) -> None:
        """Redis answers again (engine on_up hook, before it is used): the script, static
        seeds, and this node's holdings (a Redis that restarted empty has none of them)."""
        client = self.engine.client
        # the pool's connections to a killed server are dead; unused, each would fail a call
        # (tripping the engine again) before a fresh one is opened
        await client.connection_pool.disconnect(inuse_connections=False)
        await client.script_load(LUA)
        if self._fell_back:
            self._fell_back = False
            log.info("limits_shared_again", engine="redis")
        for key_id in list(self._static):
            await self._seed(client, key_id)
        await self._renew(client)

    # --- leases --------------------------------------------------------------------------------
    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if self.engine.up and (self._held or self._zeroed):
                with contextlib.suppress(EngineDown):
                    await self.engine.call(self._renew)

    async def _renew(self, client) -> None:
        """Extend this node's leases and set its holdings to what it holds, one pipeline."""
        zeroed, self._zeroed = self._zeroed, set()
        calls = [(record_keys(key_id), ("renew", "", self.node, self.lease_ms, n, r))
                 for key_id, (n, r) in self._held.items()]
        calls += [(record_keys(key_id), ("renew", "", self.node, self.lease_ms, 0, 0))
                  for key_id in zeroed if key_id not in self._held]
        if calls:
            await run_many(client, calls)

    async def close(self) -> None:
        """The last releases and spend (bounded), then the local counters."""
        if self._renewer is not None:
            self._renewer.cancel()
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.flush_spend()
                if self._sender is not None and self.engine.up:
                    await self._sender
        for task in (self._sender, *self._tasks):
            if task is not None:
                task.cancel()
        log.info("limits_redis_calls", round_trips=self.round_trips, script_calls=self.calls)
        self.local.close()
