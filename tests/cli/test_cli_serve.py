"""`modelway serve` in a subprocess: answers on 127.0.0.1, drains and exits 0 on SIGTERM,
and `--workers 2` runs two processes on one port."""
from __future__ import annotations

import asyncio
import signal
import socket
import time

import aiohttp
import orjson
import pytest

from tests.cli.procs import BUNDLED, Server, free_port, modelway, pid_alive

HI = {"model": "mock-echo", "messages": [{"role": "user", "content": "hello gateway"}]}
LAZY_CONFIG = """
server: {data_dir: ./var, drain_seconds: 10}
middlewares: [access_log]
providers:
  mock: {type: mock}
  lazy: {type: mock, options: {latency_ms: 800}}
models:
  mock-echo: {targets: [{provider: mock}]}
  mock-lazy: {targets: [{provider: lazy}]}
"""


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        s.close()


async def test_serve_bundled_config_answers_health_and_mock_and_exits_0_on_sigterm(tmp_path, servers):
    server = Server(tmp_path, "--config", str(BUNDLED))
    servers.append(server)
    server.wait_listening()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(server.url + "/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 200 and "OPENAI_API_KEY" in ready["disabled_providers"]["openai"]
        async with http.get(server.url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
        started = server.events("listening")[0]     # the start-up line: where, and what a client can call
        assert started["url"] == server.url
        assert started["models"] == len(listed) and sorted(started["model_names"]) == sorted(listed)
        assert all("*" not in m for m in started["model_names"]) and "openai/*" in started["wildcard_routes"]
        async with http.post(server.url + "/v1/chat/completions", json=HI) as resp:
            assert resp.status == 200 and resp.headers["x-request-id"]
            body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "hello gateway"
        async with http.post(server.url + "/v1/chat/completions", json={**HI, "stream": True}) as resp:
            raw = await resp.read()
        assert raw.startswith(b"data: {") and raw.endswith(b"data: [DONE]\n\n")
        async with http.post(server.url + "/v1/chat/completions", json={**HI, "model": "gpt-4o-mini"}) as resp:
            assert resp.status == 503
            assert "OPENAI_API_KEY" in (await resp.json())["error"]["message"]
    assert server.terminate() == 0
    access = server.events("request")
    assert [a["status"] for a in access] == [200, 200, 200, 503]     # models, chat, stream, 503
    assert all("hello gateway" not in orjson.dumps(a).decode() for a in access)
    assert server.events("stopped")


async def test_sighup_reloads_sigterm_lets_an_inflight_request_finish(tmp_path, servers):
    config = tmp_path / "routes.yaml"
    config.write_text(LAZY_CONFIG)
    server = Server(tmp_path, "--config", str(config))
    servers.append(server)
    server.wait_listening()
    async with aiohttp.ClientSession() as http:
        new = {**HI, "model": "mock-new"}
        async with http.post(server.url + "/v1/chat/completions", json=new) as resp:
            assert resp.status == 404
        config.write_text(LAZY_CONFIG + "  mock-new: {targets: [{provider: mock}]}\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(lambda: server.events("config_reloaded"), what="config_reloaded")
        async with http.post(server.url + "/v1/chat/completions", json=new) as resp:
            assert resp.status == 200
        config.write_text(LAZY_CONFIG.replace("latency_ms: 800", "latency: 800"))
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(lambda: server.events("reload_failed"), what="reload_failed")
        assert any(":6: providers.lazy.options.latency: unknown field" in e["problem"]
                   for e in server.events("reload_failed"))
        config.write_text(LAZY_CONFIG + "  mock-new: {targets: [{provider: mock}]}\n")
        async with http.post(server.url + "/v1/chat/completions", json=new) as resp:
            assert resp.status == 200      # the old table stays
        request = asyncio.ensure_future(http.post(server.url + "/v1/chat/completions",
                                                  json={**HI, "model": "mock-lazy"}))
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        resp = await asyncio.wait_for(request, 5)
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "hello gateway"
    assert server.proc.wait(10) == 0
    assert server.events("draining")


async def test_two_workers_share_one_port_and_all_stop_on_sigterm(tmp_path, servers):
    server = Server(tmp_path, "--config", str(BUNDLED), "--workers", "2")
    servers.append(server)
    server.wait_listening(workers=2)
    listening = server.events("listening")
    pids = {e["pid"] for e in listening}
    assert len(pids) == 2 and server.proc.pid not in pids
    assert {e["port"] for e in listening} == {server.port}
    assert all(pid_alive(p) for p in pids)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(10):
            async with http.post(server.url + "/v1/chat/completions", json=HI) as resp:
                assert resp.status == 200
    assert server.terminate() == 0
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "a worker outlived the supervisor"
    assert {e["pid"] for e in server.events("stopped")} == pids


def test_serve_refuses_an_invalid_config_with_its_line(tmp_path):
    config = tmp_path / "routes.yaml"
    config.write_text(LAZY_CONFIG.replace("latency_ms: 800", "latency: 800"))
    r = modelway("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert r.returncode == 1
    assert f"{config}:6: providers.lazy.options.latency: unknown field" in r.stderr


def test_serve_on_a_taken_port_says_so_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = modelway("serve", "--config", str(BUNDLED), "--port", str(port), cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    errors = [orjson.loads(ln) for ln in r.stdout.splitlines() if b"cannot_listen" in ln.encode()]
    assert errors and errors[0]["port"] == port and "in use" in errors[0]["error"]


def test_workers_that_cannot_start_end_the_supervisor_instead_of_a_crash_loop(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = modelway("serve", "--config", str(BUNDLED), "--port", str(port), "--workers", "2",
                     cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    assert "workers_crash_looping" in r.stdout
