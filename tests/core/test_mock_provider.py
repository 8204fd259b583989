"""The built-in `mock` provider, as a user's CI sees it through the gateway."""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Literal, Optional

import openai
import orjson
import pytest
from pydantic import BaseModel

from tests.core.helpers import assert_envelope, chat_body, post_json, post_stream, sse_data

CONFIG = """
middlewares: [access_log]
providers:
  mock: {type: mock, options: {chunks: 4}}
  lazy: {type: mock, options: {latency_ms: 300, chunks: 2, chunk_delay_ms: 50}}
models:
  mock-echo: {targets: [{provider: mock}], pricing: {input: 1.0, output: 2.0}}
  mock-lazy: {targets: [{provider: lazy}]}
  mock-error: {targets: [{provider: mock, model: mock-error}], retries: 0}
  mock-broken: {targets: [{provider: mock, model: mock-stream-error}], retries: 0}
"""
TEXT = "The quick brown fox jumps over the lazy dog"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


class Address(BaseModel):
    city: str
    country: Literal["FR", "DE"]


class Customer(BaseModel):
    person: Person
    address: Address
    previous: list[Address]
    note: Optional[str]


@pytest.fixture
async def mock_gw(make_gateway):
    return await make_gateway(CONFIG)


def msgs(text: str = TEXT) -> list[dict]:
    return [{"role": "system", "content": "Be nice."}, {"role": "user", "content": text}]


async def test_echoes_the_last_user_message_with_realistic_usage_and_cost(mock_gw):
    r = await mock_gw.client().chat.completions.create(
        model="mock-echo", messages=msgs("first") + [{"role": "assistant", "content": "ok"},
                                                     {"role": "user", "content": TEXT}])
    assert r.choices[0].message.content == TEXT
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "mock-echo" and r.id.startswith("chatcmpl-")
    u = r.usage
    assert u.prompt_tokens > 10 and u.completion_tokens == len(TEXT) // 4
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.model_dump()["cost"] == pytest.approx((u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6)


async def test_is_deterministic(mock_gw):
    client = mock_gw.client()
    a = await client.chat.completions.create(model="mock-echo", messages=msgs())
    b = await client.chat.completions.create(model="mock-echo", messages=msgs())
    assert (a.id, a.choices[0].message.content, a.usage) == (b.id, b.choices[0].message.content, b.usage)


async def test_streams_in_the_configured_number_of_chunks(mock_gw, http):
    status, headers, raw = await post_stream(http, mock_gw.url + "/v1/chat/completions",
                                             {"model": "mock-echo", "messages": msgs(), "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"][0]["delta"].get("content")]
    assert len(pieces) == 4 and "".join(pieces) == TEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)


