"""Routing resilience: fallback to the next target, retries with backoff (Retry-After,
`retries`, `retry_on`), no retry once a byte reached the client, weighted choice, the
per-request `models` list, a dead primary under load, and the ledger's `attempts`. Cooldowns:
test_cooldowns.py."""
from __future__ import annotations

import asyncio
import hashlib
import re
import time

import orjson
import pytest

from tests.faults.conftest import assert_envelope, assert_stream_error, chat, sse_data

ROUTES = """
  fb-500:     {targets: [{provider: bad, model: fail-500}, {provider: bad, model: ok}], retries: 0}
  fb-refused: {targets: [{provider: dead, model: x}, {provider: bad, model: ok}], retries: 0}
  fb-timeout: {targets: [{provider: up, model: slow}, {provider: bad, model: ok}], retries: 0}
  fb-reset:   {targets: [{provider: bad, model: reset-early}, {provider: bad, model: ok}], retries: 0}
  fb-429:     {targets: [{provider: bad, model: fail-429}, {provider: bad, model: ok}], retries: 0}
  fb-empty:   {targets: [{provider: bad, model: empty-stream}, {provider: bad, model: ok}], retries: 0}
  fb-role:    {targets: [{provider: bad, model: reset-role}, {provider: bad, model: ok}], retries: 0}
  fb-body:    {targets: [{provider: bad, model: reset-body}, {provider: bad, model: ok}], retries: 0}
  fb-400:     {targets: [{provider: bad, model: fail-400}, {provider: bad, model: ok}], retries: 0}
  fb-mid:     {targets: [{provider: bad, model: error-after-content}, {provider: bad, model: ok}], retries: 2}
  flaky:      {targets: [{provider: bad, model: flaky2-503}], retries: 2}
  flaky-ra:   {targets: [{provider: bad, model: flaky1-503-ra1}], retries: 1}
  flaky-429:  {targets: [{provider: bad, model: flaky1-429-ra1}], retries: 1}
  always-503: {targets: [{provider: bad, model: fail-503}], retries: 2}
  only-500:   {targets: [{provider: bad, model: flaky1-500}, {provider: bad, model: ok}], retries: 1, retry_on: [500]}
  only-500b:  {targets: [{provider: bad, model: fail-503}, {provider: bad, model: ok}], retries: 1, retry_on: [500]}
  weighted:
    strategy: weighted
    retries: 0
    targets: [{provider: bad, model: ok-heavy, weight: 3}, {provider: bad, model: ok-light, weight: 1}]
  dead-only:  {targets: [{provider: dead, model: x}], retries: 0}
  also-ok:    {targets: [{provider: bad, model: ok}]}
  ha:         {targets: [{provider: bad, model: sleep20}, {provider: up, model: gpt-4o-mini}], retries: 0}
"""


@pytest.fixture
async def h(make_harness):
    return await make_harness(extra=ROUTES)


async def ledger_for(h, headers) -> dict:
    return await h.row(headers["x-request-id"])


def content_of(body, stream: bool) -> str:
    if not stream:
        return body["choices"][0]["message"]["content"]
    events = sse_data(body)
    assert events[-1] == b"[DONE]"
    parts = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in p for p in parts), parts
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in parts if p["choices"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model, failed", [
    ("fb-500", "fail-500"), ("fb-refused", None), ("fb-timeout", None), ("fb-reset", "reset-early"),
    ("fb-429", "fail-429"),
])
async def test_fallback_to_the_next_target_before_the_first_byte(h, faulty, model, failed, stream):
    status, headers, body = await h.post(chat(model, stream=stream))
    assert status == 200, body
    assert content_of(body, stream) == "Hello from faulty"
    if not stream:
        assert body["model"] == "ok"             # the target that answered
    if failed:
        assert faulty.hits[failed] == 1
    row = await ledger_for(h, headers)
    assert (row["status"], row["error_type"], row["attempts"]) == (200, None, 2)
    assert (row["provider"], row["upstream_model"]) == ("bad", "ok")


async def test_answer_cut_mid_body_falls_back(h, faulty):
    status, headers, body = await h.post(chat("fb-body"))
    assert status == 200, body
    assert body["model"] == "ok" and faulty.hits["reset-body"] == 1
    assert (await ledger_for(h, headers))["attempts"] == 2


@pytest.mark.parametrize("model", ["fb-empty", "fb-role"])
async def test_stream_failing_before_its_first_content_token_falls_back(h, model):
    status, headers, body = await h.post(chat(model, stream=True))
    assert status == 200
    assert content_of(body, True) == "Hello from faulty"
    assert (await ledger_for(h, headers))["attempts"] == 2


async def test_request_error_is_not_retried_nor_falls_back(h, faulty):
    status, headers, body = await h.post(chat("fb-400"))
    assert_envelope(status, headers, body, 400, "invalid_request_error")
    assert faulty.hits["fail-400"] == 1 and faulty.hits["ok"] == 0


async def test_no_retry_once_the_first_byte_reached_the_client(h, faulty):
    status, headers, raw = await h.post(chat("fb-mid", stream=True))
    assert status == 200
    assert_stream_error(raw, "provider_error", "upstream_stream_error")
    assert b"Hello" in raw                       # the first content token had been sent
    assert faulty.hits["error-after-content"] == 1 and faulty.hits["ok"] == 0
    row = await ledger_for(h, headers)
    assert (row["status"], row["partial"], row["attempts"]) == (502, 1, 1)


