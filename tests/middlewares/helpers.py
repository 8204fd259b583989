"""Helpers of the middleware tests (fixtures in conftest.py): one routing table over a fake
OpenAI upstream and the mock provider, keys by secret, the ledger read from SQLite as a user
would (after the gateway's batched flush), Prometheus text parsed into samples."""
from __future__ import annotations

import asyncio
import copy
import hashlib
import sqlite3
import time
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI
from tests.wire import chat_body  # noqa: F401  (re-exported for the tests)

APP = "sk-mw-app-0123456789abcdef"          # a static key with no limits
OTHER = "sk-mw-other-0123456789abcdef"      # a second static key (cache scope, own vs all)
OPS = "sk-mw-ops-0123456789abcdef"          # a management key
UNKNOWN = "sk-mw-unknown-0123456789abcdef"
CHAT = "/v1/chat/completions"
DEFAULT_MIDDLEWARES = ["access_log", "auth", "ratelimit", "presets", "cache", "accounting"]
PRICING = {"input": 0.15, "output": 0.60, "cached_input": 0.075}


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key(label: str, secret: str, **fields) -> dict:
    """One static key entry for routes.yaml (by sha256 of the secret, never the secret)."""
    return {"label": label, "sha256": sha(secret), **fields}


def routes(upstream_url: str | None = None, *, keys: list[dict] | None = None,
           middlewares: list | None = None, models: dict | None = None, providers: dict | None = None,
           **sections) -> str:
    """A routes.yaml text: the fake upstream as `up` (models `gpt-4o-mini`, `gpt-4o`, `up/*`),
    the mock provider (`mock-echo`, `mock-lazy` with 400 ms latency), keys APP and OTHER, the
    management key OPS. `models` and `providers` add entries; `sections` adds top-level sections
    (cache, presets, auth, server)."""
    providers = {"mock": {"type": "mock", "options": {"chunks": 4}},
                 "lazy": {"type": "mock", "options": {"latency_ms": 400}}, **(providers or {})}
    # `max_tokens`: the output cap a request without one reserves against a balance (the mock
    # echoes the prompt: far less)
    table: dict = {"mock-echo": {"targets": [{"provider": "mock"}], "pricing": {"input": 1.0, "output": 2.0},
                                 "max_tokens": 256},
                   "mock-lazy": {"targets": [{"provider": "lazy"}], "pricing": {"input": 1.0, "output": 2.0},
                                 "max_tokens": 256}}
    if upstream_url:
        providers["up"] = {"type": "openai", "base_url": upstream_url,
                           "timeouts": {"first_byte": 5, "idle": 5, "total": 30}}
        table.update({
            "gpt-4o-mini": {"targets": [{"provider": "up", "model": "gpt-4o-mini-2024-07-18"}], "pricing": PRICING},
            "gpt-4o": {"targets": [{"provider": "up"}], "pricing": {"input": 2.5, "output": 10.0}},
            "up/*": {"targets": [{"provider": "up"}], "retries": 0, "pricing": PRICING},
        })
    table.update(models or {})
    doc = {"middlewares": middlewares or DEFAULT_MIDDLEWARES, "providers": providers, "models": table,
           "keys": keys if keys is not None else [key("app", APP), key("other", OTHER)],
           "management_keys": [key("ops", OPS)], **sections}
    return yaml.safe_dump(doc, sort_keys=False)


