"""Limits exact across nodes (proxy.state.limits): the Lua script computes what the Python
reference (proxy.store.limits) computes, field for field; three `modelway serve` nodes sharing
one Redis let exactly a key's minute limit through, hold max_concurrent together (a node that
dies frees its slots after the lease), never overspend a balance; Redis stopped under load
turns into node-local counting (no 500, no hang) and back."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis
from redis import asyncio as aioredis

from proxy.state.engines import RedisEngine
from proxy.state.limits import CODES, RedisLimits, record_keys, run_script
from proxy.store.counters import SharedCounters
from proxy.store import limits
from proxy.store.limits import DAY_US
from tests.cli.procs import Server, clean_env
from tests.engines import redis_server  # noqa: F401  (session fixture)
from tests.ops.conftest import eventually, http, write_config  # noqa: F401  (fixtures, helpers)
from tests.shared.conftest import headers, sha

NODE = "reference-test"
LEASE_MS = 10 ** 12                       # leases never expire in the equivalence test


async def _lua(client, key_id: str, op: str, now_us: int, *args):
    return await run_script(client, record_keys(key_id), (op, now_us, NODE, LEASE_MS, *args))


def _opt(value):
    return "" if value is None else value


async def test_lua_and_python_agree_on_every_field_over_random_operations(redis_server):  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for seed in range(12):
            await _run_sequence(client, random.Random(seed), f"equiv-{seed}", 300)
    finally:
        await client.aclose()


async def _run_sequence(client, rnd: random.Random, key_id: str, steps: int) -> None:
    await client.delete(*record_keys(key_id))
    f = [0] * limits.FIELDS
    now = int(time.time() * 1_000_000) + rnd.randrange(DAY_US)
    in_flight: list[tuple[int, int, bool]] = []          # (day, reserve, concurrency) of admitted requests
    minute_limit = rnd.choice([None, 1, 3, 7, 100, 7_000_000])
    for step in range(steps):
        now += rnd.choice([0, 0, 1, 999, 8_571_428, 30_000_000, 61_000_000, DAY_US // 3, DAY_US])
        op = rnd.choices(["admit", "settle", "seed", "add_spend"], [6, 3, 1, 1])[0]
        if op == "admit":
            concurrent = rnd.choice([None, 1, 2, 5])
            reserve = rnd.choice([0, 1, 500, 10_000, 3_000_000])
            daily = rnd.choice([None, 0, 20_000, 5_000_000])
            stamp = rnd.choice([0, 0, 5, 9, -7, -3_000_002])
            balance = rnd.choice([0, 15_000, 4_000_000, 10 ** 12])
            limit = minute_limit if rnd.random() < 0.9 else rnd.choice([None, 2])
            want = limits.admit(f, now, limit, concurrent, reserve, daily, stamp, balance)
            got = await _lua(client, key_id, "admit", now, _opt(limit), _opt(concurrent), reserve, _opt(daily),
                             stamp, balance)
            assert (CODES[got[0]], got[1], got[2]) == want, (key_id, step)
            if want[0] is None and (reserve or concurrent is not None or daily is not None or stamp):
                in_flight.append((now // DAY_US, reserve, concurrent is not None))
        elif op == "settle" and in_flight:
            day, reserve, concurrency = in_flight.pop(rnd.randrange(len(in_flight)))
            cost = rnd.choice([0, reserve, reserve // 2, reserve + 7, 1])
            limits.settle(f, day, reserve, cost, concurrency)
            await _lua(client, key_id, "settle", now, day, reserve, cost, int(concurrency))
        elif op == "seed":
            stamp, balance = rnd.choice([-7, -11, 3]), rnd.choice([0, 20_000, 10 ** 9])
            limits.seed(f, stamp, balance)
            await _lua(client, key_id, "seed", now, stamp, balance)
        elif op == "add_spend":
            day, cost = now // DAY_US - rnd.choice([0, 0, 1]), rnd.choice([1, 999, 123_456])
            limits.add_spend(f, day, cost)
            await _lua(client, key_id, "add_spend", now, day, cost)
        got = await _lua(client, key_id, "read", now)
        assert list(got) == f[1:], (key_id, step, op)


async def test_a_slot_a_lost_reply_left_is_cleared_by_the_next_renewal(redis_server, tmp_path):  # noqa: F811
    engine = RedisEngine(redis_server.url, 250)
    await engine.start()
    store = RedisLimits(engine, SharedCounters.in_dir(tmp_path), lease_seconds=0.6)
    await store.start()
    try:
        await engine.client.delete(*record_keys("lost-reply"))
        # an admission Redis ran but whose reply timed out: the node counted it locally instead
        await run_script(engine.client, record_keys("lost-reply"),
                         ("admit", "", store.node, 600_000, "", 1, 0, "", 0, 0))
        verdict = await store.acquire("lost-reply", time.time(), None, 1)
        assert verdict[0] == "concurrency_limit_exceeded"

        async def admitted():
            return (await store.acquire("lost-reply", time.time(), None, 1))[0] is None
        started = time.monotonic()
        await eventually(admitted, 3, "the renewal set the node's holding to what it holds")
        assert time.monotonic() - started < 1.5                 # a renewal (every 0.2 s), not the lease
        assert await engine.client.hget(record_keys("lost-reply")[0], "inflight") == b"1"
    finally:
        await store.close()
        await engine.close()


# --- three nodes ---------------------------------------------------------------------------------
# redis_timeout_ms: a loaded test machine opening a burst of new connections (the default's 50 ms
# would send some requests to node-local counting, as it should when Redis is that slow)
KEYS = {"minute": "sk-limits-minute", "few": "sk-limits-few", "money": "sk-limits-money", "busy": "sk-limits-busy"}
MINUTE_LIMIT, FEW, BALANCE, LEASE = 10, 2, 1.0, 3

CONFIG = """
server: {{data_dir: ./var, drain_seconds: 1}}
providers:
  mock: {{type: mock}}
  sleepy: {{type: mock, options: {{latency_ms: 8000}}}}
