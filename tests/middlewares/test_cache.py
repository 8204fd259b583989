"""The response cache: MISS then HIT (cost 0, no upstream call), independent of JSON key order
and of `stream` (a cached answer is replayed as a proper SSE stream), per-key unless shared,
per-request controls, never storing errors, truncated or cancelled answers, TTL, per-route."""
from __future__ import annotations

import asyncio

import openai
import orjson
import pytest
import structlog

from proxy.response_cache import ResponseCache

from tests.middlewares.helpers import (APP, CHAT, OTHER, assert_envelope, call, chat_body, eventually, routes,
                                       row_for, wait_ledger)

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}


@pytest.fixture
async def gw(upstream, make_gateway):
    return await make_gateway(routes(upstream.url, cache={"enabled": True}))


async def create(client, **kw):
    """(x-cache header, parsed completion) of one non-streamed request."""
    r = await client.chat.completions.with_raw_response.create(**{"model": "gpt-4o-mini", "messages": HI, **kw})
    return r.headers.get("x-cache"), r.parse()


async def test_miss_then_hit_costs_nothing_and_skips_the_upstream(gw, upstream, data_dir):
    client = gw.client(APP)
    r1 = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    r2 = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert (r1.headers["x-cache"], r2.headers["x-cache"]) == ("MISS", "HIT")
    first, second = r1.parse(), r2.parse()
    assert len(upstream.requests) == 1
    assert second.choices[0].message.content == first.choices[0].message.content == "Hello! How can I help?"
    assert first.usage.cost > 0 and second.usage.cost == 0
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (12, 7)
    miss = await row_for(data_dir, r1.headers["x-request-id"])
    hit = await row_for(data_dir, r2.headers["x-request-id"])
    assert (miss["cache_hit"], hit["cache_hit"]) == (0, 1)
    assert miss["cost"] == pytest.approx(first.usage.cost) and hit["cost"] == 0
    assert (hit["status"], hit["prompt_tokens"], hit["completion_tokens"], hit["provider"]) == (200, 12, 7, "up")


async def test_the_key_ignores_json_key_order_and_non_output_fields(gw, upstream, http):
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string"}}}}}
    body = {"model": "gpt-4o-mini", "messages": HI, "temperature": 0.3, "tools": [TOOL],
            "response_format": schema, "user": "alice"}
    status, headers, _ = await call(http, "POST", gw.url + CHAT, APP, body)
    assert (status, headers["x-cache"]) == (200, "MISS")
    reordered = (b'{"user": "bob", "response_format": {"json_schema": {"schema": {"properties": {"unit": '
                 b'{"type": "string"}, "city": {"type": "string"}}, "type": "object"}, "name": "w"}, "type": '
                 b'"json_schema"}, "tools": [{"function": {"parameters": {"properties": {"unit": {"type": "string"}, '
                 b'"city": {"type": "string"}}, "type": "object"}, "name": "get_weather"}, "type": "function"}], '
                 b'"temperature": 0.3, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o-mini"}')
    assert orjson.loads(reordered) == {**body, "user": "bob"}
    status, headers, _ = await call(http, "POST", gw.url + CHAT, APP, reordered)
    assert (status, headers["x-cache"]) == (200, "HIT")
    status, headers, _ = await call(http, "POST", gw.url + CHAT, APP, {**body, "temperature": 0.4})
    assert headers["x-cache"] == "MISS"
    status, headers, _ = await call(http, "POST", gw.url + CHAT, APP, {**body, "model": "gpt-4o"})
    assert headers["x-cache"] == "MISS"
    assert len(upstream.requests) == 3


