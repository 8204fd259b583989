"""Managed keys across worker processes: a key created on one worker works on every worker at
once (a worker that does not know a key looks it up in the key store before refusing it), a
revoked key is refused everywhere within a second, and junk keys cost one store lookup each
per 10 s, not one per request. A refused key writes no ledger row: it is counted in
`modelway_auth_failures_total{reason}` and logged at most once a second per worker."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.cli.procs import Server, clean_env
from tests.middlewares.helpers import (APP, OPS, call, chat_body, eventually, metric, parse_prometheus, read_ledger,
                                       routes, wait_ledger)

KEYS = "/v1/account/keys"


async def scrape(http, url: str) -> dict:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        return parse_prometheus(await resp.text())


async def two_workers(make_gateway, tmp_path):
    """Two gateways in this process sharing one data_dir: two workers of one machine."""
    text = routes(None)
    one = await make_gateway(text, filename="one.yaml")
    two = await make_gateway(text, filename="two.yaml")
    return one, two


async def test_a_new_key_works_at_once_on_every_worker_of_workers_3(tmp_path):
    """The issue's case: 30 requests sent right after creation through `--workers 3`."""
    (tmp_path / "routes.yaml").write_text(routes(None, server={"data_dir": str(tmp_path / "var"), "workers": 3}))
    server = Server(tmp_path, "--config", str(tmp_path / "routes.yaml"), env=clean_env())
    try:
        await asyncio.to_thread(server.wait_listening, 3)
        # a fresh connection per request: SO_REUSEPORT spreads them over the workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(3):
                status, _, body = await call(http, "POST", server.url + KEYS, OPS, {"label": "new-app"})
                assert status == 201, body
                secret = body["key"]
                results = await asyncio.gather(*(
                    call(http, "POST", server.url + "/v1/chat/completions", secret, chat_body("mock-echo"))
                    for _ in range(30)))
                assert [r[0] for r in results] == [200] * 30, [r[2] for r in results if r[0] != 200][:3]
    finally:
        await asyncio.to_thread(server.terminate)


async def test_a_key_created_on_one_worker_works_on_the_other_before_its_poll(make_gateway, tmp_path):
    one, two = await two_workers(make_gateway, tmp_path)
    two.gateway.keys.poll_interval = 3600      # the other worker's poll cannot be what lets it in
    await asyncio.sleep(0.6)                   # (its poll task is asleep on the old interval)
    async with aiohttp.ClientSession() as http:
        status, _, body = await call(http, "POST", one.url + KEYS, OPS, {"label": "new-app"})
        assert status == 201
        status, _, reply = await call(http, "POST", two.url + "/v1/chat/completions", body["key"],
                                      chat_body("mock-echo"))
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"] == "hi"


async def test_a_revoked_key_is_refused_on_every_worker_within_a_second(make_gateway, tmp_path):
    one, two = await two_workers(make_gateway, tmp_path)
    async with aiohttp.ClientSession() as http:
        status, _, body = await call(http, "POST", one.url + KEYS, OPS, {"label": "short-lived"})
        secret, key_id = body["key"], body["data"]["id"]
        for gw in (one, two):     # known to both: the other learnt it by its lookup, a positive memo
            status, _, _ = await call(http, "POST", gw.url + "/v1/chat/completions", secret, chat_body("mock-echo"))
            assert status == 200
        status, _, _ = await call(http, "DELETE", one.url + f"{KEYS}/{key_id}", OPS)
        assert status == 200
        revoked = time.monotonic()

        async def refused():
            status, _, reply = await call(http, "POST", two.url + "/v1/chat/completions", secret,
                                          chat_body("mock-echo"))
            return status == 401 and reply["error"]["code"] == "invalid_api_key"
        await eventually(refused, timeout=1.0, interval=0.02, what="the revoked key to be refused")
        assert time.monotonic() - revoked < 1.0
        # and it stays refused (nothing memoised brings it back)
        for _ in range(5):
            assert (await call(http, "POST", two.url + "/v1/chat/completions", secret,
                               chat_body("mock-echo")))[0] == 401


async def test_junk_keys_hit_the_store_once_and_write_no_ledger_row(make_gateway, tmp_path, data_dir):
    one, two = await two_workers(make_gateway, tmp_path)
    async with aiohttp.ClientSession() as http:
        junk = ["sk-junk-a-0123456789", "sk-junk-b-0123456789"]
        results = [await call(http, "POST", one.url + "/v1/chat/completions", junk[i % 2], chat_body("mock-echo"))
                   for i in range(40)]
        assert {r[0] for r in results} == {401}
        assert {r[2]["error"]["code"] for r in results} == {"invalid_api_key"}
        assert (await call(http, "POST", one.url + "/v1/chat/completions", None, chat_body("mock-echo")))[0] == 401
        ok = await call(http, "POST", one.url + "/v1/chat/completions", APP, chat_body("mock-echo"))
        assert ok[0] == 200
        await wait_ledger(data_dir, 1, "WHERE request_id = ?", (ok[1]["x-request-id"],))
        await one.gateway.ledger.flush()
        assert [r["status"] for r in read_ledger(data_dir)] == [200]       # no row per 401
        m = await scrape(http, one.url)
        assert metric(m, "modelway_auth_failures_total", reason="invalid_api_key") == 40
        assert metric(m, "modelway_auth_failures_total", reason="missing_api_key") == 1
        assert metric(m, "modelway_key_store_lookups_total", result="missing") == 2   # once per junk key
        assert metric(m, "modelway_requests_total", model="", status="401") == 41


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "var"
