"""Happy paths through the official openai SDK (async and sync) against the OpenAI pass-through."""
from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
from pydantic import BaseModel

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


def cost(prompt: int, completion: int, cached: int = 0, *, inp=0.15, out=0.60, cached_in=0.075) -> float:
    return ((prompt - cached) * inp + cached * cached_in + completion * out) / 1_000_000


async def test_async_nonstreaming_completion_with_usage_cost(gw, fake_openai):
    r = await gw.client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "Hello! How can I help?"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 7, 19)
    assert r.usage.model_dump()["cost"] == pytest.approx(cost(12, 7))
    assert fake_openai.last["json"]["model"] == "gpt-4o-mini-2024-07-18"


async def test_sync_client_nonstreaming_and_streaming(gw):
    client = gw.sync_client()
    r = await asyncio.to_thread(client.chat.completions.create, model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == "Hello! How can I help?"

    def stream_text() -> tuple[str, list]:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    text, chunks = await asyncio.to_thread(stream_text)
    assert text == "Hello! How can I help?"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_streaming_text(gw):
    stream = await gw.client().chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello! How can I help?"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.usage is None for c in chunks)


async def test_streaming_parallel_tool_call_deltas_carry_index(gw, fake_openai):
    stream = await gw.client().chat.completions.create(model="up/tools", messages=USER, tools=TOOLS,
                                                       parallel_tool_calls=True, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or ():
            assert d.index is not None
            call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or d.id
            call["name"] = call["name"] or (d.function.name if d.function else None)
            call["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"id": "call_abc123", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                     1: {"id": "call_def456", "name": "get_weather", "arguments": '{"city": "Tokyo"}'}}
    sent = fake_openai.last["json"]
    assert sent["tools"] == TOOLS and sent["parallel_tool_calls"] is True


async def test_nonstreaming_tool_call(gw):
    r = await gw.client().chat.completions.create(model="up/tools", messages=USER, tools=TOOLS,
                                                  tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == \
        ("call_abc123", "get_weather", {"city": "Paris"})
    assert r.choices[0].finish_reason == "tool_calls"


async def test_beta_parse_with_pydantic_model_through_passthrough(gw, fake_openai):
    r = await gw.client().beta.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Weather)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    assert parsed == Weather(city="Paris", temperature_c=21.5, conditions="sunny")
    fmt = fake_openai.last["json"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Weather" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False


async def test_sync_parse_and_streamed_structured_output(gw):
    client = gw.sync_client()
    r = await asyncio.to_thread(client.beta.chat.completions.parse, model="gpt-4o-mini", messages=USER,
                                response_format=Weather)
    assert r.choices[0].message.parsed.city == "Paris"

    async with gw.client().beta.chat.completions.stream(model="gpt-4o-mini", messages=USER,
                                                        response_format=Weather) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == Weather(city="Paris", temperature_c=21.5, conditions="sunny")


async def test_usage_chunk_only_when_asked_but_upstream_always_asked(gw, fake_openai):
    client = gw.client()
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices and c.usage is None for c in chunks)
    assert fake_openai.last["json"]["stream_options"] == {"include_usage": True}

    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True,
                                                  stream_options={"include_usage": False})
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert fake_openai.last["json"]["stream_options"] == {"include_usage": True}

    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (12, 7, 19)
    assert last.usage.model_dump()["cost"] == pytest.approx(cost(12, 7))
    assert all(c.usage is None for c in chunks[:-1])


async def test_streamed_usage_cost_counts_cached_tokens_at_their_price(gw):
    stream = await gw.client().chat.completions.create(model="up/tools", messages=USER, tools=TOOLS, stream=True,
                                                       stream_options={"include_usage": True})
    usage = [c async for c in stream][-1].usage
    assert usage.prompt_tokens_details.cached_tokens == 64
    assert usage.model_dump()["cost"] == pytest.approx(cost(80, 40, cached=64))


async def test_embeddings_pass_through(gw, fake_openai):
    r = await gw.client().embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                            extra_body={"user": "u-1"})
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == pytest.approx([0.1, 0.2, 0.3])
    assert r.usage.prompt_tokens == 10
    sent = fake_openai.last
    assert sent["path"] == "/v1/embeddings"
    assert sent["json"]["input"] == ["a", "b"] and sent["json"]["user"] == "u-1"
    assert sent["json"]["encoding_format"] == "base64"      # the SDK's own field, untouched
    sync = gw.sync_client()
    r = await asyncio.to_thread(sync.embeddings.create, model="text-embedding-3-small", input="c")
    assert len(r.data) == 1


async def test_models_list_and_retrieve(gw):
    client = gw.client()
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert "gpt-4o-mini" in ids and "mock-echo" in ids
    assert not any("*" in i for i in ids)
    m = await client.models.retrieve("gpt-4o-mini")
    extra = m.model_dump()
    assert m.object == "model" and m.id == "gpt-4o-mini"
    assert extra["context_length"] == 128000
    assert set(extra["capabilities"]) >= {"vision", "tools", "structured_outputs", "reasoning", "prompt_caching"}
    assert "pricing" in extra
