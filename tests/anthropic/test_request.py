"""OpenAI chat request -> Anthropic Messages request: every translated request passes the strict
checker of the rules the API enforces (tests/fixtures/anthropic/api_rules.py)."""
from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

from proxy.anthropic.request import EFFORT_BUDGETS, Options, model_info, to_anthropic
from proxy.errors import InvalidRequest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
_spec = importlib.util.spec_from_file_location("anthropic_api_rules", FIXTURES / "api_rules.py")
api_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_rules)

MODEL = "claude-sonnet-4-20250514"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def translate(body: dict, **options) -> dict:
    body = {"model": MODEL, **body}
    out = to_anthropic(body, Options(**options))
    api_rules.check_request(out.body)
    return out.body


def rejects(body: dict, param: str, **options) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        to_anthropic({"model": MODEL, **body}, Options(**options))
    assert info.value.status == 400
    assert info.value.param == param, info.value.message
    return info.value


def user(content) -> dict:
    return {"role": "user", "content": content}


# --- basic fields --------------------------------------------------------------------------

def test_system_and_developer_messages_become_system_blocks_in_order():
    out = translate({"messages": [
        {"role": "system", "content": "You are terse."},
        user("Hi"),
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        user("What is the capital of France?"),
    ]})
    assert out["system"] == [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}]
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Hi"}, {"type": "text", "text": "What is the capital of France?"}]}]


def test_scalar_fields():
    out = translate({"messages": [user("Hi")], "max_completion_tokens": 300, "max_tokens": 999, "stop": "END",
                     "temperature": 0.3, "top_p": 0.9, "user": "user-42", "seed": 7, "presence_penalty": 0.5})
    assert out["max_tokens"] == 300
    assert out["stop_sequences"] == ["END"]
    assert (out["temperature"], out["top_p"]) == (0.3, 0.9)
    assert out["metadata"] == {"user_id": "user-42"}
    assert "seed" not in out and "presence_penalty" not in out
    assert translate({"messages": [user("Hi")], "temperature": 1.7})["temperature"] == 1.0
    assert translate({"messages": [user("Hi")], "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize("model,expected", [
    ("claude-3-haiku-20240307", 4096), ("claude-3-5-sonnet-20241022", 8192), ("claude-3-7-sonnet-20250219", 64000),
    ("claude-sonnet-4-20250514", 64000), ("claude-opus-4-1-20250805", 32000), ("claude-opus-4-5", 64000),
    ("claude-haiku-4-5-20251001", 64000), ("some-other-model", 4096)])
def test_default_max_tokens_per_model(model, expected):
    assert to_anthropic({"model": model, "messages": [user("Hi")]}).body["max_tokens"] == expected


def test_route_default_max_tokens_wins():
    assert translate({"messages": [user("Hi")]}, max_tokens_default=2000)["max_tokens"] == 2000


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_completion_tokens": "10"}, "max_completion_tokens"),
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"temperature": 3}, "temperature"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"modalities": ["text", "audio"]}, "modalities"),
    ({"stop": [1]}, "stop")])
def test_invalid_or_unsupported_fields_are_400(body, param):
    rejects({"messages": [user("Hi")], **body}, param)


