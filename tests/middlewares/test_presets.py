"""Presets (SPEC §4), checked on what the upstream receives: the four ways to reference one,
the shallow merge where the request wins, the preset's system prompt first; unknown 404,
forbidden 403, an `any` preset without @model 400."""
from __future__ import annotations

import anthropic
import openai
import pytest

from tests.middlewares.helpers import APP, OPS, OTHER, assert_sdk_error, key, routes, row_for

SYSTEM = "You are ACME's support agent."
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PRESETS = {
    "bot": {"model": "gpt-4o-mini", "system": SYSTEM,
            "params": {"temperature": 0.2, "max_tokens": 50, "response_format": {"type": "json_object"},
                       "metadata": {"team": "support"}}},
    "tooling": {"model": "gpt-4o-mini", "params": {"tools": [WEATHER_TOOL], "tool_choice": "auto",
                                                   "reasoning_effort": "low", "parallel_tool_calls": False}},
    "anybot": {"model": "any", "system": "Answer in JSON.", "params": {"temperature": 0}},
    "private": {"model": "gpt-4o-mini", "keys": ["other"]},
    "echo": {"model": "mock-echo", "system": "Be terse."},
}
LIMITED = "sk-mw-limited-0123456789abcdef"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gw(upstream, make_gateway):
    return await make_gateway(routes(upstream.url, presets=PRESETS, keys=[
        key("app", APP), key("other", OTHER), key("limited", LIMITED, allowed_models=["mock-*"])]))


async def test_every_reference_form_expands_the_preset(gw, upstream):
    client = gw.client(APP)
    for model, extra, upstream_model in (
            ("presets/bot", {}, "gpt-4o-mini-2024-07-18"), ("@preset/bot", {}, "gpt-4o-mini-2024-07-18"),
            ("presets/bot@gpt-4o", {}, "gpt-4o"), ("@preset/bot@gpt-4o", {}, "gpt-4o"),
            ("", {"preset": "bot"}, "gpt-4o-mini-2024-07-18"), ("gpt-4o", {"preset": "bot"}, "gpt-4o")):
        c = await client.chat.completions.create(model=model, messages=HI, extra_body=extra)
        assert c.choices[0].message.content
        sent = upstream.last["json"]
        assert sent["model"] == upstream_model, model
        assert sent["messages"] == [{"role": "system", "content": SYSTEM}, *HI]
        assert (sent["temperature"], sent["max_tokens"], sent["response_format"], sent["metadata"]) == \
            (0.2, 50, {"type": "json_object"}, {"team": "support"})
        assert "preset" not in sent


async def test_request_fields_win_in_a_shallow_merge(gw, upstream):
    await gw.client(APP).chat.completions.create(
        model="presets/bot", messages=HI, temperature=0.9, response_format={"type": "text"},
        metadata={"user": "u1"})
    sent = upstream.last["json"]
    assert sent["temperature"] == 0.9                     # the request wins
    assert sent["response_format"] == {"type": "text"}    # whole values, not merged
    assert sent["metadata"] == {"user": "u1"}
    assert sent["max_tokens"] == 50                       # the preset fills what the request left out


async def test_the_preset_system_prompt_comes_first(gw, upstream):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    await gw.client(APP).chat.completions.create(model="presets/bot", messages=messages)
    assert upstream.last["json"]["messages"] == [{"role": "system", "content": SYSTEM}, *messages]


async def test_params_carry_tools_and_reasoning_effort(gw, upstream):
    c = await gw.client(APP).chat.completions.create(model="presets/tooling", messages=HI)
    assert c.choices[0].message.content
    sent = upstream.last["json"]
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    assert sent["reasoning_effort"] == "low" and sent["parallel_tool_calls"] is False
    assert sent["messages"] == HI                          # no system prompt in this preset


