"""`modelway serve --workers 2`: the supervisor restarts a worker that dies, forwards SIGHUP
to every worker, and on SIGTERM stops them all and exits 0 — with the ledger complete."""
from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from tests.ops.conftest import chat, eventually, ledger_rows, pid_alive, wait_exit, write_config

CONFIG = """\
server: {data_dir: ./var, drain_seconds: 5}
middlewares: [access_log, accounting]
providers:
  mock: {type: mock}
models:
  mock-echo: {targets: [{provider: mock}]}
"""


def listening_pids(server) -> list[int]:
    return [e["pid"] for e in server.events("listening")]


async def test_dead_workers_are_restarted_sighup_is_forwarded_and_sigterm_stops_all(start_server, http,
                                                                                    tmp_path):
    server = await start_server(CONFIG, "--workers", "2", workers=2)
    originals = listening_pids(server)
    assert len(set(originals)) == 2 and server.proc.pid not in originals

    for n, pid in enumerate(originals, start=1):        # kill each original worker in turn
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: any(e["pid"] == pid for e in server.events("worker_died")), 10,
                         f"the supervisor to see {pid} die", server)
        await eventually(lambda: len(listening_pids(server)) == 2 + n, 20, "a replacement worker", server)
    await eventually(lambda: not any(pid_alive(p) for p in originals), 5, "the killed workers to be gone")
    replacements = listening_pids(server)[2:]
    assert all(pid_alive(p) for p in replacements) and not set(replacements) & set(originals)

    sent = []
    for _ in range(10):                                 # only replacement workers are left to answer
        status, headers, _ = await chat(http, server.url, "mock-echo")
        assert status == 200
        sent.append(headers["x-request-id"])

    write_config(server.config, CONFIG + "  mock-new: {targets: [{provider: mock}]}\n")
    server.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: len(server.events("config_reloaded")) == 2, 10, "both workers to reload", server)
    for _ in range(10):                                 # whichever worker takes it knows the new model
        status, headers, _ = await chat(http, server.url, "mock-new")
        assert status == 200
        sent.append(headers["x-request-id"])

    server.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(server, 20) == 0
    await eventually(lambda: not any(pid_alive(p) for p in replacements), 5, "every worker to stop")
    assert {e["pid"] for e in server.events("stopped")} == set(replacements)
    recorded = {r["request_id"] for r in ledger_rows(tmp_path / "var")}
    assert set(sent) <= recorded                        # every worker flushed its rows
    server.close()


async def test_sigterm_to_the_supervisor_drains_inflight_requests_of_every_worker(start_server, tmp_path):
    slow = CONFIG.replace("mock: {type: mock}", "mock: {type: mock, options: {latency_ms: 600}}")
    server = await start_server(slow, "--workers", "2", workers=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        pending = [asyncio.ensure_future(chat(http, server.url, "mock-echo")) for _ in range(8)]
        await asyncio.sleep(0.2)                        # all eight are waiting on the mock's latency
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert [status for status, _, _ in results] == [200] * 8
    assert await wait_exit(server, 20) == 0
    recorded = {r["request_id"] for r in ledger_rows(tmp_path / "var")}
    assert {h["x-request-id"] for _, h, _ in results} <= recorded
    server.close()