async def test_streamed_usage_chunk_only_when_asked(mock_gw):
    client = mock_gw.client()
    stream = await client.chat.completions.create(model="mock-echo", messages=msgs(), stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(TEXT) // 4
    assert chunks[-1].usage.model_dump()["cost"] > 0


async def test_tool_call_when_tools_offered_and_message_asks(mock_gw):
    client = mock_gw.client()
    r = await client.chat.completions.create(model="mock-echo", messages=msgs("What's the weather in Paris?"),
                                             tools=[WEATHER_TOOL])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    call = msg.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] == "celsius"

    r = await client.chat.completions.create(
        model="mock-echo", tools=[WEATHER_TOOL],
        messages=msgs("What's the weather in Paris?") + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"}])
    assert r.choices[0].finish_reason == "stop"     # a tool result is answered, not called again


async def test_no_tool_call_when_not_asked_or_tool_choice_none(mock_gw):
    client = mock_gw.client()
    r = await client.chat.completions.create(model="mock-echo", messages=msgs("hello there"), tools=[WEATHER_TOOL])
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == "hello there"
    r = await client.chat.completions.create(model="mock-echo", messages=msgs("weather in Rome?"),
                                             tools=[WEATHER_TOOL], tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    r = await client.chat.completions.create(model="mock-echo", messages=msgs("hello"), tools=[WEATHER_TOOL],
                                             tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


async def test_streamed_tool_call_deltas_carry_index(mock_gw):
    stream = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs("use the tool"),
                                                            tools=[WEATHER_TOOL], stream=True)
    args, name, finish = "", None, None
    async for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or ():
            assert d.index == 0
            name = name or d.function.name
            args += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert set(json.loads(args)) == {"city", "unit"}


async def test_json_for_response_format(mock_gw):
    client = mock_gw.client()
    r = await client.chat.completions.create(model="mock-echo", messages=msgs(),
                                             response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {"echo": TEXT}
    r = await client.beta.chat.completions.parse(model="mock-echo", messages=msgs(), response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.name == TEXT and person.age == len(TEXT)
    r = await asyncio.to_thread(mock_gw.sync_client().beta.chat.completions.parse, model="mock-echo",
                                messages=msgs(), response_format=Person)
    assert r.choices[0].message.parsed == person


async def test_json_schema_with_nested_models_parses(mock_gw):
    r = await mock_gw.client().beta.chat.completions.parse(model="mock-echo", messages=msgs("Ann"),
                                                           response_format=Customer)
    c = r.choices[0].message.parsed
    assert isinstance(c, Customer)
    assert (c.person.name, c.address.country, c.previous) == ("Ann", "FR", [])


async def test_tool_arguments_follow_nested_parameter_schemas(mock_gw):
    tool = {"type": "function", "function": {"name": "save_customer", "parameters": Customer.model_json_schema()}}
    r = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs("call the tool"),
                                                       tools=[tool])
    args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    assert Customer.model_validate(args).address.city == "call the tool"


async def test_latency_and_chunk_delay_options(mock_gw):
    client = mock_gw.client()
    started = time.monotonic()
    await client.chat.completions.create(model="mock-lazy", messages=msgs())
    assert 0.3 <= time.monotonic() - started < 2
    stream = await client.chat.completions.create(model="mock-lazy", messages=msgs(), stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    assert len(pieces) == 2 and "".join(pieces) == TEXT


async def test_max_tokens_truncates_with_finish_reason_length(mock_gw):
    r = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs(), max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert TEXT.startswith(r.choices[0].message.content) and r.choices[0].message.content != TEXT


async def test_reasoning_effort_adds_reasoning_content(mock_gw, http):
    status, _, body = await post_json(http, mock_gw.url + "/v1/chat/completions",
                                      chat_body("mock-echo:thinking:high", TEXT))
    assert status == 200
    msg = body["choices"][0]["message"]
    assert msg["content"] == TEXT and msg["reasoning_content"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_error_model_fails_like_an_upstream_500(mock_gw, http):
    got = await post_json(http, mock_gw.url + "/v1/chat/completions", chat_body("mock-error"))
    err = assert_envelope(got, 502, "provider_error")
    assert err["upstream_status"] == 500
    with pytest.raises(openai.APIStatusError) as exc_info:
        await mock_gw.client().chat.completions.create(model="mock-error", messages=msgs())
    assert exc_info.value.status_code == 502


async def test_stream_error_model_ends_with_error_event_then_done(mock_gw, http):
    status, headers, raw = await post_stream(http, mock_gw.url + "/v1/chat/completions",
                                             chat_body("mock-broken", TEXT, stream=True))
    assert status == 200
    events = sse_data(raw)
    assert events[-1] == b"[DONE]"
    err = orjson.loads(events[-2])["error"]
    assert err["type"] == "provider_error" and err["trace_id"] == headers["x-request-id"]


async def test_embeddings_are_deterministic_vectors(mock_gw):
    client = mock_gw.client()
    a = await client.embeddings.create(model="mock-echo", input=["alpha", "beta"], encoding_format="float")
    b = await client.embeddings.create(model="mock-echo", input="alpha", encoding_format="float", dimensions=8)
    assert len(a.data) == 2 and len(a.data[0].embedding) == 8
    assert a.data[0].embedding == b.data[0].embedding != a.data[1].embedding
    assert a.usage.prompt_tokens > 0


ODD = [None, True, 0, -1, 2.5, "", "x", "object", "#", "#/$defs/a", "#/nope", [], [None], ["string", 5],
       {}, {"a": 5}, {"type": 5}, {"$ref": "#"}]
SCHEMA_KEYS = ("type", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
               "definitions", "required", "additionalProperties")


def odd_schema(rng, depth: int = 0):
    """A JSON value shaped a little like a JSON schema, often wrongly."""
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(ODD)
    out = {}
    for key in rng.sample(SCHEMA_KEYS, rng.randint(1, 4)):
        if key in ("properties", "$defs", "definitions"):
            out[key] = ({name: odd_schema(rng, depth + 1) for name in "abc"[:rng.randint(0, 3)]}
                        if rng.random() < 0.7 else rng.choice(ODD))
        elif key in ("anyOf", "oneOf", "allOf", "items"):
            out[key] = [odd_schema(rng, depth + 1)] if rng.random() < 0.6 else rng.choice(ODD)
        else:
            out[key] = rng.choice(ODD)
    return out


def odd_body(rng) -> dict:
    """A chat body whose known fields are well typed (the edge lets it through) but odd inside."""
    body = chat_body("mock-echo", rng.choice(["call the tool", "weather", "f", "", "x" * 50]))
    kind = rng.randrange(4)
    if kind == 0:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "o", "schema": odd_schema(rng)}}
    elif kind == 1:
        body["tools"] = [{"type": "function", "function": {"name": rng.choice(["f", "", "get"]),
                                                           "parameters": odd_schema(rng)}},
                         {"type": rng.choice(["custom", "web_search", "function "]), "custom": {"name": "c"}}]
        body["tool_choice"] = rng.choice(["auto", "required", "none", {"type": "function", "function": {"name": "zz"}},
                                          {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}])
    elif kind == 2:
        body["messages"] = [{"role": "user", "content": [{"type": rng.choice(["text", "video", "image_url"]),
                                                          "text": "hi", "image_url": {"url": "x"}}]},
                            {"role": rng.choice(["tool", "assistant", "user"]), "content": [], "tool_call_id": "c"}]
    else:
        body.update(max_tokens=rng.choice([1, 2**40]), max_completion_tokens=rng.choice([None, 1]),
                    reasoning_effort=rng.choice(["none", "max", None]), stream=rng.random() < 0.5,
                    stream_options=rng.choice([None, {"include_usage": True}, {}]))
    return body


async def test_odd_input_is_never_a_500(mock_gw, http):
    """Fuzz: whatever passes the edge's checks, the mock answers 200 or 400, never a 500."""
    rng = random.Random(20261203)
    for _ in range(300):
        body = odd_body(rng)
        async with asyncio.timeout(5), http.post(mock_gw.url + "/v1/chat/completions", json=body) as resp:
            raw = await resp.read()
        assert resp.status in (200, 400), (body, raw)
        if resp.status == 200 and body.get("stream"):
            assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw, (body, raw)
        else:
            orjson.loads(raw)


async def test_odd_tool_and_schema_shapes_are_400_not_500(mock_gw, http):
    for fields, param in (({"tools": [{"type": "function", "function": 5}]}, "tools[0].function"),
                          ({"response_format": {"type": "json_schema", "json_schema": 5}},
                           "response_format.json_schema"),
                          ({"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": "x"}}},
                           "response_format.json_schema.schema")):
        got = await post_json(http, mock_gw.url + "/v1/chat/completions", chat_body("mock-echo", **fields))
        assert_envelope(got, 400, "invalid_request_error", param=param)


async def test_self_referencing_schema_answers_quickly(mock_gw):
    """A schema whose properties all point back at the root is sampled a bounded amount."""
    schema = {"type": "object", "properties": {name: {"$ref": "#"} for name in "abcdefghij"}}
    async with asyncio.timeout(5):
        r = await mock_gw.client().chat.completions.create(
            model="mock-echo", messages=msgs(), response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "o", "schema": schema}})
    assert len(r.choices[0].message.content) < 100_000
    assert isinstance(json.loads(r.choices[0].message.content), dict)