def test_messages_must_have_content():
    rejects({"messages": []}, "messages")
    rejects({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages")
    rejects({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role")


def test_the_client_body_is_not_modified():
    import copy
    body = {"model": MODEL, "messages": tool_round_trip(), "tools": [WEATHER, TIME], "reasoning_effort": "low",
            "response_format": {"type": "json_object"}, "temperature": 0.5}
    body["response_format"] = {"type": "text"}
    before = copy.deepcopy(body)
    to_anthropic(body, Options(auto_cache=True))
    assert body == before


def test_final_assistant_prefill_loses_trailing_whitespace():
    out = translate({"messages": [user("Write JSON"), {"role": "assistant", "content": "{\n  "}]})
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "{"}]}


# --- tools -------------------------------------------------------------------------------

@pytest.mark.parametrize("choice,expected", [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"})])
def test_tool_choice(choice, expected):
    out = translate({"messages": [user("Weather?")], "tools": [WEATHER, TIME], "tool_choice": choice})
    assert out["tool_choice"] == expected
    assert out["tools"][0] == {"name": "get_weather", "description": "Current weather for a city",
                               "input_schema": WEATHER["function"]["parameters"]}
    assert out["tools"][1] == {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def test_parallel_tool_calls_false_disables_parallel_use():
    out = translate({"messages": [user("Weather?")], "tools": [WEATHER], "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = translate({"messages": [user("Weather?")], "tools": [WEATHER], "tool_choice": "required",
                     "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_bad_tools_are_400():
    rejects({"messages": [user("x")], "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]")
    rejects({"messages": [user("x")], "tools": [WEATHER], "tool_choice": {"type": "function",
                                                                         "function": {"name": "nope"}}}, "tool_choice")
    rejects({"messages": [user("x")], "tools": [WEATHER]}, "tools", capabilities={"tools": False})


def tool_round_trip() -> list[dict]:
    return [
        user("Weather in Paris and Tokyo, and the time in Tokyo?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}},
            {"id": "toolu_3", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "25C, sunny"}]},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "21:04"},
        user("Thanks! Summarise."),
    ]


def test_tool_calls_and_results_round_trip():
    out = translate({"messages": tool_round_trip(), "tools": [WEATHER, TIME]})
    assistant, results = out["messages"][1], out["messages"][2]
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "Tokyo"}},
        {"type": "tool_use", "id": "toolu_3", "name": "get_time", "input": {}}]}
    assert results["role"] == "user" and len(out["messages"]) == 3
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C, cloudy"}]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "25C, sunny"}]},
        {"type": "tool_result", "tool_use_id": "toolu_3", "content": [{"type": "text", "text": "21:04"}]},
        {"type": "text", "text": "Thanks! Summarise."}]


def test_history_with_tool_calls_but_no_tools_declares_them_unusable():
    out = translate({"messages": tool_round_trip()})
    assert [t["name"] for t in out["tools"]] == ["get_weather", "get_time"]
    assert out["tool_choice"] == {"type": "none"}


