"""One capability suite, run against every provider type (see conftest.py: PROVIDERS, SKIP).

What an OpenAI client sees must not depend on which provider serves the model: chat, streaming
(role first, [DONE] last, the usage chunk only when asked), tools (tool_choice, parallel calls,
tool results), structured outputs (json_object, strict json_schema, the SDK's parse()),
reasoning, images / PDF / audio, clear 400s for what a model cannot take, usage and cost,
prompt caching and upstream failures.
"""
from __future__ import annotations

import base64
import json
from typing import Literal

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel

from tests.wire import TIME, WEATHER

feature = pytest.mark.feature

CITY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "temperature_c"],
               "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}}}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nsuite").decode()
PDF_B64 = base64.b64encode(b"%PDF-1.4 suite").decode()
LONG_SYSTEM = "You follow the house rules below exactly.\n" + "Rule: answer precisely and briefly. " * 400


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


def user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts] if parts else text}]


async def sse(subject, body: dict) -> list[bytes]:
    """The data payloads of a streamed request, exactly as sent by the gateway."""
    async with aiohttp.ClientSession() as http:
        async with http.post(subject.url + "/v1/chat/completions", json={"model": subject.model, **body},
                             headers={"Authorization": "Bearer sk-client-test"}) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            raw = await resp.read()
    assert raw.endswith(b"\n\n")
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


def accumulate(chunks) -> dict:
    """Reassemble a streamed answer the way a client does, checking tool-call deltas."""
    out = {"content": "", "reasoning_content": "", "tool_calls": {}, "finish_reason": None}
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        out["content"] += delta.content or ""
        out["reasoning_content"] += (delta.model_extra or {}).get("reasoning_content") or ""
        for tc in delta.tool_calls or ():
            assert tc.index is not None
            if tc.index not in out["tool_calls"]:
                assert tc.id and tc.function.name, "the first delta of a tool call carries its id and name"
                out["tool_calls"][tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            out["tool_calls"][tc.index]["arguments"] += tc.function.arguments or ""
        out["finish_reason"] = chunk.choices[0].finish_reason or out["finish_reason"]
    out["tool_calls"] = [out["tool_calls"][i] for i in sorted(out["tool_calls"])]
    return out


async def create(subject, **kw):
    return await subject.client.chat.completions.create(model=subject.model, **kw)


async def stream(subject, **kw) -> list[ChatCompletionChunk]:
    return [c async for c in await create(subject, stream=True, **kw)]


# --- chat and streaming ----------------------------------------------------------------------

@feature("chat")
async def test_chat(subject):
    r = await create(subject, messages=[{"role": "system", "content": "Be brief."}, *user("Hello, suite!")])
    assert r.object == "chat.completion" and r.id and len(r.choices) == 1
    assert "Hello, suite!" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@feature("streaming")
async def test_stream_wire_format(subject):
    answer = (await create(subject, messages=user("Stream this sentence."))).choices[0].message.content
    events = await sse(subject, {"messages": user("Stream this sentence."), "stream": True})
    assert events[-1] == b"[DONE]" and b"[DONE]" not in events[:-1]
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices and c.usage is None for c in chunks), "no usage chunk unless asked"
    got = accumulate(chunks)
    assert (got["content"], got["finish_reason"]) == (answer, "stop")
    events = await sse(subject, {"messages": user("Stream this sentence."), "stream": True,
                                 "stream_options": {"include_usage": True}})
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert events[-1] == b"[DONE]" and chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert [c.choices == [] for c in chunks].count(True) == 1, "exactly one usage chunk, right before [DONE]"


