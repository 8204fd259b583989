"""The response cache in Redis, shared by several nodes: three gateways in this process, each
with its own data_dir and `state: {redis: ...}`, over one real redis-server (tests/engines.py).

An answer stored through one node is a HIT on the others, with Redis's own expiry and the
per-key scope; Redis killed or hung never turns into an error or a hang (each node falls back
to its own cache, logged once, counted), and the nodes share again once Redis is back."""
from __future__ import annotations

import os
import signal
import time
import zlib

import orjson
import pytest
import structlog
from redis import asyncio as aioredis

from proxy.state.response_cache import PREFIX
from tests.engines import redis_server  # noqa: F401  (session fixture)
from tests.fakes.openai_upstream import FakeOpenAI, start
from tests.middlewares.helpers import APP, CHAT, OTHER, eventually, metric, parse_prometheus, routes

HI = [{"role": "user", "content": "hi"}]
BOUND = 1.0            # seconds any request may take while Redis is dead or hung (50 ms timeouts)


@pytest.fixture
async def upstream():
    fake = FakeOpenAI()
    runner, url = await start(fake)
    fake.url = url
    yield fake
    await runner.cleanup()


@pytest.fixture
async def redis(redis_server):  # noqa: F811
    """A test's view of the shared Redis, emptied first."""
    if redis_server.proc is None:        # a test that stopped it failed before starting it again
        redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def cluster(make_gateway, upstream, redis, redis_server, tmp_path):  # noqa: F811
    """`await cluster(timeout_ms)`: three gateways ("vm1".."vm3"), cache on, each with its own
    data_dir, all with `state: {redis: ...}`. The sharing tests give Redis calls 1 s (a loaded
    test machine must not turn a HIT into a MISS); the failure tests use the default, 50 ms."""
    async def make(timeout_ms: float = 1000.0):
        gws = []
        for i in (1, 2, 3):
            text = routes(upstream.url, cache={"enabled": True, "ttl": 60},
                          server={"data_dir": str(tmp_path / f"vm{i}" / "var")},
                          state={"redis": redis_server.url, "redis_timeout_ms": timeout_ms})
            gws.append(await make_gateway(text, filename=f"vm{i}.yaml"))
        return gws

    return make


@pytest.fixture
async def nodes(cluster):
    return await cluster()


async def ask(http, node, secret: str = APP, **body):
    """(status, x-cache, parsed body (the raw bytes of a stream), seconds) of one chat request."""
    started = time.monotonic()
    async with http.post(node.url + CHAT, json={"model": "gpt-4o-mini", "messages": HI, **body},
                         headers={"Authorization": f"Bearer {secret}"}) as resp:
        raw = await resp.read()
        data = raw if body.get("stream") else orjson.loads(raw)
        return resp.status, resp.headers.get("x-cache"), data, time.monotonic() - started


async def stored(redis) -> list[bytes]:
    return sorted(await redis.keys(PREFIX + "*"))


async def test_an_answer_stored_through_one_node_is_a_hit_on_the_others(nodes, upstream, redis, http):
    vm1, vm2, vm3 = nodes
    status, state, first, _ = await ask(http, vm1)
    assert (status, state) == (200, "MISS")
    await eventually(lambda: stored(redis), what="the answer in Redis")
    status, state, again, _ = await ask(http, vm3)
    assert (status, state) == (200, "HIT")
    assert again["choices"] == first["choices"] and again["usage"]["cost"] == 0
    status, state, raw, _ = await ask(http, vm2, stream=True)
    assert (status, state) == (200, "HIT")
    events = [e for e in raw.split(b"\n\n") if e]
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if orjson.loads(e[6:])["choices"])
    assert text == first["choices"][0]["message"]["content"] and events[-1] == b"data: [DONE]"
    assert len(upstream.requests) == 1


