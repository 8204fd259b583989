"""Cooldowns (outlier ejection) through real sockets: a target is skipped after `cooldown_after`
consecutive failed *requests* (not attempts), never when it is its route's last usable target
(panic mode), never for errors the request caused or client disconnects, and an upstream 429
cools it only for its Retry-After.

The upstream is the FaultyUpstream's `by-prompt` model: the prompt picks the behaviour, so one
target fails some requests (prompt `fail-500`) and answers the others (prompt `hi`, answered
with `"model": "hi"`); the fallback target is the mock provider (`"model": "fallback"`)."""
from __future__ import annotations

import asyncio
import textwrap
import time

import aiohttp
import orjson
import pytest

from proxy.config import ConfigError, parse_config
from tests.faults.conftest import CHAT, assert_envelope, chat, ledger_rows

ROUTES = """
  lone:   {targets: [{provider: bad, model: by-prompt}]}                  # defaults: retries 2, cooldown_after 5
  lone1:  {targets: [{provider: bad, model: by-prompt}], retries: 0, cooldown_after: 1}
  pair:   {targets: [{provider: bad, model: by-prompt}, {provider: mock, model: fallback}], retries: 1,
           cooldown_after: 3, cooldown_seconds: 1}
  pair2:  {targets: [{provider: bad, model: by-prompt}, {provider: mock, model: fallback}], retries: 0,
           cooldown_after: 2}
  rl:     {targets: [{provider: bad, model: by-prompt}, {provider: mock, model: fallback}], retries: 0}
  both:   {targets: [{provider: mock, model: mock-error}, {provider: bad, model: by-prompt}], retries: 0,
           cooldown_after: 1}
  heal:   {targets: [{provider: bad, model: flaky3-500}, {provider: mock, model: fallback}], retries: 0,
           cooldown_after: 3, cooldown_seconds: 1}
"""


@pytest.fixture
async def h(make_harness):
    return await make_harness(extra=ROUTES)


async def metrics_text(h) -> str:
    async with h.http.get(h.url + "/metrics") as resp:
        return await resp.text()