async def test_a_preset_works_when_streamed(gw, upstream):
    stream = await gw.client(APP).chat.completions.create(model="presets/bot", messages=HI, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! How can I help?"
    assert upstream.last["json"]["messages"][0] == {"role": "system", "content": SYSTEM}


async def test_the_ledger_names_the_preset_and_the_resolved_model(gw, data_dir):
    r = await gw.client(APP).chat.completions.with_raw_response.create(model="presets/bot@gpt-4o", messages=HI)
    row = await row_for(data_dir, r.headers["x-request-id"])
    assert (row["preset"], row["model"], row["upstream_model"], row["status"]) == ("bot", "gpt-4o", "gpt-4o", 200)


async def test_an_unknown_preset_is_404(gw, upstream):
    for model, extra in (("presets/nope", {}), ("@preset/nope", {}), ("", {"preset": "nope"})):
        with pytest.raises(openai.NotFoundError) as exc:
            await gw.client(APP).chat.completions.create(model=model, messages=HI, extra_body=extra)
        err = assert_sdk_error(exc.value, 404, "invalid_request_error", "preset_not_found", "model")
        assert "'nope'" in err["message"] and "bot" in err["tip"]
        assert "private" not in err["tip"]          # APP may not use it: not named to APP
    assert upstream.requests == []
    with pytest.raises(openai.NotFoundError) as exc:
        await gw.client(OTHER).chat.completions.create(model="presets/nope", messages=HI)
    assert "private" in exc.value.body["tip"]       # OTHER may


async def test_a_preset_outside_its_keys_is_403(gw, upstream):
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await gw.client(APP).chat.completions.create(model="presets/private", messages=HI)
    err = assert_sdk_error(exc.value, 403, "permission_error", "preset_not_allowed", "model")
    assert "private" in err["message"] and err["tip"]
    assert upstream.requests == []
    for allowed in (OTHER, OPS):
        assert (await gw.client(allowed).chat.completions.create(model="presets/private", messages=HI)).choices


async def test_an_any_preset_needs_a_model(gw, upstream):
    with pytest.raises(openai.BadRequestError) as exc:
        await gw.client(APP).chat.completions.create(model="presets/anybot", messages=HI)
    err = assert_sdk_error(exc.value, 400, "invalid_request_error", "preset_model_required", "model")
    assert "presets/anybot@<model>" in err["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        await gw.client(APP).chat.completions.create(model="", messages=HI, extra_body={"preset": "anybot"})
    assert exc.value.code == "preset_model_required"
    c = await gw.client(APP).chat.completions.create(model="gpt-4o", messages=HI, extra_body={"preset": "anybot"})
    assert c.choices and upstream.last["json"]["model"] == "gpt-4o"
    c = await gw.client(APP).chat.completions.create(model="presets/anybot@gpt-4o", messages=HI)
    assert c.choices and upstream.last["json"]["model"] == "gpt-4o"
    assert upstream.last["json"]["messages"][0] == {"role": "system", "content": "Answer in JSON."}


async def test_the_preset_model_must_be_allowed_for_the_key(gw):
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await gw.client(LIMITED).chat.completions.create(model="presets/bot", messages=HI)
    assert_sdk_error(exc.value, 403, "permission_error", "model_not_allowed")
    c = await gw.client(LIMITED).chat.completions.create(model="presets/echo", messages=HI)
    assert c.choices[0].message.content == "hi"


async def test_a_preset_field_that_is_not_a_name_is_400(gw):
    with pytest.raises(openai.BadRequestError) as exc:
        await gw.client(APP).chat.completions.create(model="gpt-4o", messages=HI, extra_body={"preset": 5})
    assert_sdk_error(exc.value, 400, "invalid_request_error", param="preset")


async def test_presets_are_not_models(gw):
    assert not [m for m in (await gw.client(APP).models.list()).data if "preset" in m.id or m.id == "bot"]
    with pytest.raises(openai.NotFoundError):
        await gw.client(APP).models.retrieve("presets/bot")


async def test_anthropic_clients_can_use_a_preset(gw, upstream):
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=APP, max_retries=0)
    msg = await client.messages.create(model="presets/bot", max_tokens=20, system="Be brief.", messages=HI)
    assert msg.content[0].text == "Hello! How can I help?"
    sent = upstream.last["json"]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert [m["role"] for m in sent["messages"]][:2] == ["system", "system"]
    assert sent["messages"][0]["content"] == SYSTEM
    assert sent["max_tokens"] == 20                       # the request's own field wins
