"""Anthropic message -> OpenAI chat.completion on recorded-style fixtures, parsed with the official
`openai` SDK; usage and error mapping."""
from __future__ import annotations

import json
from pathlib import Path

import anthropic.types
import pytest
from openai.lib._parsing._completions import parse_chat_completion
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from proxy.anthropic.request import to_anthropic
from proxy.anthropic.response import error_from_event, error_from_response, to_openai, usage_from_anthropic
from proxy.config import Pricing
from proxy.errors import ContextTooLong, InvalidRequest, ProviderError, RateLimited

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"


def fixture(name: str) -> dict:
    data = json.loads((FIXTURES / name).read_text())
    if data.get("type") == "message":
        anthropic.types.Message.model_validate(data)    # the fixture has the real API's shape
    return data


def translate(name: str, **kw) -> tuple[dict, ChatCompletion]:
    out = to_openai(fixture(name), created=1_700_000_000, **kw)
    return out, ChatCompletion.model_validate(out)


def test_text():
    out, cc = translate("text.json")
    assert cc.id == "msg_01XFDUDYJgAACzvnptvVoYEL" and cc.object == "chat.completion"
    assert cc.model == "claude-sonnet-4-20250514" and cc.created == 1_700_000_000
    assert cc.choices[0].message.content == "Hello! The capital of France is Paris."
    assert cc.choices[0].message.role == "assistant" and cc.choices[0].finish_reason == "stop"
    assert cc.choices[0].message.tool_calls is None
    assert (cc.usage.prompt_tokens, cc.usage.completion_tokens, cc.usage.total_tokens) == (21, 12, 33)


def test_single_tool_call_keeps_text_and_arguments():
    _, cc = translate("tool_single.json")
    msg = cc.choices[0].message
    assert msg.content == "I'll check the current weather in San Francisco for you."
    assert cc.choices[0].finish_reason == "tool_calls"
    [call] = msg.tool_calls
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_parallel_tool_calls_and_null_content():
    _, cc = translate("tool_parallel.json")
    msg = cc.choices[0].message
    assert msg.content is None
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", {"location": "Paris, France"}),
        ("toolu_01B19q90qw90lq917835lr0", "get_weather", {"location": "Tokyo, Japan"}),
        ("toolu_01C29q90qw90lq917835ls1", "get_time", {"timezone": "Asia/Tokyo"})]


def test_thinking_with_tool_use():
    out, cc = translate("thinking_tool.json")
    message = out["choices"][0]["message"]
    assert message["reasoning_content"].startswith("The user wants the weather in Paris.")
    [detail] = message["reasoning_details"]
    assert detail["type"] == "reasoning.text" and detail["signature"].startswith("EqoBCkgIBhAB")
    assert detail["text"] == message["reasoning_content"] and detail["index"] == 0
    assert cc.choices[0].finish_reason == "tool_calls"
    assert cc.usage.completion_tokens_details.reasoning_tokens == 120


def test_redacted_thinking_kept_in_reasoning_details():
    out, _ = translate("redacted_thinking.json")
    message = out["choices"][0]["message"]
    assert message["content"] == "The answer is 42."
    assert [d["type"] for d in message["reasoning_details"]] == ["reasoning.text", "reasoning.encrypted"]
    assert message["reasoning_details"][1]["data"].startswith("EmwKAhgBEgy3va3p")
    assert message["reasoning_details"][1]["index"] == 1


