"""Anthropic Messages in, OpenAI Chat Completions inside: request and non-streaming response.

Requests are built by the official anthropic SDK (captured by an aiohttp server on 127.0.0.1)
so the translator sees exactly what Anthropic clients send; outputs are checked against the openai
SDK's request types and anthropic.types.Message.
"""
from __future__ import annotations

import typing

import anthropic
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from proxy.errors import InvalidRequest
from proxy.inbound import THINKING_EFFORT, thinking_effort, to_anthropic_message, to_openai_request

OPENAI_FIELDS = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase)) | {"stream"}
#: fields the translation may add that OpenAI does not define (documented in messages.py)
NON_OPENAI_FIELDS = {"top_k", "thinking"}
MESSAGE = TypeAdapter(ChatCompletionMessageParam)
TOOL = TypeAdapter(ChatCompletionToolParam)


def _consume(value):
    """Pydantic validates TypedDict Iterables lazily; walk everything so errors surface."""
    if isinstance(value, dict):
        return {k: _consume(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ValidatorIterator":
        return [_consume(v) for v in value]
    return value


def assert_plausible_openai(req: dict) -> None:
    unknown = set(req) - OPENAI_FIELDS - NON_OPENAI_FIELDS
    assert not unknown, f"not OpenAI chat completion fields: {unknown}"
    assert isinstance(req["model"], str) and req["messages"]
    for msg in req["messages"]:
        _consume(MESSAGE.validate_python(msg))
    for tool in req.get("tools", []):
        _consume(TOOL.validate_python(tool))


class FakeAnthropic:
    """A loopback server that records request bodies and answers with `answer`."""

    def __init__(self):
        self.seen: list[dict] = []
        self.answer: dict = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                             "stop_reason": "end_turn", "stop_sequence": None,
                             "usage": {"input_tokens": 1, "output_tokens": 1}}
        self.client: anthropic.AsyncAnthropic | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(await request.json())
        return web.json_response(self.answer)


@pytest.fixture
async def fake(aiohttp_server):
    fake = FakeAnthropic()
    app = web.Application()
    app.router.add_post("/v1/messages", fake.handle)
    server = await aiohttp_server(app)
    fake.client = anthropic.AsyncAnthropic(api_key="test", base_url=str(server.make_url("")), max_retries=0)
    yield fake
    await fake.client.close()


@pytest.fixture
def sdk_request(fake):
    async def send(**kwargs) -> dict:
        """The JSON body the official anthropic SDK sends for messages.create(**kwargs)."""
        await fake.client.messages.create(**kwargs)
        return fake.seen[-1]
    return send


# -- requests -------------------------------------------------------------------------------

async def test_simple_request_maps_fields(sdk_request):
    body = await sdk_request(model="mock-echo", max_tokens=256, system="Be brief.",
                       messages=[{"role": "user", "content": "Hello"}], stop_sequences=["END"],
                             metadata={"user_id": "u-42"}, extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 40})
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert req == {"model": "mock-echo", "max_tokens": 256, "temperature": 0.3, "top_p": 0.9, "top_k": 40,
                   "stop": ["END"], "user": "u-42",
                   "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hello"}]}


async def test_system_blocks_keep_cache_control_as_parts(sdk_request):
    cc = {"type": "ephemeral"}
    body = await sdk_request(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                       system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": cc}])
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert req["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": cc}]}
    plain = to_openai_request({**body, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]})
    assert plain["messages"][0] == {"role": "system", "content": "A\n\nB"}


def test_stream_asks_for_usage():
    req = to_openai_request({"model": "m", "max_tokens": 5, "stream": True,
                             "messages": [{"role": "user", "content": "x"}]})
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}


async def test_images_and_documents(sdk_request):
    body = await sdk_request(model="m", max_tokens=10, messages=[{"role": "user", "content": [
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain doc"}},
    ]}])
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert req["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "plain doc"},
    ]}]