async def test_retries_with_backoff_until_the_upstream_recovers(h, faulty):
    started = time.monotonic()
    status, headers, body = await h.post(chat("flaky"))
    took = time.monotonic() - started
    assert status == 200, body
    assert faulty.hits["flaky2-503"] == 3
    assert 0.3 < took < 2.5, took                # 0.25 s then 0.5 s, each with 50-100 % jitter
    row = await ledger_for(h, headers)
    assert (row["status"], row["attempts"], row["upstream_model"]) == (200, 3, "flaky2-503")


@pytest.mark.parametrize("model, upstream", [
    ("flaky-ra", "flaky1-503-ra1"),
    ("flaky-429", "flaky1-429-ra1")])
async def test_retry_honours_retry_after(h, faulty, model, upstream):
    started = time.monotonic()
    status, headers, body = await h.post(chat(model))
    took = time.monotonic() - started
    assert status == 200, body
    assert faulty.hits[upstream] == 2
    assert 0.95 < took < 2.5, took               # Retry-After: 1, not the 0.25 s backoff
    assert (await ledger_for(h, headers))["attempts"] == 2


async def test_retries_are_bounded_by_retries(h, faulty):
    status, headers, body = await h.post(chat("always-503"))
    err = assert_envelope(status, headers, body, 502, "provider_error")
    assert err["upstream_status"] == 503
    assert faulty.hits["fail-503"] == 3          # retries: 2 -> three attempts, then no more
    row = await ledger_for(h, headers)
    assert (row["status"], row["error_type"], row["attempts"]) == (502, "provider_error", 3)


async def test_retry_on_limits_which_statuses_are_retried(h, faulty):
    status, _, body = await h.post(chat("only-500"))
    assert status == 200 and body["model"] == "flaky1-500"    # 500 is in retry_on: retried, then answered
    assert faulty.hits["flaky1-500"] == 2
    status, headers, body = await h.post(chat("only-500b"))
    assert status == 200 and body["model"] == "ok"              # 503 is not: no retry, straight to the fallback
    assert faulty.hits["fail-503"] == 1 and faulty.hits["ok"] == 1
    assert (await ledger_for(h, headers))["attempts"] == 2


async def test_weighted_strategy_distributes_by_weight(h, faulty):
    n = 240
    sem = asyncio.Semaphore(12)

    async def one():
        async with sem:
            status, _, body = await h.post(chat("weighted"))
            assert status == 200, body

    await asyncio.gather(*(one() for _ in range(n)))
    heavy, light = faulty.hits["ok-heavy"], faulty.hits["ok-light"]
    assert heavy + light == n
    assert 0.62 < heavy / n < 0.87, (heavy, light)    # weight 3 : 1 -> 0.75 (sd 0.028)


async def test_per_request_models_list_falls_back_openrouter_style(h, faulty):
    status, headers, body = await h.post(chat("dead-only", models=["also-ok"]))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Hello from faulty"
    assert "models" not in faulty.bodies[-1]        # the gateway's own field never goes upstream
    row = await ledger_for(h, headers)
    assert (row["status"], row["model"], row["attempts"]) == (200, "also-ok", 2)


async def test_per_request_models_are_checked_against_the_key(make_harness, faulty):
    secret = "sk-fault-models-0123456789abcdef"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    h = await make_harness(middlewares="auth, accounting", extra=ROUTES + (
        f"keys: [{{label: narrow, sha256: {digest}, allowed_models: [dead-only, ok]}}]"))
    h.headers = {"Authorization": f"Bearer {secret}"}
    status, headers, body = await h.post(chat("dead-only", models=["also-ok"]))
    err = assert_envelope(status, headers, body, 403, "permission_error", "model_not_allowed")
    assert err["param"] == "models[0]"
    assert faulty.hits["ok"] == 0
    status, _, body = await h.post(chat("dead-only", models=["ok"]))
    assert status == 200, body
    status, headers, body = await h.post(chat("dead-only", models="also-ok"))
    assert_envelope(status, headers, body, 400, "invalid_request_error")


async def metrics_text(h) -> str:
    async with h.http.get(h.url + "/metrics") as resp:
        return await resp.text()


def cooldown_gauge(text: str, model: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("modelway_target_cooldown{") and f'model="{model}"' in line and 'provider="bad"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_killing_the_primary_mid_load_is_invisible_to_clients(h, faulty, fake_openai):
    """Done-means of issue 5: the primary dies under load; every client gets its answer from
    the fallback, the ledger has every request, /metrics shows the cooldown."""
    n, done = 60, 0
    killed = asyncio.Event()
    results: list[tuple[int, str, bytes]] = []
    sem = asyncio.Semaphore(6)

    async def one(i: int):
        nonlocal done
        async with sem:
            stream = i % 3 == 0
            status, headers, body = await h.post(chat("ha", stream=stream))
            results.append((status, headers["x-request-id"], body if isinstance(body, bytes) else orjson.dumps(body)))
            done += 1
            if done == 15 and not killed.is_set():
                killed.set()
                await faulty.stop()

    await asyncio.gather(*(one(i) for i in range(n)))
    assert killed.is_set() and faulty.hits["sleep20"] >= 15
    assert [s for s, _, _ in results] == [200] * n, [b for s, _, b in results if s != 200]
    assert all(b'"error"' not in b for _, _, b in results)
    assert all(b.endswith(b"data: [DONE]\n\n") for i, (_, _, b) in enumerate(results) if b.startswith(b"data:"))
    assert any(r["json"]["model"] == "gpt-4o-mini" for r in fake_openai.requests)   # the fallback answered
    rows = await h.rows([rid for _, rid, _ in results])
    assert len(rows) == n and all(r["status"] == 200 for r in rows.values())
    assert cooldown_gauge(await metrics_text(h), "sleep20") == 1
    text = await metrics_text(h)
    assert re.search(r'modelway_upstream_errors_total\{provider="bad",type="upstream_unreachable"\} [1-9]', text)
