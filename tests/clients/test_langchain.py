"""LangChain's `ChatOpenAI(use_responses_api=True)` through the gateway's /v1/responses: tool
calling (bind_tools, a ToolMessage back) and `with_structured_output`, plain and streamed, on the
mock, the fake OpenAI upstream and the fake Anthropic upstream. LangSmith tracing is off."""
from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.clients.conftest import KEY_A, MODELS

REPORT = "weather-report-9d2b: rain, 12C"


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return REPORT


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


@pytest.fixture(autouse=True)
def no_tracing(monkeypatch):
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def chat_model(gw, model: str, **kw) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=gw.url + "/v1", api_key=KEY_A, use_responses_api=True,
                      max_retries=0, **kw)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("model", MODELS)
async def test_tool_call_round_trip(gw, model, streaming):
    llm = chat_model(gw, model, streaming=streaming).bind_tools([get_weather])
    history = [HumanMessage("What is the weather in London? Use the get_weather tool.")]
    first = await llm.ainvoke(history)
    assert [c["name"] for c in first.tool_calls] == ["get_weather"]
    call = first.tool_calls[0]
    assert "London" in call["args"]["city"]
    history += [first, ToolMessage(await get_weather.ainvoke(call["args"]), tool_call_id=call["id"])]
    final = await llm.ainvoke(history)
    assert not final.tool_calls and final.text
    if model != "mock-echo":           # the mock echoes the question; the fakes answer from the tool result
        assert REPORT in final.text
    assert final.usage_metadata["input_tokens"] > 0


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("model", MODELS)
async def test_with_structured_output(gw, model, method):
    llm = chat_model(gw, model).with_structured_output(Weather, method=method)
    out = await llm.ainvoke("The weather in Rome, as structured data.")
    assert isinstance(out, Weather) and out.conditions in ("sunny", "cloudy", "rain")


@pytest.mark.parametrize("model", MODELS)
async def test_reasoning_with_tools(gw, model, anthropic_fake):
    """Reasoning on, tools bound: the reasoning item goes back by id; Claude's thinking with it."""
    llm = chat_model(gw, model, reasoning={"effort": "low", "summary": "auto"}).bind_tools([get_weather])
    history = [HumanMessage("What is the weather in Lisbon? Use the get_weather tool.")]
    first = await llm.ainvoke(history)
    call = first.tool_calls[0]
    history += [first, ToolMessage(REPORT, tool_call_id=call["id"])]
    final = await llm.ainvoke(history)
    assert final.text and not final.tool_calls
    if model == "claude":
        assert anthropic_fake.verified_thinking and REPORT in final.text


@pytest.mark.parametrize("model", MODELS)
async def test_use_previous_response_id(gw, sdk, model):
    """`use_previous_response_id=True`: only the messages after the last AI message are sent,
    with previous_response_id; the gateway rebuilds the conversation from its store."""
    llm = chat_model(gw, model, use_previous_response_id=True).bind_tools([get_weather])
    history = [HumanMessage("What is the weather in Madrid? Use the get_weather tool.")]
    first = await llm.ainvoke(history)
    history += [first, ToolMessage(REPORT, tool_call_id=first.tool_calls[0]["id"])]
    final = await llm.ainvoke(history)
    stored = await sdk.responses.retrieve(final.response_metadata["id"])
    assert stored.previous_response_id == first.response_metadata["id"]
    sent = await sdk.responses.input_items.list(stored.id)
    assert [i.type for i in sent.data] == ["function_call_output"]     # only what followed the AI message
    if model != "mock-echo":
        assert REPORT in final.text