def test_invalid_tool_call_arguments_name_the_message():
    messages = tool_round_trip()
    messages[1]["tool_calls"][1]["function"]["arguments"] = '{"location": "Tok'
    err = rejects({"messages": messages, "tools": [WEATHER, TIME]}, "messages[1].tool_calls[1].function.arguments")
    assert "not valid JSON" in err.message
    messages[1]["tool_calls"][1]["function"]["arguments"] = "[1, 2]"
    rejects({"messages": messages, "tools": [WEATHER, TIME]}, "messages[1].tool_calls[1].function.arguments")
    rejects({"messages": [user("x"), {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id")


# --- content parts -----------------------------------------------------------------------

def test_images_and_pdfs():
    out = translate({"messages": [user([
        {"type": "text", "text": "Compare these"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:application/pdf;base64,{PDF}"}},
        {"type": "file", "file": {"filename": "contract.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "file", "file": {"filename": "notes.txt",
                                  "file_data": "data:text/plain;base64," + base64.b64encode(b"hello").decode()}},
    ])]})
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    assert blocks[2] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[3]["source"]["media_type"] == "image/jpeg"
    assert blocks[4] == {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    assert blocks[5] == {"type": "document", "title": "contract.pdf",
                         "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    assert blocks[6]["source"] == {"type": "text", "media_type": "text/plain", "data": "hello"}


@pytest.mark.parametrize("part,param", [
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "messages[0].content[1]"),
    ({"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG}"}}, "messages[0].content[1]"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "messages[0].content[1].image_url.url"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "messages[0].content[1].image_url.url"),
    ({"type": "file", "file": {"file_id": "file-abc123"}}, "messages[0].content[1].file"),
    ({"type": "video_url", "video_url": {"url": "https://x"}}, "messages[0].content[1]"),
])
def test_untranslatable_parts_are_400_naming_the_part(part, param):
    err = rejects({"messages": [user([{"type": "text", "text": "look"}, part])]}, param)
    if part["type"] == "input_audio":
        assert "audio" in err.message and err.code == "unsupported_content"


def test_capabilities_turned_off_are_400():
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    rejects({"messages": [user([image])]}, "messages[0].content[0]", capabilities={"vision": False})
    pdf = {"type": "image_url", "image_url": {"url": f"data:application/pdf;base64,{PDF}"}}
    rejects({"messages": [user([pdf])]}, "messages[0].content[0]", capabilities={"pdf": False})


def test_cache_control_passes_through_on_parts_system_and_tools():
    cc = {"type": "ephemeral"}
    out = translate({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": cc}]},
        user([{"type": "text", "text": "Doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])],
        "tools": [{**WEATHER, "cache_control": cc}]})
    assert out["system"][0]["cache_control"] == cc
    assert out["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert out["tools"][0]["cache_control"] == cc


# --- reasoning -------------------------------------------------------------------------------

@pytest.mark.parametrize("effort,budget", sorted(EFFORT_BUDGETS.items()))
def test_reasoning_effort_table(effort, budget):
    out = translate({"messages": [user("Think")], "reasoning_effort": effort, "max_tokens": 1000,
                     "temperature": 0.2, "top_p": 0.5}, )
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == budget + 1000
    assert "temperature" not in out and "top_p" not in out


def test_reasoning_keeps_large_max_tokens_and_allowed_top_p():
    out = translate({"messages": [user("Think")], "reasoning_effort": "low", "max_tokens": 10000, "top_p": 0.97})
    assert out["max_tokens"] == 10000 and out["top_p"] == 0.97


def test_thinking_suffix_and_none():
    assert translate({"messages": [user("x")]}, reasoning_effort="medium")["thinking"]["budget_tokens"] == 8192
    assert "thinking" not in translate({"messages": [user("x")], "reasoning_effort": "none"}, reasoning_effort="high")
    assert translate({"messages": [user("x")], "reasoning_effort": "high"},
                     reasoning_effort="low")["thinking"]["budget_tokens"] == 16384
    assert translate({"messages": [user("x")], "reasoning": {"max_tokens": 3000}})["thinking"]["budget_tokens"] == 3000


def test_reasoning_errors():
    rejects({"messages": [user("x")], "reasoning_effort": "extreme"}, "reasoning_effort")
    rejects({"messages": [user("x")], "reasoning_effort": "low", "tools": [WEATHER], "tool_choice": "required"},
            "tool_choice")
    rejects({"messages": [user("x")], "reasoning_effort": "low"}, "reasoning_effort", capabilities={"reasoning": False})
    with pytest.raises(InvalidRequest):
        to_anthropic({"model": "claude-3-5-sonnet-20241022", "messages": [user("x")], "reasoning_effort": "low"})


SIG = "EqoBCkgIBhABGAIiQL7SdQ4qP0Jq8Y2mT3Vh0lYb4c2Fq1Hkz5dK9wXo7nR1eS0tU6vA2pM8g"


def test_reasoning_details_go_back_as_thinking_blocks_first():
    messages = [
        user("Weather in Paris?"),
        {"role": "assistant", "content": "Checking.", "reasoning_content": "I should call the tool.",
         "reasoning_details": [
             {"type": "reasoning.text", "text": "I should call", "format": "anthropic-claude-v1", "index": 0},
             {"type": "reasoning.text", "text": " the tool.", "format": "anthropic-claude-v1", "index": 0},
             {"type": "reasoning.text", "signature": SIG, "format": "anthropic-claude-v1", "index": 0},
             {"type": "reasoning.encrypted", "data": "EmwKAhgBEgy3va3pzix", "format": "anthropic-claude-v1",
              "index": 1},
             {"type": "reasoning.text", "text": "unsigned, cannot be replayed", "index": 2},
             {"type": "reasoning.encrypted", "data": "gAAAAB...", "format": "openai-responses-v1", "index": 3}],
         "tool_calls": [{"id": "toolu_9", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "18C"},
    ]
    out = translate({"messages": messages, "tools": [WEATHER], "reasoning_effort": "low"})
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "I should call the tool.", "signature": SIG},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"location": "Paris"}}]


# --- structured outputs ------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "date": {"type": "string"}},
          "required": ["name", "date"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "CalendarEvent", "schema": SCHEMA, "strict": True}}


def test_native_structured_outputs_on_models_that_have_them():
    out = to_anthropic({"model": "claude-sonnet-4-5-20250929", "messages": [user("x")], "response_format": JSON_SCHEMA})
    api_rules.check_request(out.body)
    assert out.body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert out.json_tool is None and out.betas == () and "tools" not in out.body
    assert model_info("claude-opus-4-1-20250805").native_structured
    assert not model_info("claude-sonnet-4-20250514").native_structured


def test_forced_tool_when_not_native():
    out = to_anthropic({"model": MODEL, "messages": [user("x")], "response_format": JSON_SCHEMA})
    api_rules.check_request(out.body)
    assert out.json_tool == "CalendarEvent"
    assert out.body["tools"] == [{"name": "CalendarEvent", "input_schema": SCHEMA,
                                  "description": out.body["tools"][0]["description"]}]
    assert out.body["tool_choice"] == {"type": "tool", "name": "CalendarEvent", "disable_parallel_tool_use": True}
    forced = to_anthropic({"model": "claude-sonnet-4-5", "messages": [user("x")], "response_format": JSON_SCHEMA},
                          Options(native_structured=False))
    assert forced.json_tool == "CalendarEvent"


def test_forced_tool_alongside_user_tools_and_json_object():
    out = to_anthropic({"model": MODEL, "messages": [user("x")], "response_format": JSON_SCHEMA, "tools": [WEATHER]})
    api_rules.check_request(out.body)
    assert [t["name"] for t in out.body["tools"]] == ["get_weather", "CalendarEvent"]
    assert out.body["tool_choice"] == {"type": "any"}
    out = to_anthropic({"model": MODEL, "messages": [user("x")], "response_format": {"type": "json_object"}})
    api_rules.check_request(out.body)
    assert out.json_tool == "json_response"
    assert out.body["tools"][0]["input_schema"] == {"type": "object", "additionalProperties": True}


def test_structured_output_errors():
    rejects({"messages": [user("x")], "response_format": JSON_SCHEMA, "reasoning_effort": "low"}, "response_format")
    rejects({"messages": [user("x")], "response_format": {"type": "yaml"}}, "response_format")
    rejects({"messages": [user("x")], "response_format": JSON_SCHEMA}, "response_format",
            capabilities={"structured_outputs": False})
    out = to_anthropic({"model": "claude-sonnet-4-5", "messages": [user("x")], "response_format": JSON_SCHEMA,
                        "reasoning_effort": "low"})
    api_rules.check_request(out.body)       # native structured outputs work with thinking


# --- prompt caching ----------------------------------------------------------------------

def long_request(**extra) -> dict:
    return {"messages": [{"role": "system", "content": "Rules. " * 600}, user("Question one"),
                         {"role": "assistant", "content": "Answer one"}, user("Question two")],
            "tools": [WEATHER], **extra}


def test_auto_cache_places_breakpoints_on_long_prompts():
    out = translate(long_request(), auto_cache=True)
    assert out["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert out["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert out["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in out["messages"][0]["content"][-1]


def test_auto_cache_skips_short_prompts_and_respects_the_limit():
    assert "cache_control" not in translate({"messages": [user("Hi")], "tools": [WEATHER]},
                                            auto_cache=True)["tools"][0]
    cc = {"type": "ephemeral"}
    req = long_request()
    req["messages"][1] = user([{"type": "text", "text": f"part {i}", "cache_control": cc} for i in range(3)])
    out = translate(req, auto_cache=True)   # 3 from the client + 1 added = the API's maximum of 4
    assert "cache_control" in out["tools"][-1] and "cache_control" not in out["system"][-1]
    assert "cache_control" not in translate(long_request(), auto_cache=False)["tools"][-1]


# --- the checker itself is strict ------------------------------------------------------------

GOOD = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}


@pytest.mark.parametrize("patch", [
    {"max_tokens": None}, {"temperature_x": 1}, {"messages": [{"role": "system", "content": "s"}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
    {"messages": [{"role": "user", "content": "q"}, TOOL_USE, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_2"}]}],
     "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
    {"messages": [{"role": "user", "content": "q"}, TOOL_USE,
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}]},
    {"thinking": {"type": "enabled", "budget_tokens": 100}},
    {"thinking": {"type": "enabled", "budget_tokens": 2048}},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA"}}]}]},
])
def test_checker_rejects_what_the_api_rejects(patch):
    body = {**GOOD, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(AssertionError):
        api_rules.check_request(body)
    api_rules.check_request(GOOD)


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, prefix + (key,))


def test_malformed_input_is_a_400_never_a_crash():
    """Replace every value of a rich request, one at a time, by values of the wrong type."""
    import copy
    base = {"model": MODEL, "messages": tool_round_trip() + [
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}],
         "reasoning_details": [{"type": "reasoning.text", "text": "t", "signature": "s", "index": 0}]},
        user([{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
              {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}])],
        "tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "response_format": JSON_SCHEMA, "stop": ["x"], "reasoning_effort": "low", "max_tokens": 10}
    garbage = [None, 0, -1, "x", "", [], {}, [1], {"a": 1}, True, 2.5]
    checked = 0
    for path in list(_paths(base))[1:]:
        for value in garbage:
            body = copy.deepcopy(base)
            node = body
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            try:
                to_anthropic(body, Options(auto_cache=True))
            except InvalidRequest:
                pass
            checked += 1
    assert checked > 500
