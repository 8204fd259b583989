"""The Anthropic provider end to end: the official `openai` SDK (and the `anthropic` SDK on
/v1/messages) as clients, the gateway, and a fake Anthropic API on 127.0.0.1 that enforces the
real API's request rules (tests/fakes/anthropic_upstream.py) and answers in its exact wire format.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import ssl
from typing import Literal

import aiohttp
import anthropic
import openai
import pytest
import structlog
from pydantic import BaseModel

from proxy import logs
from tests.fakes.anthropic_upstream import FakeAnthropic, start
from tests.wire import TIME, WEATHER, sse_data

KEY = "sk-ant-test"
CLIENT_KEY = "sk-client-test"
PRICES = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
CONFIG = """
middlewares: [access_log]
providers:
  anthropic:
    type: anthropic
    base_url: "{url}"
    api_key: "${{ANTHROPIC_API_KEY}}"
    timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 20}}
models:
  claude-sonnet-4: {{targets: [{{provider: anthropic, model: claude-sonnet-4-20250514}}], pricing: {pricing}}}
  claude-sonnet-4-5: {{targets: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}], pricing: {pricing}}}
  claude-cached:
    targets: [{{provider: anthropic, model: claude-sonnet-4-20250514}}]
    auto_cache: true
    pricing: {pricing}
  "anthropic/*": {{targets: [{{provider: anthropic}}], retries: 0, pricing: {pricing}}}
""".replace("{pricing}", "{{input: 3.0, output: 15.0, cached_input: 0.3, cache_write: 3.75}}")

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 fake").decode()
LONG = "You are a meticulous assistant. Follow the policy below.\n" + "Policy clause: be exact. " * 400


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


@functools.cache
def _ssl() -> ssl.SSLContext:
    return ssl.create_default_context()      # loaded once: building one per client costs ~0.2 s


def http(sdk):
    """An HTTP client for an SDK (openai or anthropic) sharing one SSL context."""
    return sdk.DefaultAsyncHttpxClient(verify=_ssl())


def anthropic_sdk(url: str, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0, http_client=http(anthropic))


@pytest.fixture
async def fake():
    fake = FakeAnthropic(api_key=KEY)
    runner, _ = await start(fake)
    yield fake
    await runner.cleanup()


@pytest.fixture
async def gw(fake, make_gateway):
    return await make_gateway(CONFIG.format(url=fake.url), env={"ANTHROPIC_API_KEY": KEY})


@pytest.fixture
def log_buffer():
    """The gateway's JSON log lines, captured."""
    buf = io.BytesIO()
    logs.configure("debug", stream=buf)
    structlog.configure(cache_logger_on_first_use=False)     # module loggers must not keep this buffer
    yield buf
    structlog.reset_defaults()


@pytest.fixture
async def client(gw):
    async with gw.client(api_key=CLIENT_KEY, http_client=http(openai)) as client:
        yield client


def user(text, *parts) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts] if parts else text}]


def cost(u: dict) -> float:
    """USD of an Anthropic usage object by PRICES (per 1M tokens)."""
    return (u["input_tokens"] * PRICES["input"] + u["cache_read_input_tokens"] * PRICES["cached_input"]
            + u["cache_creation_input_tokens"] * PRICES["cache_write"] + u["output_tokens"] * PRICES["output"]) / 1e6


def assert_usage(usage, upstream: dict) -> None:
    """OpenAI usage (an SDK object) reports the Anthropic usage faithfully, cost included."""
    prompt = upstream["input_tokens"] + upstream["cache_read_input_tokens"] + upstream["cache_creation_input_tokens"]
    assert usage.prompt_tokens == prompt
    assert usage.completion_tokens == upstream["output_tokens"]
    assert usage.total_tokens == prompt + upstream["output_tokens"]
    assert usage.prompt_tokens_details.cached_tokens == upstream["cache_read_input_tokens"]
    assert usage.prompt_tokens_details.cache_write_tokens == upstream["cache_creation_input_tokens"]
    assert usage.model_extra["cost"] == pytest.approx(cost(upstream))


