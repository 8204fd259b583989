"""Reasoning items sent back by id only (`encrypted_content` null, as stateful clients do when
they did not ask for `include: ["reasoning.encrypted_content"]`: the openai-agents SDK,
LangChain): like OpenAI, the gateway finds the reasoning in its stored responses of the same key
(the item id names its response), so Claude's signed thinking still reaches the next turn of a
tool loop."""
from __future__ import annotations

import openai
import pytest

from tests.responses.conftest import KEY_B, WEATHER

REASONING = {"effort": "low", "summary": "auto"}


async def first_turn(client, store: bool = True):
    r1 = await client.responses.create(model="claude", tools=[WEATHER], reasoning=REASONING, store=store,
                                       input="What's the weather in Paris? Use the tool.")
    kinds = [o.type for o in r1.output]
    assert kinds[0] == "reasoning" and "function_call" in kinds and r1.output[0].encrypted_content is None
    call = next(o for o in r1.output if o.type == "function_call")
    items = [{"role": "user", "content": "What's the weather in Paris? Use the tool."},
             *[o.model_dump(exclude_none=True) for o in r1.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}]
    return r1, items


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_item_found_by_id(client, anthropic_fake, stream):
    r1, items = await first_turn(client)
    assert "encrypted_content" not in items[1]
    kw = dict(model="claude", tools=[WEATHER], reasoning=REASONING, input=items)
    if stream:
        async with client.responses.stream(**kw) as s:
            r2 = await s.get_final_response()
    else:
        r2 = await client.responses.create(**kw)
    assert "sunny, 21C" in r2.output_text
    assert anthropic_fake.verified_thinking[0] == anthropic_fake.answers[0]["content"][0]


async def test_another_keys_reasoning_ids_are_not_found(gw, client, anthropic_fake):
    _, items = await first_turn(client)
    async with gw.client(api_key=KEY_B) as other:
        with pytest.raises(openai.BadRequestError) as err:      # Claude refuses the turn without its thinking
            await other.responses.create(model="claude", tools=[WEATHER], reasoning=REASONING, input=items)
    assert "thinking" in err.value.body["message"] and not anthropic_fake.verified_thinking


async def test_unstored_reasoning_needs_include(client, anthropic_fake):
    _, items = await first_turn(client, store=False)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="claude", tools=[WEATHER], reasoning=REASONING, input=items)


@pytest.mark.parametrize("item_id", [["rs_x"], {"a": 1}, "rs_nothere_0", "rs_", 7])
async def test_odd_reasoning_ids_are_ignored(client, item_id):
    r = await client.responses.create(model="mock-echo", input=[
        {"type": "reasoning", "id": item_id, "summary": []}, {"role": "user", "content": "still fine"}])
    assert r.output_text == "still fine"
