"""Stored responses: previous_response_id (also a Claude route with thinking signatures),
stateless round trips, retrieve, delete, input_items pagination, ownership."""
from __future__ import annotations

import openai
import pytest

from tests.responses.conftest import WEATHER


async def tool_loop(client, model: str, stream: bool = False, **extra):
    """Three turns via previous_response_id: the model calls the tool, gets its output, answers,
    then a follow-up question that needs the whole conversation."""
    async def create(**kw):
        if not stream:
            return await client.responses.create(model=model, tools=[WEATHER], **extra, **kw)
        async with client.responses.stream(model=model, tools=[WEATHER], **extra, **kw) as s:
            return await s.get_final_response()

    r1 = await create(input="What's the weather in Paris? Use the tool.")
    calls = [o for o in r1.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather", r1.output
    r2 = await create(previous_response_id=r1.id, input=[
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21C"} for c in calls])
    assert r2.status == "completed" and r2.previous_response_id == r1.id
    if model != "mock-echo":                    # the mock echoes the last user message
        assert "sunny, 21C" in r2.output_text
    r3 = await create(previous_response_id=r2.id, input="thanks, and say bye")
    return r1, r2, r3


@pytest.mark.parametrize("model", ["mock-echo", "up/smart-4o"])
async def test_function_tool_loop_via_previous_response_id(client, fake_openai, model):
    _, _, r3 = await tool_loop(client, model)
    assert r3.status == "completed" and r3.output_text
    if model.startswith("up/"):
        sent = fake_openai.last["json"]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
        assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_thinking_signatures_round_trip(client, anthropic_fake, stream):
    r1, r2, _ = await tool_loop(client, "claude", stream=stream, reasoning={"effort": "low", "summary": "auto"})
    reasoning = [o for o in r1.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].summary[0].text
    assert reasoning[0].encrypted_content is None          # not asked for with `include`
    # the second turn sent the first turn's thinking block back, signature intact (the fake checks it)
    assert anthropic_fake.verified_thinking and anthropic_fake.verified_thinking[0]["signature"]
    assert anthropic_fake.verified_thinking[0] == anthropic_fake.answers[0]["content"][0]


async def test_stateless_round_trip_with_encrypted_reasoning(client, anthropic_fake):
    common = dict(model="claude", tools=[WEATHER], store=False, include=["reasoning.encrypted_content"],
                  reasoning={"effort": "low"})
    first_input = [{"role": "user", "content": "What's the weather in Rome? Use the tool."}]
    r1 = await client.responses.create(input=first_input, **common)
    enc = [o for o in r1.output if o.type == "reasoning"][0].encrypted_content
    assert enc
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r1.id)          # store: false keeps nothing
    calls = [o for o in r1.output if o.type == "function_call"]
    items = [*first_input, *[o.model_dump(exclude_none=True) for o in r1.output],
             *[{"type": "function_call_output", "call_id": c.call_id, "output": "rain"} for c in calls]]
    r2 = await client.responses.create(input=items, **common)
    assert "rain" in r2.output_text
    assert anthropic_fake.verified_thinking[0] == anthropic_fake.answers[0]["content"][0]


async def test_retrieve_delete_and_other_key(client, other):
    r = await client.responses.create(model="mock-echo", input="keep me", metadata={"k": "v"})
    got = await client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "keep me" and got.metadata == {"k": "v"}
    with pytest.raises(openai.NotFoundError) as err:
        await other.responses.retrieve(r.id)
    assert err.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model="mock-echo", input="x", previous_response_id=r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.input_items.list(r.id)
    await client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)


async def test_input_items_pagination(client):
    items = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    r = await client.responses.create(model="mock-echo", input=items)
    page = await client.responses.input_items.list(r.id, limit=2)
    assert [i.content[0].text for i in page.data] == ["message 4", "message 3"] and page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    page2 = await client.responses.input_items.list(r.id, limit=2, after=page.last_id)
    assert [i.content[0].text for i in page2.data] == ["message 2", "message 1"]
    every = [i async for i in client.responses.input_items.list(r.id, limit=2, order="asc")]
    assert [i.content[0].text for i in every] == [f"message {i}" for i in range(5)]
    before = await client.responses.input_items.list(r.id, order="asc", extra_query={"before": every[2].id})
    assert [i.content[0].text for i in before.data] == ["message 0", "message 1"] and not before.has_more