def accumulate(chunks) -> dict:
    """Reassemble streamed chunks the way a client does; checks tool-call deltas on the way."""
    out: dict = {"content": "", "reasoning_content": "", "reasoning_details": [], "tool_calls": {},
                 "finish_reason": None, "usage": None}
    for chunk in chunks:
        out["usage"] = chunk.usage or out["usage"]
        if not chunk.choices:
            continue
        delta, extra = chunk.choices[0].delta, chunk.choices[0].delta.model_extra or {}
        out["content"] += delta.content or ""
        out["reasoning_content"] += extra.get("reasoning_content") or ""
        out["reasoning_details"] += extra.get("reasoning_details") or []
        for tc in delta.tool_calls or ():
            if tc.index not in out["tool_calls"]:
                assert tc.id and tc.function.name, "a tool call's first delta carries its id and name"
                out["tool_calls"][tc.index] = {"id": tc.id, "type": "function",
                                               "function": {"name": tc.function.name, "arguments": ""}}
            else:
                assert tc.id is None, "only the first delta of a tool call carries the id"
            out["tool_calls"][tc.index]["function"]["arguments"] += tc.function.arguments or ""
        out["finish_reason"] = chunk.choices[0].finish_reason or out["finish_reason"]
    assert sorted(out["tool_calls"]) == list(range(len(out["tool_calls"]))), "indexes are 0, 1, ... in order"
    out["tool_calls"] = [out["tool_calls"][i] for i in sorted(out["tool_calls"])]
    return out


async def raw_stream(gw, body: dict) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as resp:
            return resp.status, await resp.read()


# --- the fake speaks Anthropic's exact wire format (the official anthropic SDK parses it) -------