async def test_a_cached_answer_is_replayed_as_a_stream_with_tool_calls_and_usage(gw, upstream, data_dir):
    client = gw.client(APP)
    kw = {"model": "up/tools", "messages": [{"role": "user", "content": "weather in Paris?"}], "tools": [TOOL]}
    state, completion = await create(client, **kw)
    assert state == "MISS" and completion.choices[0].finish_reason == "tool_calls"
    r = await client.chat.completions.with_raw_response.create(**kw, stream=True,
                                                               stream_options={"include_usage": True})
    assert r.headers["x-cache"] == "HIT" and r.headers["content-type"].startswith("text/event-stream")
    chunks = [c async for c in r.parse()]
    assert len(upstream.requests) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            slot["name"] += (tc.function.name or "") if tc.function else ""
            slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
    original = completion.choices[0].message.tool_calls
    assert [calls[i] for i in sorted(calls)] == [
        {"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in original]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.cost == 0
    assert usage_chunk.usage.prompt_tokens == completion.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    row = await row_for(data_dir, r.headers["x-request-id"])
    assert (row["stream"], row["cache_hit"], row["cost"]) == (1, 1, 0)


async def test_a_replayed_stream_is_sse_as_openai_sends_it(gw, http):
    await create(gw.client(APP))
    async with http.post(gw.url + CHAT, json=chat_body(stream=True), headers={"Authorization": f"Bearer {APP}"}) \
            as resp:
        assert resp.headers["x-cache"] == "HIT"
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events) and events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c or c["usage"] is None for c in chunks)      # not asked for
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello! How can I help?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_reasoning_is_replayed_too(gw):
    client = gw.client(APP)
    state, completion = await create(client, model="mock-echo", reasoning_effort="low")
    reasoning = completion.choices[0].message.model_extra["reasoning_content"]
    assert state == "MISS" and reasoning
    stream = await client.chat.completions.with_raw_response.create(model="mock-echo", messages=HI,
                                                                    reasoning_effort="low", stream=True)
    assert stream.headers["x-cache"] == "HIT"
    deltas = [c.choices[0].delta for c in [c async for c in stream.parse()] if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == "hi"


async def test_a_streamed_miss_is_stored_once_complete(gw, upstream):
    client = gw.client(APP)
    r = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert r.headers["x-cache"] == "MISS"
    text = "".join([c.choices[0].delta.content or "" async for c in r.parse() if c.choices])
    state, completion = await create(client)
    assert state == "HIT" and completion.choices[0].message.content == text == "Hello! How can I help?"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.cost) == (12, 7, 0)
    assert len(upstream.requests) == 1


async def test_a_broken_stream_is_not_stored(gw, upstream):
    client = gw.client(APP)
    for _ in range(2):
        r = await client.chat.completions.with_raw_response.create(model="up/midstream-error", messages=HI,
                                                                   stream=True)
        assert r.headers["x-cache"] == "MISS"
        with pytest.raises(openai.APIError):
            [c async for c in r.parse()]
    assert len(upstream.requests) == 2


async def test_an_abandoned_stream_is_not_stored(upstream, make_gateway, data_dir):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True},
                                   providers={"drip": {"type": "mock", "options": {"chunks": 8, "chunk_delay_ms": 50}}},
                                   models={"mock-drip": {"targets": [{"provider": "drip"}]}}))
    client = gw.client(APP)
    ask = [{"role": "user", "content": "a long enough answer to stream"}]
    stream = await client.chat.completions.with_raw_response.create(model="mock-drip", messages=ask, stream=True)
    events = stream.parse()
    await events.__anext__()
    await events.close()
    row = await row_for(data_dir, stream.headers["x-request-id"])      # the gateway is done with it
    assert (row["status"], row["error_type"], row["partial"]) == (499, "client_disconnected", 1)
    assert (await create(client, model="mock-drip", messages=ask))[0] == "MISS"


async def test_the_cache_is_per_key_unless_shared(upstream, make_gateway):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True}))
    assert (await create(gw.client(APP)))[0] == "MISS"
    assert (await create(gw.client(APP)))[0] == "HIT"
    assert (await create(gw.client(OTHER)))[0] == "MISS"
    assert len(upstream.requests) == 2


async def test_a_shared_cache_serves_every_key(upstream, make_gateway):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True, "shared": True}))
    assert (await create(gw.client(APP)))[0] == "MISS"
    assert (await create(gw.client(OTHER)))[0] == "HIT"
    assert len(upstream.requests) == 1