async def test_tool_round_trip_with_thinking(sdk_request):
    """A Claude Code style turn: thinking + tool_use, then tool_result + more user text."""
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]},
              "cache_control": {"type": "ephemeral"}}]
    body = await sdk_request(
        model="smart", max_tokens=2048, tools=tools,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need the tool.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "timeout"}, {"type": "text", "text": "retry later"}]},
                {"type": "text", "text": "Thanks"},
            ]},
        ])
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert req["tools"] == [{"type": "function", "cache_control": {"type": "ephemeral"}, "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": tools[0]["input_schema"]}}]
    assert req["tool_choice"] == "auto" and req["parallel_tool_calls"] is False
    assert req["reasoning_effort"] == "low"
    assert "thinking" not in req
    user, assistant, tool1, tool2, followup = req["messages"]
    assert user == {"role": "user", "content": "Weather in Paris and Rome?"}
    assert assistant == {
        "role": "assistant", "content": "Checking.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}],
        "reasoning_details": [{"type": "reasoning.text", "text": "Need the tool.", "signature": "sig-1"},
                              {"type": "reasoning.encrypted", "data": "opaque"}]}
    assert tool1 == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"}
    assert tool2 == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout\nretry later"}
    assert followup == {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}


def test_tool_only_assistant_turn_has_null_content_and_tool_result_images_follow():
    req = to_openai_request({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "shot?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "done"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]},
    ]})
    assert_plausible_openai(req)
    assert req["messages"][1]["content"] is None
    assert req["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert req["messages"][3] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice, expected):
    req = to_openai_request({"model": "m", "max_tokens": 5, "tool_choice": choice,
                             "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                             "messages": [{"role": "user", "content": "x"}]})
    assert_plausible_openai(req)
    assert req["tool_choice"] == expected
    assert "parallel_tool_calls" not in req


@pytest.mark.parametrize("budget, effort", [(500, "minimal"), (1024, "low"), (4095, "low"), (4096, "medium"),
                                            (16383, "medium"), (16384, "high"), (64000, "high")])
def test_thinking_budget_table(budget, effort):
    assert thinking_effort(budget) == effort
    req = to_openai_request({"model": "m", "max_tokens": 70000, "messages": [{"role": "user", "content": "x"}],
                             "thinking": {"type": "enabled", "budget_tokens": budget}})
    assert req["reasoning_effort"] == effort
    assert "thinking" not in req          # Anthropic-only: Claude targets get the request untranslated
    assert [e for _, e in THINKING_EFFORT] == ["minimal", "low", "medium", "high"]


async def test_output_config_effort_and_format(sdk_request):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    body = await sdk_request(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                       output_config={"effort": "max", "format": {"type": "json_schema", "schema": schema}})
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert req["reasoning_effort"] == "xhigh"
    assert req["response_format"] == {"type": "json_schema",
                                      "json_schema": {"name": "output", "schema": schema, "strict": True}}
    beta = to_openai_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                              "output_format": {"type": "json_schema", "schema": schema}})
    assert beta["response_format"]["json_schema"]["schema"] == schema


async def test_top_level_cache_control_marks_the_last_block(sdk_request):
    cc = {"type": "ephemeral"}
    body = await sdk_request(model="m", max_tokens=5, cache_control=cc, messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    req = to_openai_request(body)
    assert_plausible_openai(req)
    assert "cache_control" not in req
    assert req["messages"][-1]["content"] == [{"type": "text", "text": "a"},
                                              {"type": "text", "text": "b", "cache_control": cc}]
    single = to_openai_request({**body, "messages": [{"role": "user", "content": "only"}]})
    assert single["messages"] == [{"role": "user", "content": [{"type": "text", "text": "only", "cache_control": cc}]}]


def test_unknown_fields_pass_and_anthropic_only_fields_drop():
    req = to_openai_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                             "service_tier": "auto", "seed": 7, "preset": "support-bot"})
    assert "service_tier" not in req
    assert req["seed"] == 7 and req["preset"] == "support-bot"


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": 3}]}, "messages[0].content"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": []}]}, "messages[0].role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]}, "messages[0].content[0].type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
])
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        to_openai_request(body)
    assert info.value.param == param
    assert info.value.status == 400