async def test_fake_upstream_is_parsed_by_the_anthropic_sdk_and_enforces_rules(fake):
    sdk = anthropic_sdk(fake.url, KEY)
    msg = await sdk.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=4096, messages=user("Hello"),
                                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[1].text == "Hello"
    async with sdk.messages.stream(model="claude-sonnet-4-20250514", max_tokens=100, tools=[
            {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            messages=user("Weather in Paris and Tokyo?")) as stream:
        final = await stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 1
    with pytest.raises(anthropic.BadRequestError, match="system goes in `system`"):
        await sdk.messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                  messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens must be >= 1024"):
        await sdk.messages.create(model="claude-sonnet-4-20250514", max_tokens=2000, messages=user("hi"),
                                  thinking={"type": "enabled", "budget_tokens": 500})
    forged = [*user("Weather?"), {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I made this up", "signature": "Eu" + "A" * 40},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await sdk.messages.create(model="claude-sonnet-4-20250514", max_tokens=2000, messages=forged,
                                  tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic_sdk(fake.url, "sk-ant-other").messages.create(
            model="claude-sonnet-4-20250514", max_tokens=10, messages=user("hi"))


# --- text --------------------------------------------------------------------------------

async def test_completion_text_usage_and_headers(client, fake):
    r = await client.chat.completions.create(
        model="claude-sonnet-4", max_tokens=200, temperature=0.3, user="user-42",
        messages=[{"role": "system", "content": "Be brief."}, *user("What is the capital of France?")])
    assert r.choices[0].message.content == "What is the capital of France?"
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    assert_usage(r.usage, fake.answers[-1]["usage"])
    sent, headers = fake.last, fake.requests[-1]["headers"]
    assert sent["system"] == [{"type": "text", "text": "Be brief."}] and sent["max_tokens"] == 200
    assert sent["metadata"] == {"user_id": "user-42"} and sent["stream"] is False
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers and CLIENT_KEY not in json.dumps(headers)
    raw = await client.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=user("hi"))
    assert KEY not in raw.http_response.text and KEY not in str(raw.http_response.headers)


async def test_stop_sequence_and_max_tokens(client):
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=user("one, two; three"), stop=[";"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("one, two", "stop")
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=user("word " * 40), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].message.content) == 20


async def test_stream_text_with_and_without_usage_chunk(gw, client, fake):
    chunks = [c async for c in await client.chat.completions.create(
        model="claude-sonnet-4", messages=user("Stream me, please."), stream=True)]
    assert chunks[0].choices[0].delta.role == "assistant"
    got = accumulate(chunks)
    assert (got["content"], got["finish_reason"], got["usage"]) == ("Stream me, please.", "stop", None)
    assert all(c.choices for c in chunks)
    chunks = [c async for c in await client.chat.completions.create(
        model="claude-sonnet-4", messages=user("Stream me, please."), stream=True,
        stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and all(c.choices for c in chunks[:-1])
    assert_usage(chunks[-1].usage, fake.answers[-1]["usage"])
    status, raw = await raw_stream(gw, {"model": "claude-sonnet-4", "messages": user("hi"), "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n") and sse_data(raw)[-1] == b"[DONE]"


# --- tools -------------------------------------------------------------------------------

async def test_parallel_tool_calls_round_trip(client, fake):
    messages = user("What's the weather in Paris and Tokyo? Use the get_weather tool.")
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=messages, tools=[WEATHER, TIME])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content == "Let me call get_weather."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    results = [{"role": "tool", "tool_call_id": c.id, "content": t} for c, t in zip(msg.tool_calls, ["18C", "25C"])]
    r2 = await client.chat.completions.create(model="claude-sonnet-4", tools=[WEATHER, TIME],
                                              messages=[*messages, msg.model_dump(exclude_none=True), *results])
    assert r2.choices[0].message.content == "Tool results: 18C; 25C" and r2.choices[0].finish_reason == "stop"
    turn = fake.last["messages"][-1]        # both results grouped into one user turn, ids matching
    assert turn["role"] == "user" and [b["tool_use_id"] for b in turn["content"]] == [c.id for c in msg.tool_calls]


@pytest.mark.parametrize("choice,sent,calls", [
    ("auto", {"type": "auto", "disable_parallel_tool_use": True}, ["get_weather"]),
    ("required", {"type": "any", "disable_parallel_tool_use": True}, ["get_weather"]),
    ({"type": "function", "function": {"name": "get_time"}},
     {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}, ["get_time"]),
    ("none", {"type": "none"}, []),
])
async def test_tool_choice_and_serial_calls(client, fake, choice, sent, calls):
    r = await client.chat.completions.create(
        model="claude-sonnet-4", messages=user("Weather in Paris and Tokyo? use the tool"), tools=[WEATHER, TIME],
        tool_choice=choice, parallel_tool_calls=False)
    assert fake.last["tool_choice"] == sent
    assert [c.function.name for c in r.choices[0].message.tool_calls or ()] == calls


async def test_streamed_tool_calls_reassemble_and_round_trip(client, fake):
    messages = user("Weather and time in Paris, Tokyo and Rome? Use get_weather.")
    got = accumulate([c async for c in await client.chat.completions.create(
        model="claude-sonnet-4", messages=messages, tools=[WEATHER], stream=True)])
    assert got["finish_reason"] == "tool_calls" and got["content"] == "Let me call get_weather."
    assert [json.loads(c["function"]["arguments"]) for c in got["tool_calls"]] == [
        {"city": "Paris"}, {"city": "Tokyo"}, {"city": "Rome"}]
    assistant = {"role": "assistant", "content": got["content"], "tool_calls": got["tool_calls"]}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": f"r{i}"} for i, c in enumerate(got["tool_calls"])]
    r = await client.chat.completions.create(model="claude-sonnet-4", tools=[WEATHER],
                                             messages=[*messages, assistant, *results])
    assert r.choices[0].message.content == "Tool results: r0; r1; r2"


async def test_tool_result_parts_and_a_later_turn_without_tools(client, fake):
    messages = user("What's the weather in Paris? Use the tool.")
    msg = (await client.chat.completions.create(model="claude-sonnet-4", messages=messages,
                                                tools=[WEATHER])).choices[0].message
    history = [*messages, msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": msg.tool_calls[0].id,
               "content": [{"type": "text", "text": "18C"}, {"type": "text", "text": "sunny"}]}]
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=history)    # no tools this turn
    assert r.choices[0].message.content == "Tool results: 18C sunny"
    assert fake.last["tool_choice"] == {"type": "none"} and [t["name"] for t in fake.last["tools"]] == ["get_weather"]


class GetWeather(BaseModel):
    city: str


async def test_strict_function_tools_parse(client, fake):
    r = await client.beta.chat.completions.parse(model="claude-sonnet-4-5", tools=[
        openai.pydantic_function_tool(GetWeather)], messages=user("Weather in Paris? use the tool"))
    assert r.choices[0].message.tool_calls[0].function.parsed_arguments == GetWeather(city="Paris")
    assert fake.last["tools"][0]["strict"] is True


async def test_invalid_tool_arguments_are_a_400_naming_the_message(client, fake):
    bad = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": "{oops"}}]}
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="claude-sonnet-4", tools=[WEATHER], messages=[
            *user("hi"), bad, {"role": "tool", "tool_call_id": "call_1", "content": "x"}])
    assert info.value.body["param"] == "messages[1].tool_calls[0].function.arguments" and fake.requests == []


# --- structured outputs --------------------------------------------------------------------

@pytest.mark.parametrize("model,native", [("claude-sonnet-4", False), ("claude-sonnet-4-5", True)])
async def test_parse_with_a_pydantic_model(client, fake, model, native):
    r = await client.beta.chat.completions.parse(model=model, response_format=Weather,
                                                 messages=user("Weather in Paris as JSON"))
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.conditions == "sunny" and r.choices[0].finish_reason == "stop"
    if native:
        assert fake.last["output_config"]["format"]["type"] == "json_schema" and "tools" not in fake.last
    else:
        assert fake.last["tool_choice"] == {"type": "tool", "name": "Weather", "disable_parallel_tool_use": True}


async def test_json_object_and_streamed_json_schema(client):
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=user("Reply in JSON: hi"),
                                             response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {"echo": "Reply in JSON: hi"}
    schema = Weather.model_json_schema()
    got = accumulate([c async for c in await client.chat.completions.create(
        model="claude-sonnet-4", messages=user("Paris"), stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}})])
    assert Weather.model_validate_json(got["content"]).city == "Paris" and got["finish_reason"] == "stop"
    assert got["tool_calls"] == []