async def test_cache_control_no_cache_skips_the_lookup_but_stores(gw, upstream):
    client = gw.client(APP)
    assert (await create(client))[0] == "MISS"
    assert (await create(client, extra_headers={"Cache-Control": "no-cache"}))[0] == "MISS"
    assert len(upstream.requests) == 2
    fresh = [{"role": "user", "content": "fresh"}]
    assert (await create(client, messages=fresh, extra_headers={"Cache-Control": "no-cache"}))[0] == "MISS"
    assert (await create(client, messages=fresh))[0] == "HIT"
    assert len(upstream.requests) == 3


async def test_cache_control_no_store_neither_reads_nor_writes(gw, upstream):
    client = gw.client(APP)
    assert (await create(client))[0] == "MISS"
    assert (await create(client, extra_headers={"Cache-Control": "no-store"}))[0] != "HIT"
    fresh = [{"role": "user", "content": "fresh"}]
    assert (await create(client, messages=fresh, extra_headers={"Cache-Control": "no-store"}))[0] != "HIT"
    assert (await create(client, messages=fresh))[0] == "MISS"
    assert len(upstream.requests) == 4


async def test_the_cache_body_field_controls_the_cache_and_never_goes_upstream(gw, upstream):
    client = gw.client(APP)
    assert (await create(client, extra_body={"cache": {"no-store": True}}))[0] != "HIT"
    assert "cache" not in upstream.last["json"]
    assert (await create(client))[0] == "MISS"
    assert (await create(client, extra_body={"cache": {"no-cache": True}}))[0] == "MISS"
    assert (await create(client, extra_body={"cache": {"ttl": 60}}))[0] == "HIT"
    assert all("cache" not in r["json"] for r in upstream.requests) and len(upstream.requests) == 3


async def test_a_bad_cache_field_is_400(gw, http):
    for field, param in (("yes", "cache"), ({"ttl": -1}, "cache.ttl"), ({"no-store": "true"}, "cache.no-store")):
        result = await call(http, "POST", gw.url + CHAT, APP, chat_body(cache=field))
        assert_envelope(result, 400, "invalid_request_error", param=param)


async def test_errors_are_not_cached(gw, upstream):
    client = gw.client(APP)
    for model, error in (("up/fail-500", openai.InternalServerError), ("up/fail-400", openai.BadRequestError)):
        for _ in range(2):
            with pytest.raises(error):
                await client.chat.completions.create(model=model, messages=HI)
    assert len(upstream.requests) == 4


async def test_truncated_answers_are_not_cached(gw):
    client = gw.client(APP)
    long = [{"role": "user", "content": "a sentence long enough to be cut short by max_tokens"}]
    for _ in range(2):
        state, completion = await create(client, model="mock-echo", messages=long, max_tokens=2)
        assert state == "MISS" and completion.choices[0].finish_reason == "length"
    for stream_state in ("MISS", "MISS"):
        r = await client.chat.completions.with_raw_response.create(model="mock-echo", messages=long, max_tokens=2,
                                                                   stream=True)
        assert r.headers["x-cache"] == stream_state
        assert [c async for c in r.parse()]
    assert (await create(client, model="mock-echo", messages=long))[0] == "MISS"
    assert (await create(client, model="mock-echo", messages=long))[0] == "HIT"


async def test_entries_expire_after_their_ttl(upstream, make_gateway):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True, "ttl": 1}))
    client = gw.client(APP)
    assert (await create(client))[0] == "MISS"
    assert (await create(client))[0] == "HIT"
    for _ in range(60):                              # bounded: 3 s
        await asyncio.sleep(0.05)
        state, _ = await create(client)
        if state == "MISS":
            break
    assert state == "MISS"
    assert (await create(client, extra_body={"cache": {"ttl": 60}}))[0] == "HIT"   # the fresh answer is stored


async def test_the_size_limit_evicts_the_oldest_entries(make_gateway):
    gw = await make_gateway(routes(None, cache={"enabled": True, "size_limit_mb": 0.1}))
    client = gw.client(APP)
    asks = [[{"role": "user", "content": f"{i} " + "x" * 10_000}] for i in range(16)]   # ~10 KB answers
    for ask in asks:
        assert (await create(client, model="mock-echo", messages=ask))[0] == "MISS"
    assert (await create(client, model="mock-echo", messages=asks[-1]))[0] == "HIT"

    async def oldest_evicted():        # writes (and so evictions) land in a thread, shortly after
        return (await create(client, model="mock-echo", messages=asks[0]))[0] == "MISS"
    await eventually(oldest_evicted, timeout=3, what="the oldest entry evicted")


