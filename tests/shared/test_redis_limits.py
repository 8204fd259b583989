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

from proxy.state.limits import CODES, record_keys, run_script
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
