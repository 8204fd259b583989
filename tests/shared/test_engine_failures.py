"""A shared engine that dies never turns into a 500 or a hang: the nodes keep serving on
node-local state, say `degraded` on /readyz (still 200), log it once, and go back to sharing
when the engine is back."""
from __future__ import annotations

import asyncio
import time

import orjson
import redis

from tests.shared.conftest import BROKEN, eventually, headers

CHAT = "/v1/chat/completions"


async def _status(http, node) -> dict:
    async with http.get(node.url + "/readyz") as resp:
        body = await resp.json()
        body["http_status"] = resp.status
        return body


async def _engine(http, node, engine: str, up: bool):
    body = await _status(http, node)
    return body if body["state"][engine]["up"] is up else None


async def _load(http, nodes, stop: asyncio.Event, statuses: list[int], slowest: list[float]) -> None:
    """Requests round-robin over the nodes until `stop`: plain chat and a failing-then-falling-back one."""
    i = 0
    while not stop.is_set():
        node, model = nodes[i % len(nodes)], ("mock-echo", "flaky")[i % 2]
        body = {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}]}
        started = time.monotonic()
        async with http.post(node.url + CHAT, json=body, headers=headers()) as resp:
            await resp.read()
            statuses.append(resp.status)
        slowest[0] = max(slowest[0], time.monotonic() - started)
        i += 1


async def test_redis_killed_under_load_nodes_degrade_then_share_again(cluster, http, redis_server):
    nodes = await cluster.start(3)
    for node in nodes:
        await eventually(lambda: _engine(http, node, "redis", True), 10, "redis up", node)
    stop, statuses, slowest = asyncio.Event(), [], [0.0]
    load = [asyncio.ensure_future(_load(http, nodes, stop, statuses, slowest)) for _ in range(4)]
    try:
        await eventually(lambda: len(statuses) > 20, 20, "some load")
        redis_server.stop()
        for node in nodes:
            body = await eventually(lambda: _engine(http, node, "redis", False), 10, "redis down", node)
            assert body["http_status"] == 200 and body["status"] == "degraded", body
            assert body["state"]["postgresql"]["up"] is True
        before = len(statuses)
        await eventually(lambda: len(statuses) > before + 30, 20, "load while Redis is down")
        for node in nodes:
            async with http.get(node.url + "/metrics") as resp:
                assert 'modelway_state_backend_up{engine="redis"} 0' in await resp.text()
        redis_server.start()
        for node in nodes:
            body = await eventually(lambda: _engine(http, node, "redis", True), 15, "redis back", node)
            assert body["status"] == "ready", body
        before = len(statuses)
        await eventually(lambda: len(statuses) > before + 10, 20, "load after Redis is back")
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        if redis_server.proc is None:
            redis_server.start()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert slowest[0] < 3.0, slowest                     # never a hang (a loaded test machine: generous)
    for node in nodes:
        downs = [e for e in node.events("state_engine_down") if e["engine"] == "redis"]
        assert len(downs) == 1, downs                    # logged once per outage, not per call
        assert "redis://127.0.0.1" in downs[0]["url"]
    # the cooldowns of the outage were announced again into the restarted (empty) Redis
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.hget("modelway:cooldowns", orjson.dumps(["mock", BROKEN])) is not None
    finally:
        client.close()
    # and sharing works again: a target first cooled on node 1 now is skipped on node 2
    vm1, vm2 = nodes[0], nodes[1]
    assert (await _chat(http, vm1, "flaky2")) == 200
    await eventually(lambda: [e for e in vm2.events("cooldown_shared") if e["model"] == BROKEN + "-2"], 5,
                     "the shared cooldown on vm2", vm2)
    assert (await _chat(http, vm2, "flaky2")) == 200
    line = await eventually(lambda: [e for e in vm2.events("request") if e.get("model") == "flaky2"], 5,
                            "the access line", vm2)
    assert line[0]["attempts"] == 1, line


async def _chat(http, node, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    async with http.post(node.url + CHAT, json=body, headers=headers()) as resp:
        await resp.read()
        return resp.status


async def test_postgres_killed_responses_answer_503_and_chat_goes_on(cluster, http, postgres_server):
    vm1, vm2, vm3 = await cluster.start(3)
    for node in (vm1, vm2, vm3):
        await eventually(lambda: _engine(http, node, "postgresql", True), 10, "postgresql up", node)
    async with http.post(vm1.url + "/v1/responses", json={"model": "mock-echo", "input": "hi"},
                         headers=headers()) as resp:
        stored = await resp.json()
    postgres_server.stop()
    try:
        for node in (vm1, vm2, vm3):
            body = await eventually(lambda: _engine(http, node, "postgresql", False), 10, "postgresql down", node)
            assert body["http_status"] == 200 and body["status"] == "degraded", body
        started = time.monotonic()
        async with http.get(vm2.url + f"/v1/responses/{stored['id']}", headers=headers()) as resp:
            err = await resp.json()
            assert resp.status == 503, err
        assert err["error"]["code"] == "state_unavailable" and err["error"]["type"] == "api_error"
        assert time.monotonic() - started < 1.0              # refused at once, no waiting on a dead server
        async with http.post(vm2.url + "/v1/responses", json={"model": "mock-echo", "input": "more",
                                                             "previous_response_id": stored["id"]},
                             headers=headers()) as resp:
            assert resp.status == 503
        # a create that cannot be stored still answers, and says it was not stored
        async with http.post(vm3.url + "/v1/responses", json={"model": "mock-echo", "input": "hello"},
                             headers=headers()) as resp:
            assert resp.status == 200
            created = await resp.json()
        assert created["store"] is False and created["output"][0]["content"][0]["text"] == "hello"
        async with http.post(vm3.url + "/v1/responses", json={"model": "mock-echo", "input": "hello",
                                                             "stream": True}, headers=headers()) as resp:
            raw = await resp.read()
        assert resp.status == 200 and b"response.completed" in raw and b'"store":false' in raw.split(b"response.completed")[-1]
        async with http.post(vm1.url + CHAT, json={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
                             headers=headers()) as resp:
            assert resp.status == 200
    finally:
        if postgres_server.proc is None:
            postgres_server.start()
    for node in (vm1, vm2, vm3):
        body = await eventually(lambda: _engine(http, node, "postgresql", True), 15, "postgresql back", node)
        assert body["status"] == "ready"
    async with http.post(vm1.url + "/v1/responses", json={"model": "mock-echo", "input": "after"},
                         headers=headers()) as resp:
        again = await resp.json()
    assert again["store"] is True
    async with http.get(vm3.url + f"/v1/responses/{again['id']}", headers=headers()) as resp:
        assert resp.status == 200
    for node in (vm1, vm2, vm3):
        assert len([e for e in node.events("state_engine_down") if e["engine"] == "postgresql"]) == 1
