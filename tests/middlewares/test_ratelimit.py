"""Rate limits and budgets: minute_limit (with X-RateLimit-* headers on every response of a
limited key), daily_limit and balance from the recorded cost, max_concurrent; all enforced
before the upstream is called and shared by every worker process of the machine."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import openai
import orjson
import pytest

from proxy.store.counters import MAX_SEGMENTS, SharedCounters
from tests.cli.procs import Server, clean_env, pid_alive
from tests.middlewares.helpers import (APP, CHAT, OPS, assert_sdk_error, call, chat_body, eventually, key,
                                       parse_prometheus, routes, row_for, wait_ledger)

HI = [{"role": "user", "content": "hi"}]
MINUTE = "sk-mw-minute-0123456789abcdef"
DAILY = "sk-mw-daily-0123456789abcdef"
BALANCE = "sk-mw-balance-0123456789abcdef"
EMPTY = "sk-mw-empty-0123456789abcdef"
SERIAL = "sk-mw-serial-0123456789abcdef"
NONE_TODAY = "sk-mw-nonetoday-0123456789abcdef"
# mock-echo answering "hi": 8 prompt + 1 completion tokens at $1/$2 per 1M = $0.00001
ONE_REQUEST = 0.00001
DAILY_LIMIT = 0.0002       # 20 requests' cost, a bit over 2 requests' reservation


@pytest.fixture
async def limited(upstream, make_gateway):
    return await make_gateway(routes(upstream.url, keys=[
        key("app", APP),
        key("minute", MINUTE, minute_limit=3),
        key("daily", DAILY, daily_limit=DAILY_LIMIT),
        key("nonetoday", NONE_TODAY, daily_limit=0),
        key("balance", BALANCE, balance=DAILY_LIMIT),
        key("empty", EMPTY, balance=0),
        key("serial", SERIAL, max_concurrent=1, minute_limit=100),
    ]))


def rate_headers(headers) -> tuple[int, int, int]:
    return (int(headers["X-RateLimit-Limit-Minute"]), int(headers["X-RateLimit-Remaining-Minute"]),
            int(headers["X-RateLimit-Reset-Minute"]))


async def test_minute_limit_429_with_retry_after_and_headers_on_every_response(limited, upstream, data_dir):
    client = limited.client(MINUTE)
    remaining = []
    for _ in range(3):
        r = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        limit, left, reset = rate_headers(r.headers)
        assert limit == 3 and 1 <= reset <= 60
        remaining.append(left)
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    err = assert_sdk_error(exc.value, 429, "rate_limit_error", "minute_limit_exceeded")
    assert "3 requests per minute" in err["message"]
    headers = exc.value.response.headers
    assert 1 <= int(headers["Retry-After"]) <= 120
    limit, left, reset = rate_headers(headers)
    assert (limit, left) == (3, 0) and reset >= 1
    assert len(upstream.requests) == 3              # refused before the upstream is called
    row = await row_for(data_dir, exc.value.request_id)
    assert (row["status"], row["error_type"], row["key_label"]) == (429, "rate_limit_error", "minute")


async def test_rate_limit_headers_on_streamed_answers(limited):
    r = await limited.client(MINUTE).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, stream=True)
    assert rate_headers(r.headers)[:2] == (3, 2)
    assert [c async for c in r.parse()]


async def test_a_limited_key_can_still_list_models_and_read_its_account(limited, http):
    client = limited.client(MINUTE)
    for _ in range(3):
        await client.chat.completions.create(model="mock-echo", messages=HI)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="mock-echo", messages=HI)
    for path in ("/v1/models", "/v1/account/balance", "/v1/account/activity", "/v1/account/analytics"):
        status, _, body = await call(http, "GET", limited.url + path, MINUTE)
        assert status == 200, (path, body)
    assert (await call_balance(limited, MINUTE))[2]["requests"] == 4


async def test_unlimited_and_management_keys_get_no_rate_headers(limited):
    for secret in (APP, OPS):
        r = await limited.client(secret).chat.completions.with_raw_response.create(model="mock-echo", messages=HI)
        assert "X-RateLimit-Limit-Minute" not in r.headers


async def test_minute_limit_counts_every_worker_sharing_the_data_dir(upstream, make_gateway):
    text = routes(upstream.url, keys=[key("minute", MINUTE, minute_limit=4)])
    one, two = await make_gateway(text), await make_gateway(text, filename="routes-2.yaml")
    clients = [one.client(MINUTE), two.client(MINUTE)]

    async def attempt(client) -> int:
        try:
            await client.chat.completions.create(model="mock-echo", messages=HI)
            return 200
        except openai.RateLimitError:
            return 429
    statuses = await asyncio.gather(*(attempt(c) for c in clients * 6))
    assert statuses.count(200) == 4 and statuses.count(429) == 8


async def until_refused(client, model: str = "mock-echo", most: int = 100, **extra) -> tuple[int, Exception]:
    """Send requests one after the other until one is refused: (how many passed, the refusal)."""
    for n in range(most):
        try:
            await client.chat.completions.create(model=model, messages=HI, max_tokens=1, **extra)
        except openai.RateLimitError as exc:
            return n, exc
    raise AssertionError(f"{most} requests and none refused")


async def test_daily_limit_reserves_the_bound_and_counts_the_recorded_cost(limited, data_dir):
    client = limited.client(DAILY)
    first = await client.chat.completions.create(model="mock-echo", messages=HI, max_tokens=1)
    assert first.usage.cost == pytest.approx(ONE_REQUEST)
    passed, exc = await until_refused(client)
    # each reserves ~$0.00008 (its body's bytes at $1/1M + 1 token at $2/1M) and settles at
    # $0.00001: settled at the actual cost, many fit, and never more than the limit
    err = assert_sdk_error(exc, 429, "rate_limit_error", "daily_limit_insufficient")
    assert "could cost up to $0.0000" in err["message"] and "max_tokens" in err["tip"]
    assert int(exc.response.headers["Retry-After"]) >= 1
    _, _, balance = await call_balance(limited, DAILY)
    assert balance["spent_today"] == pytest.approx(ONE_REQUEST * (passed + 1))
    assert ONE_REQUEST * 10 <= balance["spent_today"] <= DAILY_LIMIT
    with pytest.raises(openai.RateLimitError) as exc:       # without max_tokens: the route's cap counts
        await client.chat.completions.create(model="mock-echo", messages=HI)
    assert exc.value.code == "daily_limit_insufficient"


async def test_a_used_up_daily_limit_is_exceeded_until_midnight(limited):
    with pytest.raises(openai.RateLimitError) as exc:
        await limited.client(NONE_TODAY).chat.completions.create(model="mock-echo", messages=HI, max_tokens=1)
    err = assert_sdk_error(exc.value, 429, "rate_limit_error", "daily_limit_exceeded")
    assert "Daily budget" in err["message"] and "00:00 UTC" in err["tip"]
    assert 1 <= int(exc.value.response.headers["Retry-After"]) <= 86400


async def test_daily_limit_holds_across_workers(upstream, make_gateway):
    text = routes(upstream.url, keys=[key("daily", DAILY, daily_limit=DAILY_LIMIT)])
    one, two = await make_gateway(text), await make_gateway(text, filename="routes-2.yaml")
    await until_refused(one.client(DAILY))
    with pytest.raises(openai.RateLimitError) as exc:
        await two.client(DAILY).chat.completions.create(model="mock-echo", messages=HI, max_tokens=1)
    assert exc.value.code == "daily_limit_insufficient"


async def test_streamed_spend_counts_toward_the_daily_limit(limited):
    stream = await limited.client(DAILY).chat.completions.create(model="mock-echo", messages=HI, stream=True,
                                                                 max_tokens=1)
    assert [c async for c in stream]
    assert limited.gateway.counters.spend_today("static:daily") == pytest.approx(ONE_REQUEST)
    assert limited.gateway.counters.reserved("static:daily") == 0


async def test_static_key_balance_is_used_up(limited, data_dir):
    with pytest.raises(openai.RateLimitError) as exc:
        await limited.client(EMPTY).chat.completions.create(model="mock-echo", messages=HI)
    err = assert_sdk_error(exc.value, 429, "rate_limit_error", "balance_exhausted")
    assert "balance" in err["message"] and exc.value.response.headers["Retry-After"]
    passed, exc = await until_refused(limited.client(BALANCE))
    assert exc.code == "balance_insufficient" and passed >= 10
    rows = await wait_ledger(data_dir, passed + 1, "WHERE key_label = ?", ("balance",))
    assert sum(r["cost"] for r in rows) <= DAILY_LIMIT


async def test_managed_key_balance_is_charged_and_never_overspent(limited, http, data_dir):
    status, _, body = await call(http, "POST", limited.url + "/v1/account/keys", OPS,
                                 {"label": "prepaid", "balance": DAILY_LIMIT})
    assert status == 201
    passed, exc = await until_refused(limited.client(body["key"]))
    assert exc.code == "balance_insufficient" and passed >= 10
    rows = await wait_ledger(data_dir, passed + 1, "WHERE key_label = ?", ("prepaid",))
    assert sum(r["cost"] for r in rows) <= DAILY_LIMIT

    async def charged():
        return (await call_balance(limited, body["key"]))[2]["balance"] == pytest.approx(
            DAILY_LIMIT - passed * ONE_REQUEST)
    await eventually(charged, timeout=3.0, what="the ledger to charge the key store")
    # a top-up (a change of the key) is counted at once, on every worker
    status, _, _ = await call(http, "PATCH", limited.url + f"/v1/account/keys/{body['data']['id']}", OPS,
                              {"balance": 1.0})
    assert status == 200
    assert (await limited.client(body["key"]).chat.completions.create(
        model="mock-echo", messages=HI, max_tokens=1)).choices


async def test_max_concurrent_refuses_the_extra_requests(limited, data_dir):
    client = limited.client(SERIAL)

    async def attempt():
        try:
            r = await client.chat.completions.with_raw_response.create(model="mock-lazy", messages=HI)
            return r.status_code, None
        except openai.RateLimitError as exc:
            return 429, exc
    results = await asyncio.gather(*(attempt() for _ in range(3)))
    assert sorted(status for status, _ in results) == [200, 429, 429]
    for status, exc in results:
        if exc is not None:
            assert_sdk_error(exc, 429, "rate_limit_error", "concurrency_limit_exceeded")
            assert exc.response.headers["Retry-After"] == "1"
            assert exc.response.headers["X-RateLimit-Limit-Minute"] == "100"
    # the slot is released once the request is over: the next one passes
    assert (await client.chat.completions.create(model="mock-lazy", messages=HI)).choices
    assert limited.gateway.counters.in_flight("static:serial") == 0


async def test_max_concurrent_slot_is_released_by_failures_and_disconnects(limited):
    client = limited.client(SERIAL)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=HI)
    with pytest.raises(openai.APITimeoutError):
        await limited.client(SERIAL, timeout=0.1).chat.completions.create(model="mock-lazy", messages=HI)
    await eventually(_released(limited), timeout=2.0, what="the in-flight slot released")
    assert (await client.chat.completions.create(model="mock-echo", messages=HI)).choices


def _released(gw):
    async def check():
        return gw.gateway.counters.in_flight("static:serial") == 0
    return check


async def call_balance(gw, secret):
    async with aiohttp.ClientSession() as http:
        status, headers, body = await call(http, "GET", gw.url + "/v1/account/balance", secret)
    assert status == 200, body
    return status, headers, body["data"]


# --- several worker processes -----------------------------------------------------------------

async def test_minute_limit_holds_across_worker_processes(tmp_path):
    """`modelway serve --workers 3`: a key with minute_limit N gets exactly N of 3N requests,
    however the kernel spreads the connections over the workers."""
    n = 8
    data_dir = tmp_path / "var"
    config = tmp_path / "routes.yaml"
    config.write_text(f"server: {{data_dir: {data_dir}, drain_seconds: 2}}\n"
                      + routes(None, keys=[key("minute", MINUTE, minute_limit=n)]))
    server = Server(tmp_path, "--config", str(config), "--workers", "3", env=clean_env())
    workers: set[int] = set()
    try:
        await asyncio.to_thread(server.wait_listening, 3)
        workers = {e["pid"] for e in server.events("listening")}
        assert len(workers) == 3

        async def one(i: int) -> int:
            # a connection per request: SO_REUSEPORT spreads them over the workers
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                status, _, _ = await call(http, "POST", server.url + CHAT, MINUTE, chat_body("mock-echo", f"r{i}"))
                return status
        statuses = await asyncio.gather(*(one(i) for i in range(3 * n)))
        assert statuses.count(200) == n and statuses.count(429) == 2 * n, statuses

        async def served_by():
            per_pid = {}
            for pid in workers:
                try:
                    snap = orjson.loads((data_dir / "metrics" / f"{pid}.json").read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    continue
                per_pid[pid] = sum(v for _, v in snap["counters"]["modelway_requests_total"])
            return per_pid if sum(per_pid.values()) == 3 * n else None
        per_pid = await eventually(served_by, timeout=5, interval=0.1, what="every worker's metrics snapshot")
        assert sum(1 for v in per_pid.values() if v) >= 2, f"one worker took every request: {per_pid}"
        rows = await wait_ledger(data_dir, 3 * n)
        assert sorted(r["status"] for r in rows) == [200] * n + [429] * (2 * n)
    finally:
        await asyncio.to_thread(_stop, server, workers)


def _stop(server: Server, workers: set[int]) -> None:
    """SIGTERM the supervisor (it forwards to the workers); kill what is left by pid."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except Exception:
            pass
    for pid in workers:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    server.close()