# --- reasoning -----------------------------------------------------------------------------

async def test_reasoning_multi_turn_with_signatures(client, fake):
    messages = user("What's the weather in Paris? Use the tool.")
    r = await client.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=[WEATHER],
                                             reasoning_effort="low")
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    msg = r.choices[0].message
    details = msg.model_extra["reasoning_details"]
    assert msg.model_extra["reasoning_content"].startswith("The user wrote")
    assert details[0]["type"] == "reasoning.text" and details[0]["signature"].startswith("Eu")
    thinking_tokens = fake.answers[-1]["usage"]["output_tokens_details"]["thinking_tokens"]
    assert r.usage.completion_tokens_details.reasoning_tokens == thinking_tokens > 0
    turn2 = [*messages, msg.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "18C"}]
    r2 = await client.chat.completions.create(model="claude-sonnet-4-5", messages=turn2, tools=[WEATHER],
                                              reasoning_effort="low")
    assert r2.choices[0].message.content == "Tool results: 18C"
    assert fake.verified_thinking == [{"type": "thinking", "thinking": details[0]["text"],
                                       "signature": details[0]["signature"]}]
    dropped = {k: v for k, v in turn2[1].items() if k not in ("reasoning_details", "reasoning_content")}
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):
        await client.chat.completions.create(model="claude-sonnet-4-5", tools=[WEATHER], reasoning_effort="low",
                                             messages=[turn2[0], dropped, turn2[2]])