def usage_for(text: str) -> dict:
    """The usage the metered upstream reports for a prompt: different for every text."""
    n = len(text)
    cached = n % 3
    return {"prompt_tokens": 10 + n, "completion_tokens": 1 + n % 7, "total_tokens": 11 + n + n % 7,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": n % 2, "audio_tokens": 0}}


class MeteredUpstream(FakeOpenAI):
    """The fake OpenAI upstream whose model `metered` reports a usage that depends on the prompt
    (see `usage_for`), streamed or not; every other model behaves as in FakeOpenAI."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: list[dict] = []

    async def _answer(self, request, body, model):
        if model != "metered":
            return await super()._answer(request, body, model)
        usage = usage_for(body["messages"][-1]["content"])
        self.issued.append(usage)
        if not body.get("stream"):
            data = copy.deepcopy(self.completion)
            data["usage"] = usage
            return web.json_response(data)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for ev in self.text_stream:
            if b'"choices":[]' in ev:
                chunk = orjson.loads(ev[len(b"data: "):])
                chunk["usage"] = usage
                ev = b"data: " + orjson.dumps(chunk) + b"\n\n"
            await resp.write(ev)
        return resp


def bearer(secret: str | None) -> dict:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


async def call(http: aiohttp.ClientSession, method: str, url: str, secret: str | None = None,
               body=None, headers: dict | None = None):
    """(status, headers, parsed JSON body) of one request; `body` may be a dict or raw bytes."""
    data = body if isinstance(body, (bytes, str)) or body is None else orjson.dumps(body)
    hdrs = {**({"Content-Type": "application/json"} if data is not None else {}), **bearer(secret),
            **(headers or {})}
    async with http.request(method, url, data=data, headers=hdrs) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, (orjson.loads(raw) if raw else None)


def assert_envelope(result, status: int, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """The SPEC §6 envelope of a (status, headers, body) triple, trace_id == x-request-id."""
    got, headers, body = result
    assert got == status, body
    err = body["error"]
    assert set(err) >= {"message", "type", "code", "param", "tip", "trace_id"}, err
    assert err["type"] == type_, err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert err["message"] and err["trace_id"] == headers["x-request-id"]
    return err


def assert_sdk_error(exc, status: int, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """The same for an openai.APIStatusError raised by the official SDK."""
    assert exc.status_code == status, exc.body
    assert exc.type == type_, exc.body
    if code is not None:
        assert exc.code == code, exc.body
    if param is not None:
        assert exc.param == param, exc.body
    assert set(exc.body) >= {"message", "type", "code", "param", "tip", "trace_id"}
    assert exc.body["trace_id"] == exc.request_id == exc.response.headers["x-request-id"]
    return exc.body


# --- the ledger, read from SQLite as `modelway usage` would ------------------------------------

def db_file(data_dir: Path) -> Path:
    return Path(data_dir) / "modelway.db"


def read_ledger(data_dir: Path, where: str = "", params: tuple = ()) -> list[dict]:
    path = db_file(data_dir)
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path), timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(f"SELECT * FROM ledger {where} ORDER BY id", params).fetchall()
        except sqlite3.OperationalError as exc:     # schema not created yet
            if "no such table" in str(exc):
                return []
            raise
        return [dict(r) for r in rows]
    finally:
        conn.close()


async def wait_ledger(data_dir: Path, n: int, where: str = "", params: tuple = (), timeout: float = 5.0,
                      settle: float = 0.0) -> list[dict]:
    """Poll the ledger until it holds at least `n` matching rows (the gateway flushes every
    0.25 s); with `settle`, check again after that long that no extra row appears."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(read_ledger, data_dir, where, params)
        if len(rows) >= n:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} ledger rows {where}, found {len(rows)}: {rows}")
        await asyncio.sleep(0.05)
    if settle:
        await asyncio.sleep(settle)
        rows = await asyncio.to_thread(read_ledger, data_dir, where, params)
    return rows


async def row_for(data_dir: Path, request_id: str, timeout: float = 5.0) -> dict:
    rows = await wait_ledger(data_dir, 1, "WHERE request_id = ?", (request_id,), timeout=timeout)
    assert len(rows) == 1, rows
    return rows[0]


async def eventually(check, timeout: float = 3.0, interval: float = 0.05, what: str = "condition"):
    """Await `check()` (async, returning a truthy value when done) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(interval)


# --- Prometheus text ---------------------------------------------------------------------------

def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """{(metric name, frozenset of label pairs): value}; checks every line is well formed and
    every sample follows a `# TYPE` line of its family."""
    import re
    sample_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    typed: dict[str, str] = {}
    out: dict = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            typed[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = sample_re.match(line)
        assert m, f"bad sample line: {line!r}"
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"sample without # TYPE: {line!r}"
        pairs = label_re.findall(labels)
        assert ",".join(f'{k}="{v}"' for k, v in pairs) == labels, f"bad labels: {line!r}"
        out[(name, frozenset(pairs))] = float(value.replace("+Inf", "inf"))
    return out


def metric(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and want <= set(pairs))
