"""POST /v1/responses with the openai SDK against the gateway: plain, streamed, tools, usage."""
from __future__ import annotations

import orjson
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.responses.conftest import KEY_A, WEATHER, ledger_row


async def test_create_plain(client, gw):
    r = await client.responses.create(model="mock-echo", input="hello there")
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == "hello there"
    assert r.model == "mock-echo"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    assert u.model_extra["cost"] > 0


async def test_stream_events(client):
    events = [e async for e in await client.responses.create(model="mock-echo", input="hello there", stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds[4:-4]) == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "hello there"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "hello there" and final.usage.output_tokens > 0


async def test_stream_helper_and_tools(client):
    async with client.responses.stream(model="mock-echo", input="What's the weather in Paris? use the tool",
                                       tools=[WEATHER]) as stream:
        deltas = [e async for e in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in deltas]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    calls = [o for o in final.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and orjson.loads(calls[0].arguments)
    assert calls[0].call_id


async def test_ledger_row_says_responses(gw, http):
    async with http.post(gw.url + "/v1/responses", json={"model": "mock-echo", "input": "hi"},
                         headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
        assert resp.status == 200
        rid = resp.headers["x-request-id"]
    row = await ledger_row(gw, rid)
    assert row["endpoint"] == "responses" and row["status"] == 200 and row["model"] == "mock-echo"
    assert row["key_label"] == "a" and row["completion_tokens"] > 0


async def test_every_streamed_event_matches_the_sdk_types(gw, http):
    """Strict validation of the wire events (the SDK itself parses leniently), with reasoning."""
    adapter = TypeAdapter(ResponseStreamEvent)
    body = {"model": "claude", "input": "What's the weather in Oslo? Use the tool.", "stream": True,
            "tools": [WEATHER], "reasoning": {"effort": "low"}}
    async with http.post(gw.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
        raw = await resp.read()
    blocks = [b for b in raw.split(b"\n\n") if b]
    kinds = []
    for block in blocks:
        name, data = block.split(b"\n")
        event = orjson.loads(data[6:])
        assert name == b"event: " + event["type"].encode()
        adapter.validate_python(event, strict=False)
        kinds.append(event["type"])
    squeezed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1] or not k.endswith(".delta")]
    assert squeezed == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]


async def test_cache_hit_through_responses(make_gateway, tmp_path):
    gw = await make_gateway("""
middlewares: [cache, accounting]
providers: {mock: {type: mock}}
models: {mock-echo: {targets: [{provider: mock}], cache: true}}
""")
    async with gw.client() as c:
        first = await c.responses.with_raw_response.create(model="mock-echo", input="cache me")
        second = await c.responses.with_raw_response.create(model="mock-echo", input="cache me")
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert second.parse().output_text == "cache me" and second.parse().usage.model_extra["cost"] == 0
