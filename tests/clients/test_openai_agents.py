"""The openai-agents SDK (`OpenAIResponsesModel`) running an agent with a function tool through
the gateway's /v1/responses, plain (`Runner.run`) and streamed (`Runner.run_streamed`), on the
mock, the fake OpenAI upstream and the fake Anthropic upstream. Tracing export is disabled."""
from __future__ import annotations

from typing import Literal

import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai.types.shared import Reasoning
from pydantic import BaseModel

from tests.clients.conftest import MODELS

set_tracing_disabled(True)
REPORT = "weather-report-5c1e: sunny, 21C"


def weather_agent(sdk, model: str, calls: list[str], **settings) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return REPORT

    return Agent(name="forecaster", instructions="Use get_weather to answer.", tools=[get_weather],
                 model=OpenAIResponsesModel(model=model, openai_client=sdk), model_settings=ModelSettings(**settings))


async def assert_tool_output_reached_model(sdk, response_id: str) -> None:
    """The gateway stored the last turn: its input items hold the tool's output for the model."""
    items = await sdk.responses.input_items.list(response_id, order="asc")
    outputs = [i for i in items.data if i.type == "function_call_output"]
    assert outputs and REPORT in str(outputs[-1].output)


@pytest.mark.parametrize("model", MODELS)
async def test_runner_run_with_function_tool(sdk, model):
    calls: list[str] = []
    result = await Runner.run(weather_agent(sdk, model, calls), "What is the weather in Paris?")
    assert calls and "Paris" in calls[0]
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds.index("tool_call_output_item") == kinds.index("tool_call_item") + 1   # Claude may say a word first
    assert kinds[-1] == "message_output_item"
    await assert_tool_output_reached_model(sdk, result.last_response_id)
    if model != "mock-echo":          # the mock echoes the question; the fakes answer from the tool result
        assert REPORT in result.final_output


@pytest.mark.parametrize("model", MODELS)
async def test_runner_run_streamed_with_function_tool(sdk, model):
    calls: list[str] = []
    result = Runner.run_streamed(weather_agent(sdk, model, calls), "What is the weather in Tokyo?")
    raw = [e.data.type async for e in result.stream_events() if e.type == "raw_response_event"]
    assert calls and "Tokyo" in calls[0]
    assert raw.count("response.completed") == 2 and "response.function_call_arguments.delta" in raw
    assert "response.output_text.delta" in raw and result.final_output
    await assert_tool_output_reached_model(sdk, result.last_response_id)
    if model != "mock-echo":
        assert REPORT in result.final_output


@pytest.mark.parametrize("model", MODELS)
async def test_reasoning_with_tools(sdk, model, anthropic_fake):
    """The SDK sends reasoning items back by id (no encrypted_content): Claude's thinking must
    still reach the tool-result turn (the fake checks the signature)."""
    calls: list[str] = []
    agent = weather_agent(sdk, model, calls, reasoning=Reasoning(effort="low", summary="auto"))
    result = await Runner.run(agent, "What is the weather in Lisbon?")
    assert calls and "Lisbon" in calls[0] and result.final_output
    if model == "claude":
        assert "reasoning_item" in [i.type for i in result.new_items]
        assert anthropic_fake.verified_thinking
    follow = await Runner.run(agent, "And tomorrow?", previous_response_id=result.last_response_id)
    assert follow.final_output


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rain"]


@pytest.mark.parametrize("model", MODELS)
async def test_structured_output_type(sdk, model):
    agent = Agent(name="forecaster", instructions="Answer with the weather.", output_type=Weather,
                  model=OpenAIResponsesModel(model=model, openai_client=sdk))
    result = await Runner.run(agent, "The weather in Berlin")
    assert isinstance(result.final_output, Weather)
