"""Request bodies checked at the edge: a missing or ill-typed field OpenAI (or Anthropic, on
/v1/messages) defines is a 400 `invalid_request_error` naming it in `param`, before any
upstream is called; fields the gateway does not know pass through unchanged."""
from __future__ import annotations

import anthropic
import openai
import pytest

from tests.core.helpers import assert_envelope, chat_body, post_json
from tests.wire import WEATHER

CHAT = "/v1/chat/completions"
USER = {"role": "user", "content": "hi"}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}

# (fields merged into a valid body, the param named, the code)
BAD_CHAT = [
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"max_tokens": "ten"}, "max_tokens", "invalid_type"),
    ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": False}, "max_completion_tokens", "invalid_type"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"n": "2"}, "n", "invalid_type"),
    ({"n": 0}, "n", "invalid_value"),
    ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": "x"}, "frequency_penalty", "invalid_type"),
    ({"stop": 5}, "stop", "invalid_type"),
    ({"stop": ["a", 1]}, "stop[1]", "invalid_type"),
    ({"logit_bias": [1]}, "logit_bias", "invalid_type"),
    ({"logit_bias": {"50256": "x"}}, "logit_bias.50256", "invalid_type"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256", "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"stream_options": "x"}, "stream_options", "invalid_type"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_type"),
    ({"tools": "x"}, "tools", "invalid_type"),
    ({"tools": [5]}, "tools[0]", "invalid_type"),
    ({"tools": [{"type": "function", "function": 5}]}, "tools[0].function", "invalid_type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name",
     "missing_required_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters", "invalid_type"),
    ({"tools": [WEATHER, {"function": WEATHER["function"]}]}, "tools[1].type", "missing_required_parameter"),
    ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tool_choice": 1}, "tool_choice", "invalid_type"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name",
     "missing_required_parameter"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "invalid_type"),
    ({"response_format": "json"}, "response_format", "invalid_type"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema",
     "invalid_type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema", "invalid_type"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "invalid_value"),
    ({"user": 5}, "user", "invalid_type"),
    ({"metadata": "x"}, "metadata", "invalid_type"),
    ({"metadata": {"a": 1}}, "metadata.a", "invalid_type"),
    ({"modalities": ["smell"]}, "modalities[0]", "invalid_value"),
    ({"audio": "x"}, "audio", "invalid_type"),
    ({"prediction": {"type": "content", "content": 5}}, "prediction.content", "invalid_type"),
    ({"service_tier": 5}, "service_tier", "invalid_type"),
    ({"store": "yes"}, "store", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"functions": [{"description": "no name"}]}, "functions[0].name", "missing_required_parameter"),
    ({"messages": [USER, {"role": "wizard", "content": "hi"}]}, "messages[1].role", "invalid_value"),
    ({"messages": [USER, {"role": 5, "content": "hi"}]}, "messages[1].role", "invalid_type"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type",
     "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text",
     "invalid_type"),
    ({"messages": [{"role": "system", "content": "x", "name": 5}, USER]}, "messages[0].name", "invalid_type"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": "x"}]}, "messages[1].tool_calls", "invalid_type"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {"name": "f"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "missing_required_parameter"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [TOOL_CALL]}, {"role": "tool", "content": "ok"}]},
     "messages[2].tool_call_id", "missing_required_parameter"),
    ({"messages": [USER, {"role": "function", "content": "ok"}]}, "messages[1].name", "missing_required_parameter"),
]


@pytest.mark.parametrize("fields,param,code", BAD_CHAT, ids=[p for _, p, _ in BAD_CHAT])
async def test_ill_typed_chat_field_is_400_naming_it(gw, http, fake_openai, fields, param, code):
    got = await post_json(http, gw.url + CHAT, chat_body(**fields))
    err = assert_envelope(got, 400, "invalid_request_error", code=code, param=param)
    assert f"'{param}'" in err["message"]
    assert fake_openai.requests == []


async def test_the_openai_sdk_sees_a_bad_request_naming_the_field(gw, fake_openai):
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[USER], temperature="hot")
    assert exc.value.status_code == 400 and exc.value.param == "temperature"
    assert exc.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[USER, {"role": "wizard", "content": "abracadabra"}])
    assert exc.value.param == "messages[1].role"
    assert "wizard" in exc.value.message and "developer" in exc.value.message
    assert fake_openai.requests == []