@feature("max_tokens")
async def test_max_tokens_stops_with_length(subject):
    r = await create(subject, messages=user("word " * 60), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and 0 < len(r.choices[0].message.content) < 300


# --- tools -------------------------------------------------------------------------------

@feature("tools")
@pytest.mark.parametrize("choice,text,called", [
    ("auto", "What's the weather in Paris? Use the tool.", "get_weather"),
    ("required", "Hello there.", "any"),
    ({"type": "function", "function": {"name": "get_time"}}, "Hello there.", "get_time"),
    ("none", "What's the weather in Paris? Use the tool.", None),
], ids=["auto", "required", "named", "none"])
async def test_tool_choice(subject, choice, text, called):
    r = await create(subject, messages=user(text), tools=[WEATHER, TIME], tool_choice=choice)
    calls = r.choices[0].message.tool_calls or []
    if called is None:
        assert calls == [] and r.choices[0].finish_reason == "stop" and r.choices[0].message.content
        return
    assert calls and r.choices[0].finish_reason == "tool_calls"
    for call in calls:
        assert call.type == "function" and call.id
        assert called in ("any", call.function.name)
        assert isinstance(json.loads(call.function.arguments), dict)


@feature("tools")
async def test_serial_tool_calls(subject):
    r = await create(subject, messages=user("Weather in Paris and Tokyo? Use the tool."), tools=[WEATHER],
                     parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


@feature("parallel_tool_calls")
async def test_parallel_tool_calls(subject):
    r = await create(subject, messages=user("Weather in Paris and Tokyo? Use the tool."), tools=[WEATHER])
    calls = r.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Tokyo"]
    assert len({c.id for c in calls}) == 2


@feature("tools")
async def test_tool_results_round_trip(subject):
    messages = user("What's the weather in Paris? Use the tool.")
    msg = (await create(subject, messages=messages, tools=[WEATHER])).choices[0].message
    results = [{"role": "tool", "tool_call_id": c.id, "content": "18C and sunny"} for c in msg.tool_calls]
    r = await create(subject, messages=[*messages, msg.model_dump(exclude_none=True), *results], tools=[WEATHER])
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content


@feature("tool_result_content")
async def test_tool_results_reach_the_model(subject):
    messages = user("What's the weather in Paris? Use the tool.")
    msg = (await create(subject, messages=messages, tools=[WEATHER])).choices[0].message
    results = [{"role": "tool", "tool_call_id": c.id, "content": "18C and sunny"} for c in msg.tool_calls]
    r = await create(subject, messages=[*messages, msg.model_dump(exclude_none=True), *results], tools=[WEATHER])
    assert "18C and sunny" in r.choices[0].message.content


@feature("tools")
async def test_streamed_tool_calls(subject):
    got = accumulate(await stream(subject, messages=user("What's the weather in Paris? Use the tool."),
                                  tools=[WEATHER]))
    assert got["finish_reason"] == "tool_calls" and got["tool_calls"]
    for call in got["tool_calls"]:
        assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"])


# --- structured outputs --------------------------------------------------------------------

@feature("structured_outputs")
async def test_json_object(subject):
    r = await create(subject, messages=user("Answer in JSON: what is 2 + 2?"), response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@feature("structured_outputs")
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
async def test_json_schema_strict(subject, streamed):
    fmt = {"type": "json_schema", "json_schema": {"name": "city_weather", "schema": CITY_SCHEMA, "strict": True}}
    if streamed:
        content = accumulate(await stream(subject, messages=user("Weather in Paris"), response_format=fmt))["content"]
    else:
        r = await create(subject, messages=user("Weather in Paris"), response_format=fmt)
        content = r.choices[0].message.content
    data = json.loads(content)
    assert set(data) == {"city", "temperature_c"} and isinstance(data["city"], str)
    assert isinstance(data["temperature_c"], (int, float))


@feature("structured_outputs")
async def test_sdk_parse(subject):
    r = await subject.client.beta.chat.completions.parse(model=subject.model, messages=user("Weather in Paris"),
                                                         response_format=Weather)
    assert isinstance(r.choices[0].message.parsed, Weather) and r.choices[0].finish_reason == "stop"


# --- reasoning -----------------------------------------------------------------------------

@feature("reasoning")
async def test_reasoning_effort_is_accepted(subject):
    r = await create(subject, messages=user("Think about it: hello."), reasoning_effort="low")
    assert "hello" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


@feature("reasoning_content")
async def test_reasoning_content(subject):
    r = await create(subject, messages=user("Think about it: hello."), reasoning_effort="medium")
    assert isinstance(r.choices[0].message.model_extra.get("reasoning_content"), str)
    assert r.choices[0].message.model_extra["reasoning_content"]
    got = accumulate(await stream(subject, messages=user("Think about it: hello."), reasoning_effort="medium"))
    assert got["reasoning_content"] and "hello" in got["content"]


@feature("reasoning_tokens")
async def test_reasoning_tokens(subject):
    r = await create(subject, messages=user("Think about it: hello."), reasoning_effort="high")
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    assert r.usage.completion_tokens >= r.usage.completion_tokens_details.reasoning_tokens


# --- multimodal ----------------------------------------------------------------------------

@feature("vision")
async def test_images_by_url_and_data_url(subject):
    r = await create(subject, messages=user(
        "Describe these images.", {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}))
    assert r.choices[0].finish_reason == "stop" and "Describe these images." in r.choices[0].message.content
    sent = subject.sent()
    if sent is not None:               # the upstream got both images
        assert "https://example.com/cat.jpg" in json.dumps(sent) and PNG.split(",")[1] in json.dumps(sent)


@feature("pdf")
@pytest.mark.parametrize("part", [
    {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}},
    {"type": "image_url", "image_url": {"url": f"data:application/pdf;base64,{PDF_B64}"}},
], ids=["file", "image_url"])
async def test_pdf(subject, part):
    r = await create(subject, messages=user("Summarise the report.", part))
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content
    if subject.sent() is not None:
        assert PDF_B64 in json.dumps(subject.sent())


@feature("audio")
async def test_input_audio(subject):
    r = await create(subject, messages=user(
        "Transcribe this.", {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}))
    assert r.choices[0].message.content


@feature("capability_errors")
async def test_what_a_model_cannot_take_is_a_clear_400(subject):
    with pytest.raises(openai.BadRequestError) as info:
        await subject.client.chat.completions.create(model="model-no-vision", messages=user(
            "Look.", {"type": "image_url", "image_url": {"url": PNG}}))
    assert info.value.body["param"] == "messages[0].content[1]" and "images" in info.value.message
    caps = (await subject.client.models.retrieve(subject.model)).model_extra.get("capabilities") or {}
    if caps.get("audio") is False:     # e.g. Claude and the mock: audio input is refused, never dropped
        with pytest.raises(openai.BadRequestError) as info:
            await create(subject, messages=user("Hear.", {"type": "input_audio",
                                                          "input_audio": {"data": "UklGRg==", "format": "wav"}}))
        assert info.value.body["param"] == "messages[0].content[1]"
    assert subject.upstream is None or all("Look." not in json.dumps(r["json"]) for r in subject.upstream.requests)


# --- usage, cost, caching ------------------------------------------------------------------

@feature("usage")
async def test_usage_and_cost(subject):
    r = await create(subject, messages=user("Count my tokens."))
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens > 0
    assert u.model_extra["cost"] == pytest.approx(subject.cost(u)) and u.model_extra["cost"] > 0
    last = (await stream(subject, messages=user("Count my tokens."), stream_options={"include_usage": True}))[-1]
    assert last.choices == [] and last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.model_extra["cost"] == pytest.approx(subject.cost(last.usage))


@feature("prompt_caching")
async def test_prompt_caching(subject):
    messages = [{"role": "system", "content": [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]}, *user("First question?")]
    first = await create(subject, messages=messages)
    second = await create(subject, messages=messages)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 1000 and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens >= cached + (second.usage.prompt_tokens_details.cache_write_tokens or 0)
    assert second.usage.model_extra["cost"] == pytest.approx(subject.cost(second.usage))
    assert second.usage.model_extra["cost"] < first.usage.model_extra["cost"]


# --- failures ------------------------------------------------------------------------------

@feature("errors")
async def test_upstream_failures(subject):
    for streamed in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            await subject.client.chat.completions.create(model="model-failing", messages=user("hi"), stream=streamed)
        assert info.value.status_code == 502 and info.value.body["type"] == "provider_error"
    events = await sse(subject, {"messages": user("Tell me a long story, please."), "stream": True,
                                 "model": "model-stream-failing"})
    assert events[-1] == b"[DONE]" and json.loads(events[-2])["error"]["type"] == "provider_error"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