@pytest.mark.parametrize("name", ["thinking_tool.json", "redacted_thinking.json"])
def test_reasoning_details_round_trip_unchanged(name):
    """What the client receives and sends back becomes the same thinking blocks Anthropic sent."""
    original = fixture(name)
    message = to_openai(original)["choices"][0]["message"]
    history = [{"role": "user", "content": "Question"}, message]
    if message.get("tool_calls"):
        history.append({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C"})
    else:
        history.append({"role": "user", "content": "And then?"})
    body = to_anthropic({"model": original["model"], "messages": history, "reasoning_effort": "low",
                         "tools": [{"type": "function", "function": {"name": "get_weather"}}]}).body
    sent = body["messages"][1]["content"]
    expected = [b for b in original["content"] if b["type"] in ("thinking", "redacted_thinking")]
    assert sent[:len(expected)] == expected


def test_cache_usage():
    _, cc = translate("cache_usage.json")
    u = cc.usage
    assert u.prompt_tokens == 14 + 2048 + 1536
    assert u.prompt_tokens_details.cached_tokens == 2048
    assert u.prompt_tokens_details.cache_write_tokens == 1536
    assert u.completion_tokens == 17 and u.total_tokens == u.prompt_tokens + 17


def test_cache_usage_cost_uses_cache_prices():
    usage = usage_from_anthropic(fixture("cache_usage.json")["usage"])
    pricing = Pricing(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    expected = (14 * 3.0 + 2048 * 0.3 + 1536 * 3.75 + 17 * 15.0) / 1_000_000
    assert usage.cost(pricing) == pytest.approx(expected)


def test_odd_token_counts_are_read_as_numbers_or_counted_zero():
    # a proxy in front of Anthropic that sends strings, floats or junk must not break the answer
    usage = usage_from_anthropic({"input_tokens": "14", "output_tokens": 17.0, "cache_read_input_tokens": None,
                                  "cache_creation_input_tokens": -3, "output_tokens_details": "n/a"})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
            usage.reasoning_tokens) == (14, 17, 0, 0, 0)
    assert usage.cost(Pricing(input=3.0, output=15.0)) == pytest.approx((14 * 3.0 + 17 * 15.0) / 1_000_000)


@pytest.mark.parametrize("name,reason", [("max_tokens.json", "length"), ("refusal.json", "content_filter")])
def test_stop_reasons(name, reason):
    _, cc = translate(name)
    assert cc.choices[0].finish_reason == reason


@pytest.mark.parametrize("stop,reason", [("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
                                         ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                         ("refusal", "content_filter")])
def test_stop_reason_table(stop, reason):
    msg = {**fixture("tool_single.json"), "stop_reason": stop}
    assert to_openai(msg)["choices"][0]["finish_reason"] == reason


class CalendarEvent(BaseModel):
    name: str
    date: str
    participants: list[str]


def test_forced_json_tool_becomes_content_that_parse_accepts():
    out, cc = translate("json_tool.json", json_tool="CalendarEvent")
    msg = cc.choices[0].message
    assert msg.tool_calls is None and cc.choices[0].finish_reason == "stop"
    assert json.loads(msg.content) == {"name": "Science fair", "date": "Friday", "participants": ["Alice", "Bob"]}
    parsed = parse_chat_completion(response_format=CalendarEvent, input_tools=[], chat_completion=cc)
    assert parsed.choices[0].message.parsed == CalendarEvent(name="Science fair", date="Friday",
                                                             participants=["Alice", "Bob"])


def test_native_structured_output_parses():
    _, cc = translate("structured_native.json")
    parsed = parse_chat_completion(response_format=CalendarEvent, input_tools=[], chat_completion=cc)
    assert parsed.choices[0].message.parsed.participants == ["Alice", "Bob"]


# --- errors --------------------------------------------------------------------------------

def error_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_overloaded_and_auth_errors_are_502():
    for name, status in (("error_overloaded.json", 529), ("error_auth.json", 401), ("error_overloaded.json", 500)):
        err = error_from_response(status, error_body(name), provider="anthropic")
        assert isinstance(err, ProviderError) and err.status == 502 and err.upstream_status == status
    assert "invalid x-api-key" not in error_from_response(401, error_body("error_auth.json"),
                                                          provider="anthropic").message


def test_rate_limit_keeps_retry_after():
    err = error_from_response(429, error_body("error_rate_limit.json"), provider="anthropic", retry_after="17")
    assert isinstance(err, RateLimited) and err.status == 429 and err.headers == {"Retry-After": "17"}
    assert "rate limit" in err.message


def test_request_errors_keep_their_status():
    err = error_from_response(400, error_body("error_invalid.json"), provider="anthropic")
    assert isinstance(err, InvalidRequest) and err.status == 400 and "tool_use_id" in err.message
    err = error_from_response(400, error_body("error_prompt_too_long.json"), provider="anthropic")
    assert isinstance(err, ContextTooLong) and err.status == 422
    err = error_from_response(413, b"<html>Request Entity Too Large</html>", provider="anthropic")
    assert err.status == 413 and "Request Entity Too Large" in err.message


def test_stream_error_event_is_provider_error():
    err = error_from_event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                           provider="anthropic")
    assert isinstance(err, ProviderError) and err.status == 502 and err.upstream_status == 529
    assert "Overloaded" in err.message
