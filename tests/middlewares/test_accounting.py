"""Token accounting: one ledger row per request whatever its outcome (but a 401: no key, no row), totals equal to what the
upstream reported, `usage.cost` on answers, the account API (activity, analytics, balance)
reading the ledger for one key or, with a management key, for all."""
from __future__ import annotations

import asyncio
import random

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.middlewares.helpers import (APP, CHAT, OPS, OTHER, PRICING, UNKNOWN, assert_envelope, call,
                                       chat_body, key, read_ledger, routes, usage_for, wait_ledger)

HI = [{"role": "user", "content": "hi"}]
BUDGET = "sk-mw-budget-0123456789abcdef"


def priced(usage: dict, pricing: dict = PRICING) -> float:
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return round(((usage["prompt_tokens"] - cached) * pricing["input"] + cached * pricing["cached_input"]
                  + usage["completion_tokens"] * pricing["output"]) / 1_000_000, 10)


@pytest.fixture
async def gw(upstream, make_gateway):
    return await make_gateway(routes(upstream.url, cache={"enabled": True}, keys=[
        key("app", APP), key("other", OTHER), key("budget", BUDGET, minute_limit=1, daily_limit=5, balance=2)]))


async def test_concurrent_requests_give_exactly_one_row_each_with_the_upstream_totals(gw, upstream, data_dir):
    n = 50
    client = gw.client(APP)
    rng = random.Random(7)
    texts = [f"request {i} " + "x" * rng.randrange(0, 200) for i in range(n)]

    async def one(i: int, text: str) -> tuple[str, float]:
        ask = {"model": "up/metered", "messages": [{"role": "user", "content": text}],
               "extra_headers": {"Cache-Control": "no-store"}}
        if i % 2:
            r = await client.chat.completions.with_raw_response.create(
                **ask, stream=True, stream_options={"include_usage": True})
            chunks = [c async for c in r.parse()]
            return r.headers["x-request-id"], chunks[-1].usage.cost
        r = await client.chat.completions.with_raw_response.create(**ask)
        return r.headers["x-request-id"], r.parse().usage.cost

    answers = await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    rows = await wait_ledger(data_dir, n, settle=0.4)
    assert len(rows) == n
    assert {r["request_id"] for r in rows} == {rid for rid, _ in answers}
    issued = upstream.issued
    assert len(issued) == n
    assert sum(r["prompt_tokens"] for r in rows) == sum(u["prompt_tokens"] for u in issued)
    assert sum(r["completion_tokens"] for r in rows) == sum(u["completion_tokens"] for u in issued)
    assert sum(r["cached_tokens"] for r in rows) == sum(u["prompt_tokens_details"]["cached_tokens"] for u in issued)
    assert sum(r["reasoning_tokens"] for r in rows) == \
        sum(u["completion_tokens_details"]["reasoning_tokens"] for u in issued)
    assert sum(r["cost"] for r in rows) == pytest.approx(sum(priced(u) for u in issued))
    by_id = {r["request_id"]: r for r in rows}
    for rid, cost in answers:
        assert by_id[rid]["cost"] == pytest.approx(cost)
        assert (by_id[rid]["status"], by_id[rid]["error_type"], by_id[rid]["partial"]) == (200, None, 0)
    assert sum(r["stream"] for r in rows) == n // 2
    assert all(r["ttft_ms"] is not None for r in rows if r["stream"])
    # what a request did not have is NULL in the ledger (the row binds '' / -1 for it)
    assert all(r["ttft_ms"] is None for r in rows if not r["stream"])
    assert all(r["preset"] is None and r["key_id"] for r in rows)
    assert all(r["latency_ms"] > 0 and r["provider"] == "up" and r["upstream_model"] == "metered" for r in rows)