async def test_embeddings_dimensions_beyond_the_mock_s_limit_are_400(mock_gw, http):
    got = await post_json(http, mock_gw.url + "/v1/embeddings", {"model": "mock-echo", "input": "a",
                                                                 "dimensions": 10**9})
    assert_envelope(got, 400, "invalid_request_error", param="dimensions")
    r = await mock_gw.client().embeddings.create(model="mock-echo", input=[[1, 2], [3]], dimensions=4096)
    assert [len(d.embedding) for d in r.data] == [4096, 4096]


async def test_a_tool_without_parameters_is_called_with_no_arguments(mock_gw):
    tool = {"type": "function", "function": {"name": "list_files", "description": "no parameters"}}
    empty = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    for t in (tool, empty):
        r = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs("use the tool"),
                                                          tools=[t], tool_choice="required")
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == t["function"]["name"]
        assert json.loads(call.function.arguments) == {}


async def test_n_choices(mock_gw):
    r = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs(), n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == TEXT for c in r.choices)
    stream = await mock_gw.client().chat.completions.create(model="mock-echo", messages=msgs(), n=2, stream=True)
    texts = {0: "", 1: ""}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == {0: TEXT, 1: TEXT}


async def test_embeddings_in_base64(mock_gw):
    import base64
    import struct
    client = mock_gw.client()
    floats = await client.embeddings.create(model="mock-echo", input="hi", dimensions=8, encoding_format="float")
    raw = await client.embeddings.with_raw_response.create(model="mock-echo", input="hi", dimensions=8,
                                                           encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
    # the SDK's default (it asks for base64 and decodes it) gives the same vector
    default = await client.embeddings.create(model="mock-echo", input="hi", dimensions=8)
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


async def test_json_mode_follows_a_schema_given_in_the_system_prompt(mock_gw):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    system = ("As a genius expert, your task is to understand the content and provide the parsed objects in "
              f"json that match the following json_schema:\n\n{json.dumps(schema, indent=2)}\n\nMake sure to "
              "return an instance of the JSON, not the schema itself")
    r = await mock_gw.client().chat.completions.create(
        model="mock-echo", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Jason is 25"}])
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int) and isinstance(data["name"], str)
    plain = await mock_gw.client().chat.completions.create(
        model="mock-echo", response_format={"type": "json_object"}, messages=msgs())
    assert isinstance(json.loads(plain.choices[0].message.content), dict)
