"""pydantic-ai's `OpenAIResponsesModel` with a tool through the gateway's /v1/responses, plain
(`Agent.run`) and streamed (`Agent.run_stream_events`), on the mock, the fake OpenAI upstream and the
fake Anthropic upstream. No instrumentation is configured (nothing is exported)."""
from __future__ import annotations

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.clients.conftest import MODELS

REPORT = "weather-report-2a7f: cloudy, 17C"


def weather_agent(sdk, model: str, calls: list[str]) -> Agent:
    agent = Agent(OpenAIResponsesModel(model, provider=OpenAIProvider(openai_client=sdk)),
                  instructions="Use get_weather to answer.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return REPORT

    return agent


def tool_returns(messages) -> list[str]:
    return [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]


@pytest.mark.parametrize("model", MODELS)
async def test_agent_run_with_tool(sdk, model):
    calls: list[str] = []
    result = await weather_agent(sdk, model, calls).run("What is the weather in Berlin?")
    assert calls and "Berlin" in calls[0]
    assert tool_returns(result.all_messages()) == [REPORT]
    assert isinstance(result.output, str) and result.output
    if model != "mock-echo":           # the mock echoes the question; the fakes answer from the tool result
        assert REPORT in result.output
    assert result.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
async def test_agent_run_stream_events_with_tool(sdk, model):
    calls: list[str] = []
    async with weather_agent(sdk, model, calls).run_stream_events("What is the weather in Madrid?") as stream:
        events = [event async for event in stream]
    kinds = {type(e).__name__ for e in events}
    assert {"PartDeltaEvent", "FunctionToolCallEvent", "FunctionToolResultEvent"} <= kinds
    assert calls and "Madrid" in calls[0]
    text = events[-1].result.output
    assert isinstance(text, str) and text
    if model != "mock-echo":
        assert REPORT in text