async def test_a_key_that_cannot_be_counted_is_refused_503_never_served_unlimited(upstream, make_gateway,
                                                                                    data_dir, http):
    data_dir.mkdir(parents=True)
    full = SharedCounters(data_dir / "counters.bin", slots=1)     # a table of one record a segment...
    for i in range(MAX_SEGMENTS):                                  # ...grown to its most, all in use
        full.admit(f"static:busy{i}", time.time(), 1000, None)
    full.close()
    gw = await make_gateway(routes(upstream.url, keys=[key("app", APP), key("minute", MINUTE, minute_limit=3)]))
    for _ in range(2):
        status, _, body = await call(http, "POST", gw.url + CHAT, MINUTE, chat_body("mock-echo"))
        assert status == 503 and body["error"]["code"] == "limits_unavailable", body
    assert (await call(http, "POST", gw.url + CHAT, APP, chat_body("mock-echo")))[0] == 200   # unlimited: fine
    async with http.get(gw.url + "/metrics") as resp:
        samples = parse_prometheus(await resp.text())
    assert samples[("modelway_limits_uncounted_total", frozenset())] == 2


async def test_the_reservation_is_the_body_bytes_and_the_output_cap_at_the_route_prices(upstream, make_gateway,
                                                                                          http):
    models = {"claude-x": {"targets": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}],
                           "pricing": {"input": 3.0, "output": 15.0, "cache_write": 3.75}},
              "capped": {"targets": [{"provider": "mock"}], "pricing": {"input": 1.0, "output": 2.0},
                         "max_tokens": 1000}}
    providers = {"claude": {"type": "anthropic", "base_url": upstream.url, "api_key": "k"}}
    gw = await make_gateway(routes(upstream.url, keys=[key("daily", DAILY, daily_limit=0.0001)], models=models,
                                   providers=providers))

    async def refusal(body: bytes) -> str:
        status, _, got = await call(http, "POST", gw.url + CHAT, DAILY, body)
        assert status == 429 and got["error"]["code"] == "daily_limit_insufficient", got
        return got["error"]["message"]
    body = b'{"model": "capped", "messages": [{"role": "user", "content": "hi"}]}'
    # len(body) bytes at $1/1M + the route's max_tokens 1000 at $2/1M
    assert f"up to ${(len(body) * 1 + 1000 * 2) / 1e6:.6f}," in await refusal(body)
    body = b'{"model": "capped", "n": 3, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}'
    assert f"up to ${(len(body) * 1 + 3 * 50 * 2) / 1e6:.6f}," in await refusal(body)
    # a Claude model without max_tokens: its output limit (64,000), prompt at the dearest price
    body = b'{"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}'
    assert f"up to ${(len(body) * 3.75 + 64000 * 15) / 1e6:.6f}," in await refusal(body)
