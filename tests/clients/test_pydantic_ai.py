"""pydantic-ai's `OpenAIResponsesModel` with a tool through the gateway's /v1/responses, plain
(`Agent.run`) and streamed (`Agent.run_stream_events`), on the mock, the fake OpenAI upstream and the
fake Anthropic upstream. No instrumentation is configured (nothing is exported)."""
from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.openai import OpenAIResponsesModel, OpenAIResponsesModelSettings
from pydantic_ai.providers.openai import OpenAIProvider

from tests.clients.conftest import MODELS

REPORT = "weather-report-2a7f: cloudy, 17C"


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


def responses_model(sdk, model: str) -> OpenAIResponsesModel:
    return OpenAIResponsesModel(model, provider=OpenAIProvider(openai_client=sdk))


def weather_agent(sdk, model: str, calls: list[str], **settings) -> Agent:
    agent = Agent(responses_model(sdk, model), instructions="Use get_weather to answer.",
                  model_settings=OpenAIResponsesModelSettings(**settings))

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


@pytest.mark.parametrize("model", MODELS)
async def test_native_structured_output(sdk, model):
    result = await Agent(responses_model(sdk, model), output_type=NativeOutput(Weather)).run("Weather in Paris")
    assert isinstance(result.output, Weather)


@pytest.mark.parametrize("model", MODELS)
async def test_reasoning_with_tool(sdk, model, anthropic_fake):
    """pydantic-ai sends reasoning back by id only when told to (`openai_send_reasoning_ids`: its
    profile of a model name it does not know otherwise replays thinking as text); the gateway
    finds it in the stored response, so Claude's signed thinking reaches the tool-result turn."""
    calls: list[str] = []
    agent = weather_agent(sdk, model, calls, openai_reasoning_effort="low", openai_reasoning_summary="detailed",
                          openai_send_reasoning_ids=True)
    result = await agent.run("What is the weather in Rome?")
    assert calls and "Rome" in calls[0] and result.output
    if model == "claude":
        assert anthropic_fake.verified_thinking and REPORT in result.output