async def test_reasoning_drops_sampling_the_api_forbids_and_refuses_forced_tools(client, fake):
    r = await client.chat.completions.create(model="claude-sonnet-4-5", messages=user("hi"), reasoning_effort="low",
                                             temperature=0.2, top_p=0.5, max_tokens=100)
    assert r.choices[0].message.content == "hi"
    assert fake.last["max_tokens"] == 2148 and "temperature" not in fake.last and "top_p" not in fake.last
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=user("hi"), reasoning_effort="low",
                                             tools=[WEATHER], tool_choice="required")
    r = await client.beta.chat.completions.parse(model="claude-sonnet-4-5", messages=user("Paris"),
                                                 reasoning_effort="low", response_format=Weather)
    assert r.choices[0].message.parsed.city == "Paris" and r.choices[0].message.model_extra["reasoning_content"]
    with pytest.raises(openai.BadRequestError, match="forced tool call"):       # no native structured outputs
        await client.beta.chat.completions.parse(model="claude-sonnet-4", messages=user("Paris"),
                                                 reasoning_effort="low", response_format=Weather)
    assert len(fake.requests) == 2


async def test_thinking_suffix_and_redacted_thinking_round_trip(client, fake):
    messages = user("A secret plan: weather in Tokyo? use the tool")
    r = await client.chat.completions.create(model="claude-sonnet-4-5:thinking:high", messages=messages,
                                             tools=[WEATHER])
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    msg = r.choices[0].message
    assert [d["type"] for d in msg.model_extra["reasoning_details"]] == ["reasoning.text", "reasoning.encrypted"]
    await client.chat.completions.create(model="claude-sonnet-4-5:thinking:high", tools=[WEATHER], messages=[
        *messages, msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "rain"}])
    assert [b["type"] for b in fake.verified_thinking] == ["thinking", "redacted_thinking"]


async def test_streamed_reasoning_multi_turn(client, fake):
    messages = user("A secret: what's the weather in Rome? Use the tool.")
    got = accumulate([c async for c in await client.chat.completions.create(
        model="claude-sonnet-4-5", messages=messages, tools=[WEATHER], reasoning_effort="medium", stream=True,
        stream_options={"include_usage": True})])
    assert got["reasoning_content"].startswith("The user wrote") and got["finish_reason"] == "tool_calls"
    assert {d["type"] for d in got["reasoning_details"]} == {"reasoning.text", "reasoning.encrypted"}
    assert got["usage"].completion_tokens == fake.answers[-1]["usage"]["output_tokens"]
    assert got["usage"].completion_tokens_details.reasoning_tokens == \
        fake.answers[-1]["usage"]["output_tokens_details"]["thinking_tokens"]
    assistant = {"role": "assistant", "content": got["content"], "tool_calls": got["tool_calls"],
                 "reasoning_content": got["reasoning_content"], "reasoning_details": got["reasoning_details"]}
    got2 = accumulate([c async for c in await client.chat.completions.create(
        model="claude-sonnet-4-5", tools=[WEATHER], reasoning_effort="medium", stream=True, messages=[
            *messages, assistant, {"role": "tool", "tool_call_id": got["tool_calls"][0]["id"], "content": "sun"}])])
    assert got2["content"] == "Tool results: sun"
    original = fake.answers[0]["content"][:2]          # the blocks exactly as the fake first sent them
    assert fake.verified_thinking == original


# --- multimodal ----------------------------------------------------------------------------