async def test_entries_expire_by_redis_ttl(nodes, upstream, redis, http):
    vm1, vm2, vm3 = nodes
    assert (await ask(http, vm1, cache={"ttl": 1}))[:2] == (200, "MISS")
    keys = await eventually(lambda: stored(redis), what="the answer in Redis")
    assert 0 < await redis.pttl(keys[0]) <= 1000                 # Redis expires it, no sweeper of ours
    assert (await ask(http, vm2))[1] == "HIT"

    async def gone():
        return not await redis.exists(keys[0])
    await eventually(gone, timeout=3, what="Redis to expire the entry")
    assert (await ask(http, vm3))[1] == "MISS"
    assert len(upstream.requests) == 2


async def test_the_per_key_scope_holds_across_nodes(nodes, upstream, redis, http):
    vm1, vm2, vm3 = nodes
    assert (await ask(http, vm1, APP))[1] == "MISS"
    await eventually(lambda: stored(redis), what="the answer in Redis")
    assert (await ask(http, vm2, OTHER))[1] == "MISS"             # another key's answer is not served
    assert (await ask(http, vm3, APP))[1] == "HIT"
    assert (await ask(http, vm3, OTHER))[1] == "HIT"             # once OTHER's own is stored
    assert len(upstream.requests) == 2


async def test_errors_and_truncated_answers_are_never_stored(nodes, upstream, redis, http):
    vm1, vm2, _ = nodes
    long = [{"role": "user", "content": "a sentence long enough to be cut short by max_tokens"}]
    for node in (vm1, vm2):
        status, state, _, _ = await ask(http, node, model="up/fail-500")
        assert (status, state) == (502, "MISS")
        status, state, data, _ = await ask(http, node, model="mock-echo", messages=long, max_tokens=2)
        assert (status, state, data["choices"][0]["finish_reason"]) == (200, "MISS", "length")
        status, state, raw, _ = await ask(http, node, model="mock-echo", messages=long, max_tokens=2, stream=True)
        assert (status, state) == (200, "MISS") and b'"finish_reason":"length"' in raw
    for node in nodes:
        await node.gateway.response_cache.flush()
    assert await stored(redis) == []
    assert len(upstream.requests) == 2


async def test_large_answers_are_stored_compressed_and_come_back_whole(nodes, redis, http):
    vm1, vm2, _ = nodes
    prompt = [{"role": "user", "content": "the same long sentence again " * 400}]   # ~11 KB echoed back
    status, state, first, _ = await ask(http, vm1, model="mock-echo", messages=prompt)
    assert (status, state) == (200, "MISS")
    [key] = await eventually(lambda: stored(redis), what="the answer in Redis")
    raw = await redis.get(key)
    assert raw[:1] != b"{" and len(raw) < 2000
    assert orjson.loads(zlib.decompress(raw))["completion"]["choices"] == first["choices"]
    status, state, again, _ = await ask(http, vm2, model="mock-echo", messages=prompt)
    assert (status, state, again["choices"]) == (200, "HIT", first["choices"])