async def test_the_cache_can_be_enabled_per_route(upstream, make_gateway):
    gw = await make_gateway(routes(upstream.url, models={
        "cached": {"targets": [{"provider": "up", "model": "x"}], "cache": True},
    }))
    client = gw.client(APP)
    assert [(await create(client, model="cached"))[0] for _ in range(2)] == ["MISS", "HIT"]
    assert [(await create(client))[0] for _ in range(2)] == ["MISS", "MISS"]
    assert len(upstream.requests) == 3


async def test_a_route_can_opt_out_of_the_global_cache(upstream, make_gateway):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True}, models={
        "fresh": {"targets": [{"provider": "up", "model": "x"}], "cache": False},
    }))
    client = gw.client(APP)
    assert [(await create(client, model="fresh"))[0] for _ in range(2)] == ["MISS", "MISS"]
    assert [(await create(client))[0] for _ in range(2)] == ["MISS", "HIT"]


async def test_a_hit_survives_a_restart(upstream, make_gateway, data_dir):
    text = routes(upstream.url, cache={"enabled": True})
    one = await make_gateway(text)
    assert (await create(one.client(APP)))[0] == "MISS"
    await one.close()                                # graceful: pending writes reach the disk
    two = await make_gateway(text, filename="routes-2.yaml")
    assert (await create(two.client(APP)))[0] == "HIT"
    assert len(upstream.requests) == 1
    assert (data_dir / "cache").is_dir()


async def test_another_workers_answer_becomes_a_hit_within_a_second(upstream, make_gateway):
    """Two gateways on one data_dir, as two workers are: each writes its own entries in
    batches and picks up the other's by polling diskcache's table."""
    text = routes(upstream.url, cache={"enabled": True})
    one, two = await make_gateway(text), await make_gateway(text, filename="routes-2.yaml")
    other = [{"role": "user", "content": "something else"}]
    assert (await create(two.client(APP), messages=other))[0] == "MISS"   # two has scanned the table
    assert (await create(one.client(APP)))[0] == "MISS"
    started = asyncio.get_running_loop().time()

    async def hit_on_two():
        return (await create(two.client(APP)))[0] == "HIT"
    await eventually(hit_on_two, timeout=3, what="one's entry served by two")
    assert asyncio.get_running_loop().time() - started < 1.5
    assert (await create(one.client(APP)))[0] == "HIT"       # and one still serves its own


async def known_to(cache: ResponseCache, key: str, want: bytes, timeout: float = 3) -> None:
    """`cache` serves `want` for `key` within `timeout` (polling: its scan runs every 0.05 s)."""
    async def served():
        return await cache.get(key) == want
    await eventually(served, timeout=timeout, what=f"{key} served by the other worker")


async def test_an_entry_stored_under_a_reused_rowid_reaches_the_other_worker(tmp_path):
    """Worker B's newest entry expires and is culled; SQLite gives B's next entry the same
    rowid (diskcache's table has no AUTOINCREMENT). Worker A, which saw the first entry, must
    still see the second."""
    a, b = (ResponseCache(str(tmp_path / "cache"), 10, poll_seconds=0.05, flush_seconds=0.01)
            for _ in range(2))
    try:
        assert await a.get("warm") is None           # A has listed the (empty) cache and polls
        b.put_later("first", b"one", 0.3)
        await b.flush()
        await known_to(a, "first", b"one")
        await asyncio.sleep(0.35)
        b.store.cull()                               # B's periodic cull: the newest row goes
        b.put_later("second", b"two", 60)
        await b.flush()
        await known_to(a, "second", b"two")
        b.store.clear()                              # emptied under a running worker: still no blind spot
        b.put_later("third", b"three", 60)
        await b.flush()
        await known_to(a, "third", b"three")
    finally:
        await a.close()
        await b.close()


