"""Two nodes sharing one PostgreSQL for managed keys and the ledger, driven over HTTP: a key
made through one node works on the other at once, its requests on both are charged to one
balance and listed by either, and its revocation on one is refused by the other within a second."""
from __future__ import annotations

import asyncio

from tests.shared.conftest import Cluster, config_text, eventually, readyz, sha, write_config
from tests.cli.procs import Server, clean_env
from tests.shared.pgdb import pg_url, postgres_server  # noqa: F401  (fixtures)
from tests.engines import redis_server  # noqa: F401  (session fixture)

ADMIN = "sk-shared-admin"
CHAT = "/v1/chat/completions"


async def _nodes(tmp_path, redis_url: str, database_url: str, n: int = 2) -> Cluster:
    cluster = Cluster(tmp_path, redis_url, database_url)
    text = config_text(redis_url, database_url) + f'management_keys: [{{label: ops, sha256: "{sha(ADMIN)}"}}]\n'
    for i in range(n):
        home = tmp_path / f"vm{i + 1}"
        home.mkdir()
        write_config(home / "routes.yaml", text)
        cluster.nodes.append(Server(home, "--config", str(home / "routes.yaml"), env=clean_env()))
    for node in cluster.nodes:
        await eventually(lambda: node.events("listening"), 30, "listening", node)
    return cluster


async def _chat(http, node, key: str) -> int:
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hello"}]}
    async with http.post(node.url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


async def _get(http, node, path: str) -> dict:
    async with http.get(node.url + path, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_managed_keys_and_the_ledger_across_two_nodes(tmp_path, http, redis_server, pg_url):  # noqa: F811
    cluster = await _nodes(tmp_path, redis_server.url, pg_url)
    try:
        vm1, vm2 = cluster.nodes
        for node in cluster.nodes:
            await eventually(lambda: _ready(http, node), 10, "ready", node)
        async with http.post(vm1.url + "/v1/account/keys", json={"label": "team", "balance": 1.0},
                             headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 201, await resp.text()
            created = (await resp.json())["data"]
        secret, key_id = created["key"], created["id"]
        assert await _chat(http, vm2, secret) == 200          # at once, on the other node
        for i in range(6):
            assert await _chat(http, (vm1, vm2)[i % 2], secret) == 200
        rows = await eventually(lambda: _activity(http, vm2, key_id, 7), 5, "7 rows in the shared ledger", vm2)
        assert len({r["request_id"] for r in rows}) == 7
        balance = (await _get(http, vm1, f"/v1/account/balance?key_id={key_id}"))["data"]
        assert balance["requests"] == 7 and balance["balance"] == round(1.0 - balance["total_spent"], 10)
        overview = await _get(http, vm1, f"/v1/console/overview?key_id={key_id}")      # the console: both nodes' rows
        assert overview["windows"]["today"]["requests"] == 7 and overview["latency"]["samples"] == 7

        async with http.delete(vm1.url + f"/v1/account/keys/{key_id}",
                               headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 200
        loop = asyncio.get_running_loop()
        start = loop.time()
        await eventually(lambda: _refused(http, vm2, secret), 1.0, "refused on vm2 within 1 s", vm2)
        assert loop.time() - start < 1.0
    finally:
        cluster.stop()


async def _ready(http, node):
    body = await readyz(http, node.url)
    return body if body["status"] == "ready" else None


async def _activity(http, node, key_id: str, n: int):
    rows = (await _get(http, node, f"/v1/account/activity?key_id={key_id}"))["data"]
    return rows if len(rows) == n else None


async def _refused(http, node, secret: str) -> bool:
    return await _chat(http, node, secret) == 401