async def test_usage_cost_in_answers_and_in_the_streamed_usage_chunk(gw, upstream, data_dir):
    client = gw.client(APP)
    ask = [{"role": "user", "content": "what does this cost?"}]
    expected = priced(usage_for(ask[0]["content"]))
    c = await client.chat.completions.create(model="up/metered", messages=ask, extra_body={"cache": {"no-store": True}})
    assert c.usage.cost == pytest.approx(expected) and c.usage.prompt_tokens == 30
    assert c.usage.prompt_tokens_details.cached_tokens == usage_for(ask[0]["content"])["prompt_tokens_details"][
        "cached_tokens"]
    stream = await client.chat.completions.create(model="up/metered", messages=ask, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"cache": {"no-store": True}})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.cost == pytest.approx(expected)
    # without include_usage the client gets no usage chunk, yet the ledger learns the usage
    r = await client.chat.completions.with_raw_response.create(model="up/metered", messages=ask, stream=True,
                                                               extra_body={"cache": {"no-store": True}})
    assert all(c.usage is None for c in [c async for c in r.parse()])
    rows = await wait_ledger(data_dir, 1, "WHERE request_id = ?", (r.headers["x-request-id"],))
    assert rows[0]["prompt_tokens"] == 30 and rows[0]["cost"] == pytest.approx(expected)


async def test_every_outcome_but_a_401_becomes_one_row(gw, upstream, data_dir, http):
    client = gw.client(APP)
    outcomes: dict[str, tuple] = {}

    async def record(name, coro, expect):
        try:
            r = await coro
            outcomes[name] = (r.headers["x-request-id"], expect)
            if hasattr(r.parse(), "__aiter__"):
                try:
                    [c async for c in r.parse()]
                except openai.APIError:      # the error event of a stream that broke
                    pass
        except openai.APIStatusError as exc:
            outcomes[name] = (exc.request_id, expect)

    raw = client.chat.completions.with_raw_response
    await record("ok", raw.create(model="gpt-4o-mini", messages=HI), (200, None, 0, 0))
    await record("hit", raw.create(model="gpt-4o-mini", messages=HI), (200, None, 1, 0))
    await record("upstream 500", raw.create(model="up/fail-500", messages=HI), (502, "provider_error", 0, 0))
    await record("upstream 400", raw.create(model="up/fail-400", messages=HI), (400, "invalid_request_error", 0, 0))
    await record("unknown model", raw.create(model="nope", messages=HI), (404, "invalid_request_error", 0, 0))
    await record("unknown key", gw.client(UNKNOWN).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI), None)     # a 401: counted in metrics, no row
    budget = gw.client(BUDGET).chat.completions.with_raw_response
    await record("first of budget", budget.create(model="mock-echo", messages=HI), (200, None, 0, 0))
    await record("over minute limit", budget.create(model="mock-echo", messages=HI), (429, "rate_limit_error", 0, 0))
    await record("broken stream", raw.create(model="up/midstream-error", messages=HI, stream=True),
                 (502, "provider_error", 0, 1))
    status, headers, _ = await call(http, "POST", gw.url + CHAT, APP, b"{not json")
    outcomes["bad json"] = (headers["x-request-id"], (400, "invalid_request_error", 0, 0))

    # client disconnects, streamed or not: the client picks the request id
    for name, model, stream in (("gone waiting", "up/hang", False), ("gone mid-stream", "up/stream-hang", True)):
        rid = f"test-{name.replace(' ', '-')}"
        async with aiohttp.ClientSession() as s:
            try:
                async with s.post(gw.url + CHAT, json=chat_body(model, stream=stream),
                                  headers={"Authorization": f"Bearer {APP}", "x-request-id": rid},
                                  timeout=aiohttp.ClientTimeout(total=0.5)) as resp:
                    await resp.content.readuntil(b"\n\n")
                    assert resp.headers["x-request-id"] == rid
            except asyncio.TimeoutError:
                pass
        outcomes[name] = (rid, (499, "client_disconnected", 0, 1))

    rows = await wait_ledger(data_dir, len(outcomes) - 1, settle=0.3)
    assert len(rows) == len(outcomes) - 1, rows
    by_id = {r["request_id"]: r for r in rows}
    assert outcomes.pop("unknown key")[0] not in by_id
    for name, (rid, (status, error_type, cache_hit, partial)) in outcomes.items():
        row = by_id[rid]
        assert (row["status"], row["error_type"], row["cache_hit"], row["partial"]) == \
            (status, error_type, cache_hit, partial), name
    assert by_id[outcomes["hit"][0]]["cost"] == 0 and by_id[outcomes["hit"][0]]["prompt_tokens"] == 12
    assert by_id[outcomes["upstream 500"][0]]["provider"] == "up"
    assert by_id[outcomes["upstream 500"][0]]["attempts"] == 1
    assert by_id[outcomes["over minute limit"][0]]["key_label"] == "budget"
    assert by_id[outcomes["broken stream"][0]]["stream"] == 1
    assert by_id[outcomes["gone waiting"][0]]["provider"] == "up"


