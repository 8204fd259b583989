"""Fault-injection fixtures: a gateway (with the accounting ledger) in front of three kinds of
upstream on 127.0.0.1 — the raw `FaultyUpstream`, the aiohttp `FakeOpenAI` and a closed port —
plus the checks every fault case ends with: one ledger row, no leaked task or socket, and the
gateway still answering."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import aiohttp
import orjson
import pytest

from tests.fakes.echo_upstream import EchoUpstream
from tests.fakes.faulty_upstream import closed_port
from tests.wire import chat_body, sse_data  # noqa: F401  (re-exported for the tests)

CHAT = "/v1/chat/completions"

# `bad/<behaviour>` goes to the FaultyUpstream, `up/<behaviour>` to the aiohttp FakeOpenAI,
# `dead/<x>` to a port that refuses connections; `ok` is the mock provider. `long/*` is the
# FaultyUpstream with a 30 s `total` (what ends a stream there is `idle`), `small/*` with a
# 1 MB `max_response_mb`.
CONFIG = """
server: {{data_dir: "{data_dir}", max_body_mb: {max_body_mb}, max_json_depth: 32, body_timeout: 0.5}}
middlewares: [{middlewares}]
providers:
  bad: {{type: openai, base_url: "{faulty}", timeouts: {{connect: 1, first_byte: 1, idle: 0.5, total: 1.2}}}}
  up: {{type: openai, base_url: "{fake}", timeouts: {{connect: 1, first_byte: 0.5, idle: 0.5, total: 5}}}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{closed}/v1", timeouts: {{connect: 1}}}}
  long: {{type: openai, base_url: "{faulty}", timeouts: {{connect: 1, first_byte: 20, idle: 0.5, total: 30}}}}
  small: {{type: openai, base_url: "{faulty}", max_response_mb: 1, timeouts: {{connect: 1, idle: 0.5}}}}
  mock: {{type: mock, options: {{chunks: 3}}}}
models:
  "bad/*": {{targets: [{{provider: bad}}], retries: 0}}
  "up/*": {{targets: [{{provider: up}}], retries: 0}}
  "dead/*": {{targets: [{{provider: dead}}], retries: 0}}
  "long/*": {{targets: [{{provider: long}}], retries: 0}}
  "small/*": {{targets: [{{provider: small}}], retries: 0}}
  ok: {{targets: [{{provider: mock}}], pricing: {{input: 1, output: 2}}}}
{extra}
"""


def config_text(tmp_path, faulty, fake, *, middlewares: str = "accounting", extra: str = "",
                max_body_mb: float = 0.05) -> str:
    return CONFIG.format(data_dir=tmp_path / "var", faulty=faulty.url, fake=fake.url, closed=closed_port(),
                         middlewares=middlewares, extra=extra, max_body_mb=max_body_mb)


def chat(model: str = "ok", text: str = "hi", **extra) -> dict:
    return chat_body(model, text, **extra)


def assert_envelope(status: int, headers, body: dict, want_status: int, want_type: str,
                    code: str | None = None) -> dict:
    """SPEC §6: the error envelope, its trace_id equal to the response's x-request-id."""
    assert status == want_status, body
    err = body["error"]
    assert set(err) >= {"message", "type", "code", "param", "tip", "trace_id"}
    assert err["type"] == want_type, err
    if code is not None:
        assert err["code"] == code, err
    assert err["trace_id"] == headers["x-request-id"]
    return err


def assert_stream_error(raw: bytes, want_type: str = "provider_error", code: str | None = None) -> dict:
    """A stream that failed after its first byte: valid JSON events, then one error event, then [DONE]."""
    events = sse_data(raw)
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-300:]
    assert events[-1] == b"[DONE]" and len(events) >= 2
    for ev in events[:-2]:
        assert b'"error"' not in ev
        orjson.loads(ev)    # nothing malformed reached the client
    err = orjson.loads(events[-2])["error"]
    assert err["type"] == want_type, err
    if code is not None:
        assert err["code"] == code, err
    return err


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def ledger_rows(db_path: str, request_id: str | None = None) -> list[dict]:
    if not os.path.exists(db_path):
        return []
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        if request_id is None:
            cur = conn.execute("SELECT * FROM ledger ORDER BY id")
        else:
            cur = conn.execute("SELECT * FROM ledger WHERE request_id = ? ORDER BY id", (request_id,))
        return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