models:
  mock-echo: {{targets: [{{provider: mock}}]}}
  priced: {{targets: [{{provider: mock, model: echo}}], pricing: {{input: 1000, output: 1000}}}}
  sleepy: {{targets: [{{provider: sleepy}}]}}
keys:
  - {{label: minute, sha256: "{minute}", minute_limit: {limit}}}
  - {{label: few, sha256: "{few}", max_concurrent: {few_n}}}
  - {{label: money, sha256: "{money}", balance: {balance}}}
  - {{label: busy, sha256: "{busy}", minute_limit: 100000, max_concurrent: 1000}}
state: {{redis: "{redis}", redis_timeout_ms: 300, lease_seconds: {lease}}}
"""


class Nodes:
    def __init__(self, root, redis_url: str):
        self.root, self.redis_url = root, redis_url
        self.nodes: list[Server] = []

    async def start(self, n: int = 3) -> list[Server]:
        text = CONFIG.format(redis=self.redis_url, limit=MINUTE_LIMIT, few_n=FEW, balance=BALANCE, lease=LEASE,
                             **{name: sha(secret) for name, secret in KEYS.items()})
        for i in range(n):
            home = self.root / f"vm{i + 1}"
            home.mkdir()
            write_config(home / "routes.yaml", text)
            self.nodes.append(Server(home, "--config", str(home / "routes.yaml"), env=clean_env()))
        for node in self.nodes:
            await eventually(lambda: node.events("listening"), 30, "listening", node)
        return self.nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
async def nodes(tmp_path, redis_server):  # noqa: F811
    if redis_server.proc is None:            # a test that stopped it failed before starting it again
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    group = Nodes(tmp_path, redis_server.url)
    yield group
    group.stop()


async def post(http, node, key: str, model: str = "mock-echo", text: str = "hello", **extra):
    """(status, error code or None, parsed body, seconds taken)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    started = time.monotonic()
    async with http.post(node.url + "/v1/chat/completions", json=body, headers=headers(KEYS[key])) as resp:
        data = await resp.json()
    code = data["error"].get("code") if resp.status != 200 else None
    return resp.status, code, data, time.monotonic() - started


def record(redis_url: str, label: str) -> dict:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hgetall(record_keys(f"static:{label}")[0])
    finally:
        client.close()


async def test_three_times_the_minute_limit_across_three_nodes_lets_exactly_the_limit_through(nodes, http):
    vm = await nodes.start(3)
    sent = [post(http, vm[i % 3], "minute") for i in range(3 * MINUTE_LIMIT)]
    results = await asyncio.gather(*sent)
    statuses = [r[0] for r in results]
    assert statuses.count(200) == MINUTE_LIMIT, statuses
    assert {r[1] for r in results if r[0] != 200} == {"minute_limit_exceeded"}
    # every node answered some of them: the limit is the cluster's, not each node's
    for node in vm:
        assert node.events("limits_counting_locally") == []