async def test_embeddings_and_messages_are_accounted_too(gw, data_dir):
    e = await gw.client(APP).embeddings.with_raw_response.create(model="up/text-embedding-3-small", input=["a", "b"])
    m = await anthropic.AsyncAnthropic(base_url=gw.url, api_key=APP, max_retries=0).messages.with_raw_response.create(
        model="mock-echo", max_tokens=20, messages=HI)
    rows = {r["request_id"]: r for r in await wait_ledger(data_dir, 2)}
    emb, msg = rows[e.headers["x-request-id"]], rows[m.headers["x-request-id"]]
    assert (emb["endpoint"], emb["prompt_tokens"], emb["status"]) == ("embeddings", 10, 200)
    assert (msg["endpoint"], msg["model"], msg["status"]) == ("messages", "mock-echo", 200)
    assert msg["completion_tokens"] > 0 and msg["cost"] > 0


async def test_a_graceful_shutdown_loses_no_row(upstream, make_gateway, data_dir):
    gw = await make_gateway(routes(upstream.url))
    client = gw.client(APP)
    await asyncio.gather(*(client.chat.completions.create(model="mock-echo", messages=HI) for _ in range(20)))
    await gw.close()
    assert len(read_ledger(data_dir)) == 20


# --- the account API -------------------------------------------------------------------------

async def spend(gw, secret: str, model: str, n: int) -> list[str]:
    client = gw.client(secret)
    ids = []
    for i in range(n):
        r = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"{secret[:8]} {i}"}])
        ids.append(r.headers["x-request-id"])
    return ids


async def test_activity_is_paginated_newest_first_and_scoped_to_the_key(gw, http, data_dir):
    mine = await spend(gw, APP, "mock-echo", 3) + await spend(gw, APP, "gpt-4o-mini", 2)
    theirs = await spend(gw, OTHER, "mock-echo", 2)
    url = gw.url + "/v1/account/activity"
    status, _, page = await call(http, "GET", url + "?limit=2&offset=0", APP)
    assert status == 200 and page["object"] == "list"
    assert (page["limit"], page["offset"], page["has_more"]) == (2, 0, True)
    assert [r["request_id"] for r in page["data"]] == mine[::-1][:2]
    first = page["data"][0]
    assert {"model", "cost", "created_at", "status", "prompt_tokens", "completion_tokens", "cache_hit",
            "key_id"} <= set(first)
    assert (first["model"], first["key_id"], first["cache_hit"]) == ("gpt-4o-mini", "static:app", False)
    assert first["cost"] > 0
    _, _, last = await call(http, "GET", url + "?limit=2&offset=4", APP)
    assert [r["request_id"] for r in last["data"]] == mine[:1] and last["has_more"] is False
    _, _, everything = await call(http, "GET", url + "?limit=1000", OPS)
    assert {r["request_id"] for r in everything["data"]} == set(mine + theirs)
    _, _, filtered = await call(http, "GET", url + "?key_id=static:other", OPS)
    assert [r["request_id"] for r in filtered["data"]] == theirs[::-1]
    _, _, ignored = await call(http, "GET", url + "?key_id=static:other", APP)     # a normal key sees its own
    assert {r["request_id"] for r in ignored["data"]} == set(mine)
    _, _, future = await call(http, "GET", url + "?since=2999-01-01", APP)
    assert future["data"] == [] and future["has_more"] is False
    _, _, recent = await call(http, "GET", url + "?since=1h&limit=1000", APP)
    assert len(recent["data"]) == 5
    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=ten"):
        assert_envelope(await call(http, "GET", f"{url}?{bad}", APP), 400, "invalid_request_error",
                        param=bad.split("=")[0])
    assert_envelope(await call(http, "GET", url + "?since=yesterday-ish", APP), 400, "invalid_request_error",
                    param="since")