async def cooldown_gauge(h, model: str) -> float | None:
    for line in (await metrics_text(h)).splitlines():
        if line.startswith("modelway_target_cooldown{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_until(predicate, timeout: float = 4.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


async def answered_by(h, model: str, prompt: str) -> str:
    """Which target answered a request that must succeed: the prompt (by-prompt) or `fallback`."""
    status, _, body = await h.post(chat(model, prompt))
    assert status == 200, body
    return body["model"]


async def test_one_failing_request_with_retries_does_not_fail_the_others(h, faulty):
    """The issue's incident: one request provoking upstream 500s (3 attempts with retries: 2)
    used to cool the route's only target, and every request for the model got a 503."""
    status, headers, body = await h.post(chat("lone", "fail-500"))
    err = assert_envelope(status, headers, body, 502, "provider_error")
    assert err["upstream_status"] == 500 and faulty.hits["fail-500"] == 3
    assert (await h.row(headers["x-request-id"]))["attempts"] == 3
    assert await cooldown_gauge(h, "by-prompt") in (None, 0)       # one failed request: not cooling
    for i in range(6):
        assert await answered_by(h, "lone", f"hi-{i}") == f"hi-{i}"
    # a mixed workload, concurrent: a few requests the provider chokes on between ordinary ones
    # (their failures may well come in a row now and cool the target: it is still tried)
    prompts = [("fail-500" if i % 4 == 0 else f"ok-{i}") for i in range(24)]
    results = await asyncio.gather(*(h.post(chat("lone", p)) for p in prompts))
    for prompt, (status, _, body) in zip(prompts, results):
        if prompt == "fail-500":
            assert status == 502 and body["error"]["code"] != "all_targets_cooling_down", body
        else:
            assert status == 200 and body["model"] == prompt, body


async def test_target_is_skipped_after_cooldown_after_failed_requests(h, faulty):
    for n in (1, 2):
        assert await answered_by(h, "pair", "fail-500") == "fallback"   # the client never sees it
        assert faulty.hits["fail-500"] == 2 * n                          # retries: 1 -> 2 attempts each
        assert await cooldown_gauge(h, "by-prompt") in (None, 0)        # 4 failed attempts, 2 requests
    assert await answered_by(h, "pair", "fail-500") == "fallback"       # the third failed request
    cooled_at = time.monotonic()
    assert await cooldown_gauge(h, "by-prompt") == 1
    status, headers, body = await h.post(chat("pair", "hi"))
    assert status == 200 and body["model"] == "fallback" and faulty.hits["hi"] == 0   # skipped
    assert (await h.row(headers["x-request-id"]))["attempts"] == 1

    async def probed():       # after cooldown_seconds (1) the target is tried again, and answers
        return await answered_by(h, "pair", "hi") == "hi"

    await wait_until(probed, timeout=3, step=0.1)
    assert time.monotonic() - cooled_at > 0.9
    assert await cooldown_gauge(h, "by-prompt") == 0


async def test_a_successful_probe_ends_the_cooldown(h, faulty):
    for _ in range(3):
        assert await answered_by(h, "heal", "x") == "fallback"
    assert faulty.hits["flaky3-500"] == 3 and await cooldown_gauge(h, "flaky3-500") == 1

    async def healed():
        return await answered_by(h, "heal", "x") == "flaky3-500"

    await wait_until(healed, timeout=3, step=0.1)          # flaky3: its fourth request succeeds
    assert faulty.hits["flaky3-500"] == 4
    assert await cooldown_gauge(h, "flaky3-500") == 0


async def test_failed_probe_recools_without_waiting_for_cooldown_after(make_harness, faulty):
    h = await make_harness(extra=ROUTES + "  probe: {targets: [{provider: bad, model: by-prompt}, "
                                          "{provider: mock, model: fallback}], retries: 0, cooldown_after: 2, "
                                          "cooldown_seconds: 0.5}\n")
    for _ in range(2):
        assert await answered_by(h, "probe", "fail-500") == "fallback"
    assert faulty.hits["fail-500"] == 2
    await asyncio.sleep(0.6)                                # the cooldown (0.5 s) is over
    assert await answered_by(h, "probe", "fail-500") == "fallback"      # the probe fails ...
    assert faulty.hits["fail-500"] == 3
    status, _, body = await h.post(chat("probe", "hi"))     # ... and the target is skipped again
    assert status == 200 and body["model"] == "fallback" and faulty.hits["hi"] == 0


async def test_a_cooling_single_target_is_still_tried_never_503(h, faulty):
    status, headers, body = await h.post(chat("lone1", "fail-500"))
    assert_envelope(status, headers, body, 502, "provider_error")
    assert await cooldown_gauge(h, "by-prompt") == 1          # cooldown_after: 1
    for i in range(3):                                        # panic mode: the only target is tried
        status, headers, body = await h.post(chat("lone1", "fail-500"))
        assert status == 502 and body["error"]["code"] != "all_targets_cooling_down", body
        assert (await h.row(headers["x-request-id"]))["attempts"] == 1
    assert faulty.hits["fail-500"] == 4
    assert await answered_by(h, "lone1", "hi") == "hi"        # and its success ends the cooldown
    assert await cooldown_gauge(h, "by-prompt") == 0


async def test_when_all_targets_cool_the_one_whose_cooldown_ends_first_is_tried(h, faulty):
    # mock-error fails (cooled 30 s); by-prompt answers 429 with Retry-After: 9 (cooled 9 s)
    status, headers, body = await h.post(chat("both", "fail-429-ra9"))
    assert_envelope(status, headers, body, 429, "rate_limit_error")
    assert headers["Retry-After"] == "9"
    assert await cooldown_gauge(h, "mock-error") == 1 and await cooldown_gauge(h, "by-prompt") == 1
    # both cooling: by-prompt (second in order, but free again first) is the one tried
    status, headers, body = await h.post(chat("both", "hi"))
    assert status == 200 and body["model"] == "hi", body
    assert (await h.row(headers["x-request-id"]))["attempts"] == 1


async def test_models_fallbacks_come_before_a_cooling_target(h, faulty):
    status, _, _ = await h.post(chat("lone1", "fail-500"))
    assert status == 502
    status, headers, body = await h.post(chat("lone1", "hi", models=["ok"]))
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"    # the mock `ok` echoes
    assert faulty.hits["hi"] == 0
    row = await h.row(headers["x-request-id"])
    assert (row["model"], row["attempts"]) == ("ok", 1)


async def disconnect(h, faulty, prompt: str, model: str) -> None:
    """A client that gives up while the upstream is still working on its request."""
    before = faulty.hits[prompt]
    task = asyncio.ensure_future(h.post(chat(model, prompt)))

    async def reached():
        return faulty.hits[prompt] > before

    await wait_until(reached, timeout=2, step=0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_request_errors_and_client_disconnects_never_count(h, faulty):
    for status in (400, 404, 413, 422, 400, 404):
        got, headers, body = await h.post(chat("pair2", f"fail-{status}"))
        assert_envelope(got, headers, body, status, "invalid_request_error")
    for n in range(1, 4):
        await disconnect(h, faulty, "sleep700", "pair2")       # answers in 0.7 s: the client leaves first

        async def recorded(n=n):       # the gateway has seen the client go (its 499 ledger row)
            await h.gw.gateway.ledger.flush()
            return sum(r["status"] == 499 for r in ledger_rows(h.db_path)) == n

        await wait_until(recorded, timeout=3)
    assert await cooldown_gauge(h, "by-prompt") in (None, 0)
    assert await answered_by(h, "pair2", "fail-500") == "fallback"    # one real failure: 1 < cooldown_after 2
    assert await answered_by(h, "pair2", "hi") == "hi"                # not cooling: it answers itself
    assert await cooldown_gauge(h, "by-prompt") in (None, 0)
    for _ in range(2):                                                # and two real failures do cool it
        assert await answered_by(h, "pair2", "fail-500") == "fallback"
    assert await cooldown_gauge(h, "by-prompt") == 1


async def test_upstream_429_cools_the_target_only_for_its_retry_after(h, faulty):
    assert await answered_by(h, "rl", "fail-429-ra2") == "fallback"
    limited_at = time.monotonic()
    assert faulty.hits["fail-429-ra2"] == 1
    assert await answered_by(h, "rl", "hi") == "fallback"            # skipped while rate-limited
    assert faulty.hits["hi"] == 0

    async def back():
        return await answered_by(h, "rl", "hi") == "hi"

    await wait_until(back, timeout=4, step=0.1)
    took = time.monotonic() - limited_at
    assert 1.8 < took < 3.5, took                                     # Retry-After: 2, not 30 s
    # and a 429 is not a failure: cooldown_after (5) 429s without Retry-After cool nothing
    for _ in range(5):
        assert await answered_by(h, "rl", "fail-429") == "fallback"
    assert await answered_by(h, "rl", "hi") == "hi"


async def test_disconnect_during_a_retry_does_not_count(make_harness, faulty):
    """A request whose first attempt failed, then whose client left during the backoff: the
    request has no outcome, so the failure is not counted."""
    h = await make_harness(extra=ROUTES + "  slowretry: {targets: [{provider: bad, model: by-prompt}, "
                                          "{provider: mock, model: fallback}], retries: 1, cooldown_after: 1}\n")
    task = asyncio.ensure_future(h.post(chat("slowretry", "fail-503-ra1")))    # waits 1 s before retrying

    async def reached():
        return faulty.hits["fail-503-ra1"] == 1

    await wait_until(reached, timeout=2, step=0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def recorded():
        await h.gw.gateway.ledger.flush()
        return any(r["status"] == 499 for r in ledger_rows(h.db_path))

    await wait_until(recorded, timeout=3)
    assert faulty.hits["fail-503-ra1"] == 1
    assert await answered_by(h, "slowretry", "hi") == "hi"          # cooldown_after: 1, yet not cooling


async def test_streamed_requests_count_the_same_way(h, faulty):
    async with aiohttp.ClientSession() as http:
        async with http.post(h.url + CHAT, json=chat("lone", "fail-500", stream=True)) as resp:
            assert resp.status == 502
            assert orjson.loads(await resp.read())["error"]["type"] == "provider_error"
    async with aiohttp.ClientSession() as http:
        async with http.post(h.url + CHAT, json=chat("lone", "hi", stream=True)) as resp:
            assert resp.status == 200 and (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_cooldown_seconds_zero_never_skips_a_target(make_harness, faulty):
    h = await make_harness(extra=ROUTES + "  nocool: {targets: [{provider: bad, model: by-prompt}, "
                                          "{provider: mock, model: fallback}], retries: 0, cooldown_after: 1, "
                                          "cooldown_seconds: 0}\n")
    for _ in range(3):
        assert await answered_by(h, "nocool", "fail-500") == "fallback"
        assert await cooldown_gauge(h, "by-prompt") in (None, 0)
        assert await answered_by(h, "nocool", "hi") == "hi"


@pytest.mark.parametrize("field, value, message", [
    ("cooldown_after", 0, "int >= 1"),
    ("cooldown_after", 2.5, "int >= 1"),
    ("cooldown_seconds", -1, "number >= 0"),
])
def test_bad_cooldown_fields_name_their_line(field, value, message):
    text = textwrap.dedent(f"""\
        providers:
          mock: {{type: mock}}
        models:
          m:
            targets: [{{provider: mock}}]
            {field}: {value}
        """)
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "routes.yaml", env={})
    [problem] = exc_info.value.problems
    assert (problem.path, problem.line) == (f"models.m.{field}", 6), problem
    assert message in problem.message, problem.message


async def test_client_chosen_model_names_on_a_wildcard_route_add_no_cooldown_series(make_harness):
    h = await make_harness(extra='  "cw/*": {targets: [{provider: bad}], retries: 0, cooldown_after: 1}\n')
    for i in range(40):        # each name fails once and is ejected on its own
        status, _, _ = await h.post(chat(f"cw/flaky{1000 + i}-500"))
        assert status == 502
    lines = [ln for ln in (await metrics_text(h)).splitlines() if ln.startswith("modelway_target_cooldown{")]
    assert lines == ['modelway_target_cooldown{model="cw/*",provider="bad"} 1'], lines


def test_cooldown_memory_is_bounded_whatever_the_number_of_targets():
    from proxy.health import LocalHealth
    health = LocalHealth(max_targets=100)
    for i in range(1000):
        health.failure(("p", f"m{i}"), after=2, seconds=30)     # a failure count each
        health.failure(("q", f"m{i}"), after=1, seconds=30)     # a cooldown each
    assert len(health._failures) + len(health._until) <= 100
    assert health.remaining(("q", "m999")) > 0                  # the newest cooldown is kept