async def test_redis_killed_then_back(cluster, upstream, redis, redis_server, http):  # noqa: F811
    """Killed: every request 200 within BOUND, MISS, then answered from the node's own cache;
    the node's Redis engine is down (logged once per node, /readyz 200 degraded, the metric at
    0); back: the nodes share again."""
    vm1, vm2, vm3 = await cluster(50)
    assert (await ask(http, vm1))[1] == "MISS"
    await eventually(lambda: stored(redis), what="the answer in Redis")
    redis_server.stop()
    try:
        with structlog.testing.capture_logs() as logs:
            for node in (vm1, vm2, vm1, vm2):
                status, state, _, took = await ask(http, node, messages=[{"role": "user", "content": "outage"}])
                assert status == 200 and took < BOUND
            first = [await ask(http, node) for node in (vm1, vm2)]
            assert all(r[0] == 200 and r[3] < BOUND for r in first)
            assert (await ask(http, vm2))[1] == "HIT"           # vm2's own cache, filled during the outage
        downs = [e for e in logs if e["event"] == "state_engine_down"]
        assert 2 <= len(downs) <= 3 and {e["engine"] for e in downs} == {"redis"}     # once per node (vm3 idle)
        assert not [e for e in logs if e["event"] == "cache_backend_down"]            # the engine's line only
        samples = parse_prometheus(await (await http.get(vm1.url + "/metrics")).text())
        assert metric(samples, "modelway_state_backend_up", engine="redis") == 0
        for node in (vm1, vm2):
            async with http.get(node.url + "/readyz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "degraded"
    finally:
        redis_server.start()
    await redis.connection_pool.disconnect()      # the test's own connections died with the server
    await redis.flushdb()

    async def shared_again():
        prompt = [{"role": "user", "content": f"after {time.monotonic()}"}]
        status, state, _, _ = await ask(http, vm1, messages=prompt)
        assert status == 200
        await vm1.gateway.response_cache.flush()
        return prompt if await stored(redis) else None
    prompt = await eventually(shared_again, timeout=5, interval=0.2, what="vm1 to store in Redis again")

    async def hit_on_vm3():
        return (await ask(http, vm3, messages=prompt))[1] == "HIT"    # a lookup may time out on a busy box
    await eventually(hit_on_vm3, what="vm1's new answer as a HIT on vm3")


async def test_a_hung_redis_costs_a_miss_not_a_hang(cluster, redis, redis_server, http):  # noqa: F811
    """Redis stops answering (SIGSTOP: connections open, nothing read): each lookup gives up after
    its 50 ms, after three the node switches to its own cache; it goes back once Redis answers."""
    vm1, vm2, _ = await cluster(50)
    assert (await ask(http, vm1))[1] == "MISS"
    await eventually(lambda: stored(redis), what="the answer in Redis")
    with structlog.testing.capture_logs() as logs:
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            results = [await ask(http, vm2, messages=[{"role": "user", "content": f"q{i}"}]) for i in range(5)]
            assert [r[:2] for r in results] == [(200, "MISS")] * 5 and max(r[3] for r in results) < BOUND
            assert len([e for e in logs if e["event"] == "cache_backend_down"]) == 1       # logged once
            status, state, _, took = await ask(http, vm2, messages=[{"role": "user", "content": "q4"}])
            assert (status, state) == (200, "HIT") and took < BOUND      # vm2's own cache took over
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)

        async def back():
            await ask(http, vm2, messages=[{"role": "user", "content": f"probe {time.monotonic()}"}])
            return [e for e in logs if e["event"] == "cache_backend_up"]
        await eventually(back, timeout=5, interval=0.2, what="vm2 to use Redis again")

    async def hit():
        return (await ask(http, vm2))[1] == "HIT"                    # vm1's answer, from Redis
    await eventually(hit, what="vm1's answer as a HIT on vm2")
    await redis.connection_pool.disconnect()


async def test_a_full_redis_refusing_writes_still_answers(nodes, upstream, redis, http):
    """maxmemory reached under `noeviction`: Redis refuses each SET (OOM). Answers still come,
    nothing is stored, the refusal is logged once (its class, never the answer it quotes) and
    counted; the node does not count Redis as down."""
    vm1, vm2, _ = nodes
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", "1")
    try:
        with structlog.testing.capture_logs() as logs:
            for i in range(3):
                status, state, _, _ = await ask(http, vm1, messages=[{"role": "user", "content": f"full {i}"}])
                assert (status, state) == (200, "MISS")
                await vm1.gateway.response_cache.flush()
        errors = [e for e in logs if e["event"] == "cache_backend_error"]
        assert [(e["op"], e["error"]) for e in errors] == [("set", "OutOfMemoryError")]
        assert not [e for e in logs if e["event"] == "cache_backend_down"]
        samples = parse_prometheus(await (await http.get(vm1.url + "/metrics")).text())
        assert metric(samples, "modelway_cache_backend_errors_total", op="set") == 3
    finally:
        await redis.config_set("maxmemory", "0")
    assert await stored(redis) == []
    assert (await ask(http, vm2, messages=[{"role": "user", "content": "full 0"}]))[1] == "MISS"
    assert len(upstream.requests) == 4