async def test_analytics_group_by_model_key_and_day(gw, http):
    await spend(gw, APP, "mock-echo", 3)
    await spend(gw, APP, "gpt-4o-mini", 1)
    await spend(gw, OTHER, "mock-echo", 2)
    url = gw.url + "/v1/account/analytics"
    status, _, by_model = await call(http, "GET", url + "?group_by=model", APP)
    assert status == 200 and by_model["group_by"] == "model"
    assert {r["model"]: r["requests"] for r in by_model["data"]} == {"mock-echo": 3, "gpt-4o-mini": 1}
    assert all({"prompt_tokens", "completion_tokens", "cost", "cache_hits", "errors"} <= set(r)
               for r in by_model["data"])
    _, _, by_key = await call(http, "GET", url + "?group_by=key&since=7d", OPS)
    assert {r["key_id"]: r["requests"] for r in by_key["data"]} == {"static:app": 4, "static:other": 2}
    assert {r["key_label"] for r in by_key["data"]} == {"app", "other"}
    _, _, by_day = await call(http, "GET", url + "?group_by=day", OPS)
    assert len(by_day["data"]) == 1 and by_day["data"][0]["requests"] == 6
    _, _, own_model = await call(http, "GET", url + "?group_by=model", OTHER)
    assert {r["model"]: r["requests"] for r in own_model["data"]} == {"mock-echo": 2}
    assert_envelope(await call(http, "GET", url + "?group_by=week", APP), 400, "invalid_request_error",
                    param="group_by")


async def test_balance_own_key_and_management_view(gw, http):
    await spend(gw, BUDGET, "mock-echo", 1)
    await spend(gw, APP, "mock-echo", 2)
    url = gw.url + "/v1/account/balance"
    status, _, own = await call(http, "GET", url, BUDGET)
    assert status == 200
    own = own["data"]
    assert (own["key_id"], own["label"], own["requests"], own["daily_limit"]) == ("static:budget", "budget", 1, 5)
    assert own["total_spent"] == pytest.approx(own["spent_today"]) and own["total_spent"] > 0
    assert own["remaining_today"] == pytest.approx(5 - own["spent_today"])
    assert own["balance"] == pytest.approx(2 - own["total_spent"])
    _, _, app = await call(http, "GET", url, APP)
    assert (app["data"]["key_id"], app["data"]["requests"], app["data"]["daily_limit"]) == ("static:app", 2, None)
    _, _, everyone = await call(http, "GET", url, OPS)
    assert everyone["data"]["key_id"] is None and everyone["data"]["requests"] == 3
    assert everyone["data"]["total_spent"] == pytest.approx(own["total_spent"] + app["data"]["total_spent"])
    _, _, one_key = await call(http, "GET", url + "?key_id=static:budget", OPS)
    assert one_key["data"]["requests"] == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_usage_with_odd_token_counts_is_answered_and_read_as_numbers(make_gateway, data_dir,
                                                                                       http, stream):
    """Some OpenAI-compatible servers send token counts as strings or floats, or junk: the
    answer still reaches the client as the upstream sent it (plus cost), and the ledger reads
    what is a number and counts the rest 0."""
    from aiohttp import web

    from tests.fakes import serve_loopback
    usage = {"prompt_tokens": "1000", "completion_tokens": 200.0, "total_tokens": None,
             "prompt_tokens_details": {"cached_tokens": [1]}, "completion_tokens_details": "n/a"}
    base = {"id": "chatcmpl-odd", "created": 1, "model": "odd"}

    async def chat(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": usage}):
            await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", **chunk}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, url = await serve_loopback(app)
    try:
        gw = await make_gateway(routes(url + "/v1"))
        body = chat_body("up/odd", "odd usage", stream=stream, stream_options={"include_usage": True})
        async with http.post(gw.url + CHAT, json=body, headers={"Authorization": f"Bearer {APP}"}) as resp:
            assert resp.status == 200
            text = await resp.text()
            request_id = resp.headers["x-request-id"]
        sent = orjson.loads(text) if not stream else orjson.loads(text.split("data: ")[-2])
        expected = round((1000 * PRICING["input"] + 200 * PRICING["output"]) / 1_000_000, 10)
        assert sent["usage"] == {**usage, "cost": pytest.approx(expected)}
        rows = await wait_ledger(data_dir, 1, "WHERE request_id = ?", (request_id,))
        assert (rows[0]["status"], rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["cached_tokens"],
                rows[0]["reasoning_tokens"]) == (200, 1000, 200, 0, 0)
        assert rows[0]["cost"] == pytest.approx(expected)
    finally:
        await runner.cleanup()