async def test_a_damaged_cache_db_is_moved_aside_and_a_fresh_cache_used(upstream, make_gateway, data_dir):
    """cache.db is only a cache: garbage in it is logged and moved aside, not a failed start."""
    (data_dir / "cache").mkdir(parents=True)
    garbage = b"this is not a database " * 100
    (data_dir / "cache" / "cache.db").write_bytes(garbage)
    with structlog.testing.capture_logs() as logs:
        gw = await make_gateway(routes(upstream.url, cache={"enabled": True}))
    assert [e["path"] for e in logs if e["event"] == "cache_db_damaged"] == [
        str(data_dir / "cache" / "cache.db")]
    aside = list((data_dir / "cache").glob("cache.db.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [garbage]
    assert (await create(gw.client(APP)))[0] == "MISS"
    assert (await create(gw.client(APP)))[0] == "HIT"


async def test_presets_and_cache_together_on_the_mock(make_gateway):
    """A preset request is cached after expansion; the streamed hit reports cost 0."""
    gw = await make_gateway(routes(None, cache={"enabled": True}, presets={
        "bot": {"model": "mock-echo", "system": "You are terse.", "params": {"temperature": 0.2}}}))
    client = gw.client(APP)
    assert (await create(client, model="presets/bot"))[0] == "MISS"
    state, c = await create(client, model="presets/bot")
    assert state == "HIT" and c.choices[0].message.content == "hi" and c.usage.cost == 0
    stream = await client.chat.completions.create(model="presets/bot", messages=HI, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hi"
    assert chunks[-1].usage.cost == 0


async def test_a_batch_of_entries_is_written_as_diskcache_entries(make_gateway, data_dir):
    """Many answers stored at once, with two ttls: each is an entry diskcache itself reads
    back, with its own value and expiry, beside the gateway's two bookkeeping entries (the
    feed's number and the batch's key list, under `modelway:`)."""
    import time

    import diskcache
    gw = await make_gateway(routes(None, cache={"enabled": True}))
    client = gw.client(APP)
    ttls = {f"ask {i}": 60 if i % 3 else 3600 for i in range(45)}
    states = await asyncio.gather(*(create(client, model="mock-echo", messages=[{"role": "user", "content": ask}],
                                           extra_body={"cache": {"ttl": ttl}}) for ask, ttl in ttls.items()))
    assert {state for state, _ in states} == {"MISS"}
    await gw.close()                                 # graceful: the pending batch is written
    now = time.time()
    with diskcache.Cache(str(data_dir / "cache")) as store:
        answers = [key for key in store.iterkeys() if not key.startswith("modelway:")]
        assert len(answers) == len(ttls) and len(store) == len(ttls) + 2
        seen = {}
        for key in answers:
            value, expires = store.get(key, expire_time=True)
            answer = orjson.loads(value)["completion"]["choices"][0]["message"]["content"]
            seen[answer] = round(expires - now, -1)
    assert seen == {ask: float(ttl) for ask, ttl in ttls.items()}


async def test_anthropic_messages_are_cached_and_replayed_in_their_own_format(make_gateway, data_dir):
    """/v1/messages goes through the same cache: a repeat is a HIT with no cost, plain or
    streamed, answered in Anthropic's format."""
    import anthropic
    gw = await make_gateway(routes(None, cache={"enabled": True}))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=APP, max_retries=0)
    ask = {"model": "mock-echo", "max_tokens": 64, "messages": [{"role": "user", "content": "cache me"}]}
    first = await client.messages.with_raw_response.create(**ask)
    second = await client.messages.with_raw_response.create(**ask)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    one, two = await first.parse(), await second.parse()
    assert two.type == "message" and two.content[0].text == one.content[0].text == "cache me"
    assert two.usage.output_tokens == one.usage.output_tokens
    async with client.messages.stream(**ask) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "cache me" and final.stop_reason == one.stop_reason
    rows = await wait_ledger(data_dir, 3)
    assert [(r["endpoint"], r["cache_hit"], r["cost"] > 0) for r in rows] == [
        ("messages", 0, True), ("messages", 1, False), ("messages", 1, False)]
