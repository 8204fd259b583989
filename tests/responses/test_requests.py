"""What a Responses request may hold: parse(), presets, Codex's request shape, built-in tools
(dropped when merely offered, 400 when forced), unsupported fields, a stream that fails midway."""
from __future__ import annotations

from typing import Literal

import openai
import orjson
import pytest
from pydantic import BaseModel

from tests.responses.conftest import KEY_A, WEATHER, ledger_row


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


@pytest.mark.parametrize("model", ["mock-echo", "up/smart-4o", "claude"])
async def test_parse_with_pydantic_model(client, model):
    r = await client.responses.parse(model=model, input="Weather in Paris as JSON", text_format=Weather)
    assert isinstance(r.output_parsed, Weather)


async def test_json_object_format(client, fake_openai):
    r = await client.responses.create(model="up/smart-4o", input="Answer in json please",
                                      text={"format": {"type": "json_object"}})
    assert isinstance(orjson.loads(r.output_text), dict)
    assert fake_openai.last["json"]["response_format"] == {"type": "json_object"}


async def test_preset_model(client):
    r = await client.responses.create(model="presets/echo-bot", input="hi preset")
    assert r.output_text == "hi preset" and r.model == "mock-echo"


async def test_codex_shaped_request(client, fake_openai, gw, http):
    """Codex CLI: instructions, developer + user items, a namespace of function tools, web_search
    offered, store false, include encrypted reasoning, summary auto, prompt_cache_key, client_metadata."""
    body = {
        "model": "up/smart-4o", "instructions": "You are Codex.", "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "medium", "summary": "auto"},
        "prompt_cache_key": "conv-1", "client_metadata": {"x": "y"}, "parallel_tool_calls": False,
        "tool_choice": "auto",
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                  {"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Use the read_file tool on README"}]}],
        "tools": [{"type": "namespace", "name": "mcp__fs", "description": "files", "tools": [
                      {"type": "function", "name": "read_file", "description": "read",
                       "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]},
                  {"type": "function", "name": "shell", "description": "run",
                   "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
                  {"type": "web_search", "external_web_access": False}]}
    async with http.post(gw.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-modelway-dropped-tools"] == "web_search"
        raw = await resp.read()
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["type"] == "response.completed"
    call = next(e["item"] for e in events if e["type"] == "response.output_item.done"
                and e["item"]["type"] == "function_call")
    assert call["name"] == "read_file" and call["namespace"] == "mcp__fs"
    sent = fake_openai.last["json"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["mcp__fs__read_file", "shell"]
    assert sent["messages"][:2] == [{"role": "system", "content": "You are Codex."},
                                    {"role": "system", "content": "Be brief."}]
    assert sent["reasoning_effort"] == "medium" and sent["parallel_tool_calls"] is False
    assert not {"store", "include", "prompt_cache_key", "client_metadata", "instructions"} & set(sent)
    # the call comes back under the client's name and namespace, and goes upstream joined again
    r2 = await gw.client(api_key=KEY_A).responses.create(
        model="up/smart-4o", tools=body["tools"][:2], store=False,
        input=[*body["input"], call, {"type": "function_call_output", "call_id": call["call_id"], "output": "# README"}])
    assert "# README" in r2.output_text
    assistant = next(m for m in fake_openai.last["json"]["messages"] if m.get("tool_calls"))
    assert assistant["tool_calls"][0]["function"]["name"] == "mcp__fs__read_file"


async def test_forced_built_in_tool_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="mock-echo", input="search", tools=[{"type": "web_search"}],
                                      tool_choice={"type": "web_search"})
    assert err.value.body["param"] == "tool_choice" and "web_search" in err.value.body["message"]


async def test_built_in_tool_needing_resources_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="mock-echo", input="x",
                                      tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert err.value.body["param"] == "tools[0].type" and "file_search" in err.value.body["message"]


@pytest.mark.parametrize("field,value", [("top_logprobs", 2), ("conversation", "conv_1"), ("background", True),
                                         ("prompt", {"id": "pmpt_1"}), ("max_tool_calls", 3)])
async def test_unsupported_field_is_400_naming_it(client, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="mock-echo", input="x", extra_body={field: value})
    assert err.value.body["param"] == field
    assert err.value.body["type"] == "invalid_request_error"


async def test_unknown_model_and_missing_previous_response(client):
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.create(model="nope", input="x")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.create(model="mock-echo", input="x", previous_response_id="resp_missing")
    assert err.value.body["param"] == "previous_response_id"


async def test_upstream_error_mid_stream_ends_with_response_failed(client, gw):
    raw = await client.responses.with_raw_response.create(model="mock-stream-error", input="hello world", stream=True)
    events = [e async for e in raw.parse()]      # legacy raw response: parse() is sync
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    row = await ledger_row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status"] == 502 and row["partial"] == 1
    stored = await client.responses.retrieve(events[-1].response.id)
    assert stored.status == "failed"


async def test_incomplete_for_length(client, anthropic_fake):
    r = await client.responses.create(model="claude", input="hello " * 50, max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("stream", [False, True])
async def test_custom_tool_round_trip(client, fake_openai, stream):
    """Codex's free-form apply_patch tool: a function with one string `input` upstream, a
    custom_tool_call back, its output accepted on the next turn."""
    tool = {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
            "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
    kw = dict(model="up/smart-4o", tools=[tool], tool_choice={"type": "custom", "name": "apply_patch"})
    if stream:
        async with client.responses.stream(input="patch it", **kw) as s:
            kinds = [e.type async for e in s]
            r1 = await s.get_final_response()
        assert "response.custom_tool_call_input.done" in kinds
        assert "response.function_call_arguments.delta" not in kinds
    else:
        r1 = await client.responses.create(input="patch it", **kw)
    call = r1.output[-1]
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and isinstance(call.input, str)
    sent = fake_openai.last["json"]["tools"][0]["function"]
    assert sent["parameters"]["required"] == ["input"] and "start: /.+/" in sent["parameters"]["properties"][
        "input"]["description"]
    r2 = await client.responses.create(model="up/smart-4o", tools=[tool], previous_response_id=r1.id, input=[
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}])
    assert "Done!" in r2.output_text
