"""`modelway serve` in a subprocess, as ops run it: helpers to start it from a YAML text, wait
for log lines and conditions without blocking the test's event loop (fake upstreams live in
it), read /readyz and the ledger file."""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import sqlite3
import textwrap
import time

import aiohttp
import orjson
import pytest

from tests.cli.procs import Server, clean_env, pid_alive  # noqa: F401  (re-exported for the tests)
from tests.wire import chat_body, sse_data  # noqa: F401  (re-exported for the tests)

CHAT = "/v1/chat/completions"


def version_of(text: str) -> str:
    """The config_version /readyz reports for a routes.yaml text."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_config(path: pathlib.Path, text: str) -> str:
    """Write routes.yaml so that its mtime surely changes; returns the text written."""
    text = textwrap.dedent(text)
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 10_000_000, before + 10_000_000))
    return text


async def eventually(predicate, timeout: float = 10.0, what: str = "condition", server: Server | None = None):
    """Poll `predicate` (sync or async) until truthy; bounded, never blocks the loop."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"modelway exited ({server.proc.returncode}) waiting for {what}:\n"
                                 + server.log_path.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            log = server.log_path.read_text(errors="replace")[-3000:] if server else ""
            raise AssertionError(f"timed out waiting for {what}\n{log}")
        await asyncio.sleep(0.05)


async def wait_exit(server: Server, timeout: float) -> int:
    await eventually(lambda: server.proc.poll() is not None, timeout, "the process to exit")
    return server.proc.returncode


def ledger_rows(data_dir: pathlib.Path) -> list[dict]:
    path = data_dir / "modelway.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY id")]
    finally:
        conn.close()


async def readyz(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/readyz") as resp:
        return await resp.json()


async def chat(http: aiohttp.ClientSession, url: str, model: str, text: str = "hello", **extra):
    """(status, headers, parsed JSON) of a non-streaming request."""
    async with http.post(url + CHAT, json=chat_body(model, text, **extra)) as resp:
        return resp.status, resp.headers, orjson.loads(await resp.read())


def stream_text(raw: bytes) -> str:
    """The content of a complete, error-free SSE answer."""
    events = sse_data(raw)
    assert events and events[-1] == b"[DONE]", raw[-300:]
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), raw[-300:]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture
def start_server(tmp_path):
    """start_server(config_text, *args, env=...) -> Server, listening, with routes.yaml in tmp_path."""
    started: list[Server] = []

    async def start(text: str, *args: str, env: dict | None = None, workers: int = 1) -> Server:
        config = tmp_path / "routes.yaml"
        write_config(config, text)
        server = Server(tmp_path, "--config", str(config), *args, env=env)
        started.append(server)
        await eventually(lambda: len(server.events("listening")) >= workers, 20, "listening", server)
        server.config = config
        return server

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(5)
        for e in s.events("listening"):    # workers of a killed supervisor
            if pid_alive(e["pid"]):
                os.kill(e["pid"], 9)
        s.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session