FULL = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Really."}]},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "Weather?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
            {"type": "video_url", "video_url": "https://example.com/v.mp4"}]},   # not OpenAI's: passed on
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "function", "name": "legacy", "content": None},
        {"role": "assistant", "content": [{"type": "text", "text": "Sunny."}, {"type": "refusal", "refusal": "no"}],
         "reasoning_details": [{"type": "reasoning.text", "text": "hm"}]},
        {"role": "user", "content": "thanks", "cache_control": {"type": "ephemeral"}},
    ],
    "temperature": 0, "top_p": 1, "n": 1, "max_tokens": 50, "max_completion_tokens": 60,
    "stop": ["\n\n"], "presence_penalty": -2, "frequency_penalty": 2.0, "logit_bias": {"50256": -100},
    "logprobs": True, "top_logprobs": 3, "seed": -7, "stream": False, "stream_options": None,
    "tools": [WEATHER, {"type": "custom", "custom": {"name": "grammar", "format": {"type": "text"}}},
              {"type": "web_search_preview"}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                               "strict": True}},
    "reasoning_effort": "low", "user": "u-1", "metadata": {"team": "a"}, "modalities": ["text"],
    "prediction": {"type": "content", "content": "Sunny"}, "service_tier": "on_demand", "store": False,
    "verbosity": None, "safety_identifier": "s", "prompt_cache_key": "k", "web_search_options": {},
    "functions": [{"name": "legacy"}], "function_call": "auto",
    "top_k": 40, "x_vendor": {"anything": [1, "two", None]},        # unknown: passed through as they are
}


async def test_a_request_using_every_known_field_passes_through_unchanged(gw, http, fake_openai):
    got = await post_json(http, gw.url + CHAT, FULL)
    assert got[0] == 200, got[2]
    sent = fake_openai.last["json"]
    assert {k: v for k, v in sent.items() if k != "model"} == {k: v for k, v in FULL.items() if k != "model"}


async def test_null_is_accepted_for_optional_fields(gw, http, fake_openai):
    nulls = {k: None for k in ("temperature", "top_p", "n", "max_tokens", "stop", "logit_bias", "seed", "tools",
                               "tool_choice", "response_format", "reasoning_effort", "metadata", "user")}
    got = await post_json(http, gw.url + CHAT, chat_body(**nulls))
    assert got[0] == 200, got[2]
    assert fake_openai.last["json"]["temperature"] is None


BAD_EMBEDDINGS = [
    ({"input": 5}, "input", "invalid_type"),
    ({"input": []}, "input", "invalid_value"),
    ({"input": ["a", 1]}, "input[1]", "invalid_type"),
    ({"input": [[1, 2], [3, "x"]]}, "input[1][1]", "invalid_type"),
    ({"model": 5}, "model", "invalid_type"),
    ({"encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ({"dimensions": "8"}, "dimensions", "invalid_type"),
    ({"dimensions": 0}, "dimensions", "invalid_value"),
    ({"user": ["u"]}, "user", "invalid_type"),
]


@pytest.mark.parametrize("fields,param,code", BAD_EMBEDDINGS, ids=[p for _, p, _ in BAD_EMBEDDINGS])
async def test_ill_typed_embeddings_field_is_400_naming_it(gw, http, fake_openai, fields, param, code):
    body = {"model": "text-embedding-3-small", "input": "hello", **fields}
    got = await post_json(http, gw.url + "/v1/embeddings", body)
    assert_envelope(got, 400, "invalid_request_error", code=code, param=param)
    assert fake_openai.requests == []


async def test_valid_embeddings_inputs_pass(gw, fake_openai):
    client = gw.client()
    for value in ("hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        r = await client.embeddings.create(model="text-embedding-3-small", input=value, dimensions=3,
                                           encoding_format="float", user="u")
        assert r.data
        assert fake_openai.last["json"]["input"] == value


MESSAGES_CONFIG = """
middlewares: [access_log]
providers:
  mock: {type: mock}
models:
  mock-echo: {targets: [{provider: mock}]}
"""
BAD_MESSAGES = [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_p": "x"}, "top_p"),
    ({"top_k": 1.5}, "top_k"),
    ({"stream": "yes"}, "stream"),
    ({"metadata": "x"}, "metadata"),
    ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ({"seed": "x"}, "seed"),           # an OpenAI field passed on: checked as on /v1/chat/completions
]


@pytest.mark.parametrize("fields,param", BAD_MESSAGES, ids=[p for _, p in BAD_MESSAGES])
async def test_ill_typed_messages_field_is_400_naming_it(make_gateway, fields, param):
    gw = await make_gateway(MESSAGES_CONFIG)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client.messages.create(model="mock-echo", max_tokens=10, messages=[USER], extra_body=fields)
    assert exc.value.status_code == 400
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert f"'{param}'" in exc.value.body["error"]["message"]