async def test_images_by_url_and_data_url(client, fake):
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=user(
        "Compare these.", {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": PNG}}))
    assert r.choices[0].message.content == "Compare these. [images=2 documents=0]"
    blocks = fake.last["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert blocks[2]["source"]["type"] == "base64" and blocks[2]["source"]["media_type"] == "image/png"


async def test_pdf_as_image_url_and_as_file_part(client, fake):
    r = await client.chat.completions.create(model="claude-sonnet-4", messages=user(
        "Summarise.", {"type": "image_url", "image_url": {"url": PDF}},
        {"type": "file", "file": {"filename": "contract.pdf", "file_data": PDF}}))
    assert r.choices[0].message.content == "Summarise. [images=0 documents=2]"
    docs = [b for b in fake.last["messages"][0]["content"] if b["type"] == "document"]
    assert [d["source"]["media_type"] for d in docs] == ["application/pdf"] * 2 and docs[1]["title"] == "contract.pdf"


async def test_input_audio_is_a_clear_400(client, fake):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="claude-sonnet-4", messages=user(
            "Transcribe.", {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}))
    assert info.value.body["param"] == "messages[0].content[1]" and "audio" in info.value.message
    assert fake.requests == []


# --- prompt caching ------------------------------------------------------------------------

async def test_cache_usage_and_cost(client, fake):
    messages = [{"role": "system", "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]},
                *user("Summarise the policy.")]
    first = await client.chat.completions.create(model="claude-sonnet-4", messages=messages)
    written = fake.answers[-1]["usage"]
    assert written["cache_creation_input_tokens"] > 1024 and written["cache_read_input_tokens"] == 0
    assert fake.last["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert_usage(first.usage, written)
    chunks = [c async for c in await client.chat.completions.create(
        model="claude-sonnet-4", messages=messages, stream=True, stream_options={"include_usage": True})]
    read = fake.answers[-1]["usage"]
    assert read["cache_read_input_tokens"] == written["cache_creation_input_tokens"]
    assert_usage(chunks[-1].usage, read)
    assert chunks[-1].usage.prompt_tokens == first.usage.prompt_tokens     # cached tokens are still prompt tokens


async def test_auto_cache_places_breakpoints_on_long_prompts(client, fake):
    messages = [{"role": "system", "content": LONG}, *user("Summarise the policy.")]
    await client.chat.completions.create(model="claude-cached", messages=messages, tools=[WEATHER])
    sent = fake.last
    assert sent["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    again = await client.chat.completions.create(model="claude-cached", messages=messages, tools=[WEATHER])
    assert again.usage.prompt_tokens_details.cached_tokens == fake.answers[0]["usage"]["cache_creation_input_tokens"]
    await client.chat.completions.create(model="claude-cached", messages=user("short"))
    assert "cache_control" not in json.dumps(fake.last)                    # short prompts get no breakpoints


# --- errors --------------------------------------------------------------------------------

ERRORS = [("overloaded", 502, "provider_error"), ("apierror", 502, "provider_error"),
          ("ratelimited", 429, "rate_limit_error"), ("badrequest", 400, "invalid_request_error"),
          ("forbidden", 502, "provider_error"), ("notfound", 404, "invalid_request_error"),
          ("toolarge", 413, "invalid_request_error"), ("prompt-too-long", 422, "invalid_request_error")]


@pytest.mark.parametrize("model,status,err_type,stream", [(*e, False) for e in ERRORS] + [(*e, True) for e in ERRORS]
                         + [("error-first", 502, "provider_error", True)])
async def test_upstream_errors_become_real_statuses(client, model, status, err_type, stream):
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=f"anthropic/claude-sonnet-4-{model}", messages=user("hi"),
                                             stream=stream)
    resp = info.value.response
    assert resp.status_code == status and info.value.body["type"] == err_type
    assert KEY not in resp.text and KEY not in str(resp.headers)
    if status == 429:
        assert resp.headers["retry-after"] == "3"
    if model == "badrequest":
        assert "[redacted]" in info.value.message


async def test_upstream_auth_failure_is_502_not_the_clients_401(fake, make_gateway, log_buffer):
    gw = await make_gateway(CONFIG.format(url=fake.url), env={"ANTHROPIC_API_KEY": "sk-ant-wrong-key-000"})
    async with gw.client(http_client=http(openai)) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="claude-sonnet-4", messages=user("hi"))
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="anthropic/claude-sonnet-4-badrequest", messages=user("hi"))
    assert info.value.status_code == 502 and info.value.body["type"] == "provider_error"
    assert "sk-ant-wrong" not in info.value.response.text and fake.rejections[0] == "invalid x-api-key"
    assert b"claude-sonnet-4" in log_buffer.getvalue() and b"sk-ant-wrong" not in log_buffer.getvalue()


async def test_mid_stream_error_is_an_error_event_then_done(gw):
    status, raw = await raw_stream(gw, {"model": "anthropic/claude-sonnet-4-midstream-error", "stream": True,
                                        "messages": user("Tell me a long story.")})
    events = sse_data(raw)
    assert status == 200 and events[-1] == b"[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "provider_error" and "Overloaded" in error["message"]
    first = json.loads(events[0])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert any(json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2])


async def test_client_disconnect_closes_the_upstream_connection(gw, fake):
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                               json={"model": "anthropic/claude-sonnet-4-stream-hang", "stream": True,
                                     "messages": user("Keep talking.")})
        assert resp.status == 200
        assert b'"role":"assistant"' in await resp.content.readuntil(b"\n\n")
        resp.close()
    await asyncio.wait_for(fake.disconnected.wait(), 3)