async def test_max_concurrent_across_nodes_dead_node_freed_after_lease(nodes, http, redis_server):  # noqa: F811
    vm1, vm2, vm3 = await nodes.start(3)
    slow = [asyncio.ensure_future(post(http, vm1, "few", "sleepy")) for _ in range(FEW)]
    await eventually(lambda: record(redis_server.url, "few").get("inflight") == str(FEW), 5, "two in flight")
    for node in (vm1, vm2, vm3):            # the slots are taken on every node
        status, code, _, took = await post(http, node, "few")
        assert (status, code) == (429, "concurrency_limit_exceeded")
        assert took < 1.0
    vm1.proc.kill()                          # dies holding both slots: nobody releases them
    killed = time.monotonic()
    await asyncio.gather(*slow, return_exceptions=True)
    status, code, _, _ = await post(http, vm2, "few")
    assert (status, code) == (429, "concurrency_limit_exceeded")      # held until the lease runs out

    async def admitted():
        return (await post(http, vm3, "few"))[0] == 200
    await eventually(admitted, LEASE + 5, "the dead node's slots freed")
    assert time.monotonic() - killed <= LEASE + 2
    assert record(redis_server.url, "few").get("inflight") == "0"


async def test_a_balance_hammered_from_every_node_is_never_overspent(nodes, http, redis_server):  # noqa: F811
    vm = await nodes.start(3)
    results = await asyncio.gather(*(post(http, vm[i % 3], "money", "priced", f"spend {i}", max_tokens=5)
                                     for i in range(150)))
    ok = [r for r in results if r[0] == 200]
    refused = {r[1] for r in results if r[0] != 200}
    assert ok and refused <= {"balance_insufficient", "balance_exhausted"} and refused, refused
    spent = sum(r[2]["usage"]["cost"] for r in ok)
    assert spent <= BALANCE
    await eventually(lambda: record(redis_server.url, "money").get("reserved") == "0", LEASE + 2,
                     "every request settled")
    left = int(record(redis_server.url, "money")["left"])
    assert 0 <= left <= BALANCE * 1_000_000 - spent * 1_000_000 + 1e-3 * len(ok)   # costs rounded up to a micro-USD


async def _ready(http, node, status: str):
    async with http.get(node.url + "/readyz") as resp:
        body = await resp.json()
    return body if resp.status == 200 and body["status"] == status else None


async def _load(http, vm, stop: asyncio.Event, seen: list) -> None:
    i = 0
    while not stop.is_set():
        status, code, _, took = await post(http, vm[i % len(vm)], "busy", text=f"load {i}")
        seen.append((status, took))
        i += 1


async def test_redis_stopped_under_load_counts_per_node_then_exactly_again(nodes, http, redis_server):  # noqa: F811
    vm = await nodes.start(3)
    stop, seen = asyncio.Event(), []
    load = [asyncio.ensure_future(_load(http, vm, stop, seen)) for _ in range(4)]
    try:
        await eventually(lambda: len(seen) > 20, 20, "some load")
        redis_server.stop()
        for node in vm:
            await eventually(lambda: _ready(http, node, "degraded"), 10, "degraded", node)
        before = len(seen)
        await eventually(lambda: len(seen) > before + 30, 20, "load while Redis is down")
        # each node counts alone: the minute limit is per node now
        for node in vm:
            results = await asyncio.gather(*(post(http, node, "minute") for _ in range(MINUTE_LIMIT)))
            assert [r[0] for r in results] == [200] * MINUTE_LIMIT
            status, code, _, _ = await post(http, node, "minute")
            assert (status, code) == (429, "minute_limit_exceeded")
        redis_server.start()
        for node in vm:
            await eventually(lambda: _ready(http, node, "ready"), 15, "ready", node)
        before = len(seen)
        await eventually(lambda: len(seen) > before + 10, 20, "load after Redis is back")
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        if redis_server.proc is None:
            redis_server.start()
    assert {status for status, _ in seen} == {200}
    assert max(took for _, took in seen) < 2.0            # bounded: nobody waited on the dead Redis
    # shared again, and exact: the restarted (empty) Redis counts the minute limit for all nodes
    results = await asyncio.gather(*(post(http, vm[i % 3], "minute") for i in range(3 * MINUTE_LIMIT)))
    assert [r[0] for r in results].count(200) == MINUTE_LIMIT
    for node in vm:
        assert len(node.events("limits_counting_locally")) == 1
        assert len(node.events("limits_shared_again")) == 1