# -- responses ------------------------------------------------------------------------------

def completion(message: dict, finish: str = "stop", usage: dict | None = None) -> dict:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                               "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}}}


def test_text_response_and_cache_usage():
    msg = to_anthropic_message(completion({"content": "Hi there"}), model="smart")
    parsed = anthropic.types.Message.model_validate(msg)
    assert parsed.id == "msg_abc" and parsed.model == "smart"
    assert [b.type for b in parsed.content] == ["text"] and parsed.content[0].text == "Hi there"
    assert parsed.stop_reason == "end_turn" and parsed.stop_sequence is None
    assert msg["usage"] == {"input_tokens": 10, "output_tokens": 20,
                            "cache_read_input_tokens": 60, "cache_creation_input_tokens": 30}


def test_thinking_and_tool_use_response():
    msg = to_anthropic_message(completion({
        "content": "Let me check.",
        "reasoning_content": "The user wants weather.",
        "reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "sig-9"},
                              {"type": "reasoning.encrypted", "data": "enc"}],
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                       {"id": "call_2", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": '}}]},
        finish="tool_calls"))
    parsed = anthropic.types.Message.model_validate(msg)
    assert [b.type for b in parsed.content] == ["thinking", "redacted_thinking", "text", "tool_use", "tool_use"]
    assert parsed.content[0].thinking == "The user wants weather." and parsed.content[0].signature == "sig-9"
    assert parsed.content[1].data == "enc"
    assert parsed.content[3].input == {"city": "Paris"} and parsed.content[3].id == "call_1"
    assert parsed.content[4].input == {}      # invalid JSON arguments
    assert parsed.stop_reason == "tool_use"


def test_signed_thinking_text_comes_from_details_not_the_display_text():
    msg = to_anthropic_message(completion({
        "content": "ok", "reasoning_content": "one\n\ntwo",
        "reasoning_details": [{"type": "reasoning.text", "text": "one", "signature": "s1", "index": 0},
                              {"type": "reasoning.text", "text": "two", "signature": "s2", "index": 1}]}))
    parsed = anthropic.types.Message.model_validate(msg)
    assert [(b.thinking, b.signature) for b in parsed.content[:2]] == [("one", "s1"), ("two", "s2")]


def test_response_round_trips_into_a_request():
    """What a client gets back, sent back as history, translates to the same OpenAI message."""
    openai_msg = {"content": "ok", "reasoning_details": [{"type": "reasoning.text", "text": "hm", "signature": "s"}],
                  "tool_calls": [{"id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": '{"a":1}'}}]}
    msg = anthropic.types.Message.model_validate(to_anthropic_message(completion(openai_msg, "tool_calls")))
    history = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]}
    req = to_openai_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}, history]})
    assert req["messages"][1] == {"role": "assistant", **openai_msg}


@pytest.mark.parametrize("finish, choice_extra, stop_reason, stop_sequence", [
    ("stop", {}, "end_turn", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
    ("stop", {"stop_reason": "OTHER"}, "end_turn", None),
    ("length", {}, "max_tokens", None),
    ("tool_calls", {}, "tool_use", None),
    ("content_filter", {}, "refusal", None),
])
def test_stop_reasons(finish, choice_extra, stop_reason, stop_sequence):
    body = completion({"content": "x"}, finish)
    body["choices"][0].update(choice_extra)
    msg = to_anthropic_message(body, stop_sequences=["END"])
    parsed = anthropic.types.Message.model_validate(msg)
    assert (parsed.stop_reason, parsed.stop_sequence) == (stop_reason, stop_sequence)


async def test_sdk_client_parses_the_response(fake):
    """The official SDK, pointed at a server answering our translation, gets a Message."""
    fake.answer = to_anthropic_message(completion({"content": "Bonjour"}), model="mock-echo")
    msg = await fake.client.messages.create(model="mock-echo", max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Bonjour" and msg.usage.cache_read_input_tokens == 60