# --- /v1/messages with the anthropic SDK, to an Anthropic-routed model ---------------------

async def test_messages_endpoint_round_trip_both_ways(gw, fake):
    sdk = anthropic_sdk(gw.url, CLIENT_KEY)
    msg = await sdk.messages.create(model="claude-sonnet-4", max_tokens=300, system="Be brief.",
                                    messages=user("Hello there"))
    assert msg.content[0].text == "Hello there" and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 0
    assert fake.last["system"] == "Be brief." and fake.last["max_tokens"] == 300      # as the client sent it
    headers = fake.requests[-1]["headers"]
    assert headers["x-api-key"] == KEY and "Authorization" not in headers
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    messages = user("What's the weather in Paris? Use the tool.")
    async with sdk.messages.stream(model="claude-sonnet-4-5", max_tokens=4096, tools=tools, messages=messages,
                                   thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        turn1 = await stream.get_final_message()
    assert [b.type for b in turn1.content] == ["thinking", "text", "tool_use"] and turn1.stop_reason == "tool_use"
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    tool_use = turn1.content[2]
    turn2 = await sdk.messages.create(
        model="claude-sonnet-4-5", max_tokens=4096, tools=tools, thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[*messages, {"role": "assistant", "content": [b.model_dump() for b in turn1.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "22C"}]}])
    assert turn2.content[-1].text == "Tool results: 22C"
    assert fake.verified_thinking == [{"type": "thinking", "thinking": turn1.content[0].thinking,
                                       "signature": turn1.content[0].signature}]


async def test_messages_endpoint_cache_usage_and_stream_errors(gw, fake):
    sdk = anthropic_sdk(gw.url, CLIENT_KEY)
    system = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        msg = await sdk.messages.create(model="claude-sonnet-4", max_tokens=100, system=system, messages=user("Hi"))
        upstream = fake.answers[-1]["usage"]
        assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (
            upstream["input_tokens"], upstream["cache_read_input_tokens"], upstream["cache_creation_input_tokens"])
    assert msg.usage.cache_read_input_tokens > 1024
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with sdk.messages.stream(model="anthropic/claude-sonnet-4-midstream-error", max_tokens=100,
                                       messages=user("Hi")) as stream:
            await stream.get_final_message()