class Harness:
    """One gateway, one HTTP client that never keeps connections alive, and the after-checks."""

    def __init__(self, running, http: aiohttp.ClientSession):
        self.gw = running
        self.url = running.url
        self.http = http
        self.db_path = os.path.join(running.gateway.data_dir, "modelway.db")
        self.tasks = self.fds = 0
        self.headers: dict[str, str] = {}      # sent with every request (e.g. an API key)

    async def post(self, body, headers: dict | None = None, timeout: float = 10):
        """POST a chat request: (status, headers, parsed JSON or raw bytes for streams)."""
        data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
        async with self.http.post(self.url + CHAT, data=data, timeout=aiohttp.ClientTimeout(total=timeout),
                                  headers={"Content-Type": "application/json", **self.headers,
                                           **(headers or {})}) as resp:
            raw = await resp.read()
            if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                return resp.status, resp.headers, raw
            return resp.status, resp.headers, orjson.loads(raw) if raw else None

    async def baseline(self, *warm_models: str) -> None:
        """Warm up (pools, lazy tasks), then count the tasks and file descriptors in use."""
        for model in ("ok", *warm_models):
            status, _, body = await self.post(chat(model))
            assert status == 200, body
        await self.gw.gateway.ledger.flush()
        # SQLite keeps a closed connection's descriptor while another connection of this process
        # holds a lock on the file (POSIX lock semantics) and reuses it: open one before counting
        ledger_rows(self.db_path)
        self.tasks, self.fds = await settle(lambda: len(asyncio.all_tasks())), await settle(count_fds)

    async def row(self, request_id: str, timeout: float = 3.0) -> dict:
        """The one ledger row of a request, read from data_dir/modelway.db with sqlite3."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            await self.gw.gateway.ledger.flush()
            rows = ledger_rows(self.db_path, request_id)
            if rows:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        await self.gw.gateway.ledger.flush()
        rows = ledger_rows(self.db_path, request_id)
        assert len(rows) == 1, f"expected one ledger row for {request_id}, got {rows}"
        return rows[0]

    async def rows(self, request_ids: list[str], timeout: float = 5.0) -> dict[str, dict]:
        """The ledger rows of many requests: exactly one each."""
        want = set(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            await self.gw.gateway.ledger.flush()
            found = [r for r in ledger_rows(self.db_path) if r["request_id"] in want]
            if {r["request_id"] for r in found} == want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        by_id: dict[str, dict] = {}
        for r in found:
            assert r["request_id"] not in by_id, f"two ledger rows for {r['request_id']}"
            by_id[r["request_id"]] = r
        assert set(by_id) == want, f"no ledger row for {want - set(by_id)}"
        return by_id

    async def assert_healthy(self, timeout: float = 3.0) -> None:
        """A normal request still works, and no task or socket outlived the faulty request."""
        status, _, body = await self.post(chat("ok", "still there?"))
        assert status == 200 and body["choices"][0]["message"]["content"] == "still there?"
        await self.gw.gateway.ledger.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks, fds = len(asyncio.all_tasks()), count_fds()
            if tasks <= self.tasks and fds <= self.fds:
                return
            await asyncio.sleep(0.05)
        leaked = [t for t in asyncio.all_tasks() if not t.done()]
        raise AssertionError(f"leak: tasks {len(asyncio.all_tasks())} > {self.tasks} or fds {count_fds()} > "
                             f"{self.fds}; tasks: {[t.get_coro() for t in leaked]}; fds: {fd_targets()}")


def fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


async def settle(measure, rounds: int = 40) -> int:
    """The value once it stops changing (a few quiet polls), bounded."""
    last, same = measure(), 0
    for _ in range(rounds):
        await asyncio.sleep(0.025)
        now = measure()
        same = same + 1 if now == last else 0
        last = now
        if same >= 3:
            break
    return last


@pytest.fixture
async def echo():
    """The upstream that echoes its request headers (tests/fakes/echo_upstream.py)."""
    upstream = await EchoUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def client_session():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        yield http


@pytest.fixture
async def harness(tmp_path, faulty, fake_openai, make_gateway, client_session):
    """The standard fault gateway; `harness.make(**config_text kwargs)` builds a variant."""
    running = await make_gateway(config_text(tmp_path, faulty, fake_openai))
    return Harness(running, client_session)


@pytest.fixture
def make_harness(tmp_path, faulty, fake_openai, make_gateway, client_session):
    async def make(**kw) -> Harness:
        running = await make_gateway(config_text(tmp_path, faulty, fake_openai, **kw))
        return Harness(running, client_session)
    return make
