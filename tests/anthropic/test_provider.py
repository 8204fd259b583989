"""AnthropicProvider.chat against a fake Anthropic upstream: a real aiohttp server on 127.0.0.1
that checks headers and the API's request rules, and replays the recorded fixtures."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.config import ModelRoute, Pricing, ProviderConfig, Target, Timeouts
from proxy.context import JSONReply, RequestContext, RouteMatch, StreamReply
from proxy.errors import InvalidRequest, ProviderError, RateLimited
from proxy.providers.anthropic import AnthropicProvider

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
_spec = importlib.util.spec_from_file_location("anthropic_api_rules", FIXTURES / "api_rules.py")
api_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_rules)

API_KEY = "sk-ant-test-0123456789"
PRICING = Pricing(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


def error_json(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def fake_anthropic(state: dict) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state["requests"].append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != API_KEY:
            return web.json_response(error_json("authentication_error", "invalid x-api-key"), status=401)
        if request.headers.get("anthropic-version") != "2023-06-01":
            return web.json_response(error_json("invalid_request_error", "anthropic-version missing"), status=400)
        try:
            api_rules.check_request(body)
        except AssertionError as exc:
            return web.json_response(error_json("invalid_request_error", str(exc)), status=400)
        reply = state["reply"]
        await asyncio.sleep(reply.get("sleep", 0))
        if "sse" not in reply or reply.get("status", 200) != 200:
            payload = (FIXTURES / reply["json"]).read_bytes()
            return web.Response(body=payload, status=reply.get("status", 200), headers=reply.get("headers"),
                                content_type="application/json")
        assert body.get("stream") is True
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        data = (FIXTURES / reply["sse"]).read_bytes()
        cut = reply.get("abort_at")
        try:
            for i in range(0, len(data) if cut is None else cut, 37):    # events split across reads
                await resp.write(data[i:min(i + 37, cut or len(data))])
                await asyncio.sleep(reply.get("delay", 0))
            if reply.get("stall"):
                await asyncio.sleep(reply["stall"])
        except (ConnectionResetError, asyncio.CancelledError):
            state["disconnected"] = True
            raise
        if cut is not None:
            request.transport.close()       # the upstream connection breaks mid-stream
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture
async def upstream(aiohttp_server):
    state: dict = {"requests": [], "reply": {"json": "text.json"}, "disconnected": False}
    server = await aiohttp_server(fake_anthropic(state), host="127.0.0.1")
    state["url"] = str(server.make_url("")).rstrip("/")
    return state


def make_provider(url: str, *, key: str = API_KEY, headers: dict | None = None, **timeouts) -> AnthropicProvider:
    limits = {"connect": 2.0, "first_byte": 2.0, "idle": 2.0, "total": 10.0, **timeouts}
    return AnthropicProvider(ProviderConfig(name="anthropic", type="anthropic", base_url=url, api_key=key,
                                            timeouts=Timeouts(**limits), headers=headers or {}))


@contextlib.asynccontextmanager
async def running(p: AnthropicProvider):
    """The provider started, and closed again on the way out."""
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def provider(upstream):
    async with running(make_provider(upstream["url"])) as p:
        yield p


def make_ctx(*, stream: bool = False, include_usage: bool = False, effort: str | None = None,
             **route) -> RequestContext:
    ctx = RequestContext(request=None, gateway=None, request_id="req-test", endpoint="chat")
    ctx.stream, ctx.include_usage = stream, include_usage
    model_route = ModelRoute(name="claude", targets=(Target(provider="anthropic"),), pricing=PRICING, **route)
    ctx.match = RouteMatch(route=model_route, public_model="claude", reasoning_effort=effort)
    return ctx


def request(content="What is the capital of France?", **extra) -> dict:
    return {"model": "claude-sonnet-4-20250514", "messages": [{"role": "user", "content": content}], **extra}


async def read_stream(reply: StreamReply) -> tuple[list[dict], list[bytes]]:
    raw = [event async for event in reply.events]
    chunks = []
    for event in raw:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        if event != b"data: [DONE]\n\n":
            chunk = json.loads(event[6:])
            ChatCompletionChunk.model_validate(chunk)
            chunks.append(chunk)
    return chunks, raw


# --- non-streaming ---------------------------------------------------------------------------

async def test_completion(upstream, provider):
    ctx = make_ctx()
    reply = await provider.chat(ctx, request(temperature=0.2, stop=["\n\n"], user="u-1"))
    assert isinstance(reply, JSONReply) and reply.status == 200
    cc = ChatCompletion.model_validate(reply.body)
    assert cc.choices[0].message.content == "Hello! The capital of France is Paris."
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (21, 12)
    assert reply.body["usage"]["cost"] == pytest.approx((21 * 3 + 12 * 15) / 1e6) == ctx.cost
    sent = upstream["requests"][0]
    assert sent["headers"]["x-api-key"] == API_KEY and sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in sent["headers"] and "Authorization" not in sent["headers"]
    assert sent["body"]["stream"] is False and sent["body"]["max_tokens"] == 64000
    assert sent["body"]["metadata"] == {"user_id": "u-1"}


async def test_structured_output_via_forced_tool(upstream, provider):
    upstream["reply"] = {"json": "json_tool.json"}
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "date": {"type": "string"},
                                               "participants": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "date", "participants"], "additionalProperties": False}
    body = {**request("Alice and Bob are going to a science fair on Friday."), "model": "claude-3-5-haiku-20241022",
            "response_format": {"type": "json_schema", "json_schema": {"name": "CalendarEvent", "schema": schema,
                                                                       "strict": True}}}
    reply = await provider.chat(make_ctx(), body)
    cc = ChatCompletion.model_validate(reply.body)
    assert json.loads(cc.choices[0].message.content)["participants"] == ["Alice", "Bob"]
    assert cc.choices[0].finish_reason == "stop"
    assert upstream["requests"][0]["body"]["tool_choice"]["name"] == "CalendarEvent"


async def test_route_options_reach_the_upstream(upstream, provider):
    long_prompt = [{"role": "system", "content": "Policy. " * 800}, {"role": "user", "content": "Hi"}]
    await provider.chat(make_ctx(effort="medium", auto_cache=True, max_tokens_default=4000),
                        {"model": "claude-sonnet-4-20250514", "messages": long_prompt})
    sent = upstream["requests"][0]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert sent["max_tokens"] == 8192 + 4000
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_untranslatable_input_never_reaches_the_upstream(upstream, provider):
    bad = request([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(make_ctx(), bad)
    assert info.value.param == "messages[0].content[0]" and upstream["requests"] == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status,name,expected,code", [
    (529, "error_overloaded.json", ProviderError, 502), (500, "error_overloaded.json", ProviderError, 502),
    (400, "error_invalid.json", InvalidRequest, 400), (429, "error_rate_limit.json", RateLimited, 429)])
async def test_upstream_errors_before_the_first_byte(upstream, provider, stream, status, name, expected, code):
    upstream["reply"] = {"status": status, "json": name, "headers": {"retry-after": "7"}}
    with pytest.raises(expected) as info:
        await provider.chat(make_ctx(stream=stream), request(stream=stream))
    assert info.value.status == code and info.value.upstream_status == status
    if status == 429:
        assert info.value.headers == {"Retry-After": "7"}


async def test_wrong_provider_key_is_502_not_401(upstream):
    async with running(make_provider(upstream["url"], key="sk-ant-wrong-key-000000")) as p:
        with pytest.raises(ProviderError) as info:
            await p.chat(make_ctx(), request())
    assert info.value.status == 502 and info.value.upstream_status == 401
    assert "sk-ant-wrong" not in info.value.message


async def test_configured_headers_are_sent(upstream):
    async with running(make_provider(upstream["url"], headers={"anthropic-beta": "context-1m-2025-08-07"})) as p:
        await p.chat(make_ctx(), request())
    assert upstream["requests"][0]["headers"]["anthropic-beta"] == "context-1m-2025-08-07"


async def test_unreachable_upstream_is_502():
    async with running(make_provider("http://127.0.0.1:9")) as p:      # discard port: connection refused
        with pytest.raises(ProviderError) as info:
            await p.chat(make_ctx(), request())
    assert info.value.status == 502 and info.value.code == "upstream_unreachable"


async def test_non_streaming_timeout(upstream):
    upstream["reply"] = {"json": "text.json", "sleep": 1.0}
    async with running(make_provider(upstream["url"], total=0.3)) as p:
        with pytest.raises(ProviderError) as info:
            await p.chat(make_ctx(), request())
    assert info.value.code == "upstream_timeout"


# --- streaming ---------------------------------------------------------------------------

async def test_stream_with_usage_chunk(upstream, provider):
    upstream["reply"] = {"sse": "cache_usage.sse", "delay": 0.001}
    ctx = make_ctx(stream=True, include_usage=True)
    reply = await provider.chat(ctx, request(stream=True, stream_options={"include_usage": True}))
    assert isinstance(reply, StreamReply)
    chunks, raw = await read_stream(reply)
    assert raw[-1] == b"data: [DONE]\n\n"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Based on the document, the contract term is 24 months."
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 3598
    assert usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 2048, "cache_write_tokens": 1536}
    expected_cost = (14 * 3 + 2048 * 0.3 + 1536 * 3.75 + 17 * 15) / 1e6
    assert usage_chunk["usage"]["cost"] == pytest.approx(expected_cost)
    assert ctx.usage.completion_tokens == 17 and ctx.cost == pytest.approx(expected_cost)
    assert upstream["requests"][0]["body"]["stream"] is True


async def test_stream_without_usage_chunk_still_learns_usage(upstream, provider):
    upstream["reply"] = {"sse": "text.sse"}
    ctx = make_ctx(stream=True)
    chunks, _ = await read_stream(await provider.chat(ctx, request(stream=True)))
    assert all(c["choices"] for c in chunks) and "usage" not in chunks[-1]
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens, ctx.usage.known) == (21, 12, True)


async def test_stream_parallel_tool_calls(upstream, provider):
    upstream["reply"] = {"sse": "tool_parallel.sse"}
    chunks, _ = await read_stream(await provider.chat(make_ctx(stream=True), request(stream=True, tools=[WEATHER])))
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            slot = calls.setdefault(tc["index"], {"id": tc.get("id"), "name": tc["function"].get("name"), "args": ""})
            slot["args"] += tc["function"].get("arguments") or ""
    assert [(v["id"], json.loads(v["args"])) for _, v in sorted(calls.items())] == [
        ("toolu_01A09q90qw90lq917835lq9", {"location": "Paris, France"}),
        ("toolu_01B19q90qw90lq917835lr0", {"location": "Tokyo, Japan"}),
        ("toolu_01C29q90qw90lq917835ls1", {"timezone": "Asia/Tokyo"})]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_streamed_thinking_multi_turn_round_trip(upstream, provider):
    """Turn 1 streams thinking + a tool call; turn 2 sends the accumulated message back and the
    upstream receives the thinking block with its signature (the API's rule for tool use)."""
    upstream["reply"] = {"sse": "thinking_tool.sse"}
    body = {**request("Weather in Paris?", stream=True, tools=[WEATHER]), "model": "claude-sonnet-4-5-20250929"}
    chunks, _ = await read_stream(await provider.chat(make_ctx(stream=True, effort="low"), body))
    message: dict = {"role": "assistant", "content": "", "reasoning_details": [], "tool_calls": []}
    for c in chunks:
        delta = c["choices"][0]["delta"]
        message["content"] += delta.get("content") or ""
        message["reasoning_details"] += delta.get("reasoning_details") or []
        for tc in delta.get("tool_calls") or []:
            if "id" in tc:
                message["tool_calls"].append({"id": tc["id"], "type": "function",
                                              "function": {"name": tc["function"]["name"], "arguments": ""}})
            message["tool_calls"][tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
    upstream["reply"] = {"json": "text.json"}
    turn2 = {**body, "stream": False, "messages": body["messages"] + [
        message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C and cloudy"}]}
    await provider.chat(make_ctx(effort="low"), turn2)
    sent = upstream["requests"][1]["body"]["messages"][1]["content"]
    original = json.loads((FIXTURES / "thinking_tool.json").read_text())["content"]
    assert sent == original


async def test_error_event_right_after_200_is_a_real_status(upstream, provider):
    upstream["reply"] = {"sse": "error_first.sse"}
    with pytest.raises(ProviderError) as info:
        await provider.chat(make_ctx(stream=True), request(stream=True))
    assert info.value.status == 502 and info.value.upstream_status == 529


@pytest.mark.parametrize("reply,fragment", [
    ({"sse": "error_midstream.sse"}, "Overloaded"),
    ({"sse": "truncated.sse"}, "before message_stop"),
    ({"sse": "text.sse", "abort_at": 700}, "broke off the stream"),
])
async def test_broken_streams_raise_from_the_iterator(upstream, provider, reply, fragment):
    upstream["reply"] = reply
    stream = await provider.chat(make_ctx(stream=True), request(stream=True))
    received = []
    with pytest.raises(ProviderError) as info:
        async for event in stream.events:
            received.append(event)
    assert fragment in info.value.message and info.value.status == 502
    assert received and b"data: [DONE]\n\n" not in received


async def test_first_byte_timeout(upstream):
    upstream["reply"] = {"sse": "text.sse", "sleep": 2.0}
    started = time.monotonic()
    async with running(make_provider(upstream["url"], first_byte=0.3)) as p:
        with pytest.raises(ProviderError) as info:
            await p.chat(make_ctx(stream=True), request(stream=True))
    assert info.value.code == "upstream_timeout" and time.monotonic() - started < 1.5


async def test_idle_timeout_mid_stream(upstream):
    upstream["reply"] = {"sse": "text.sse", "abort_at": 700, "stall": 3.0}
    async with running(make_provider(upstream["url"], idle=0.3)) as p:
        stream = await p.chat(make_ctx(stream=True), request(stream=True))
        with pytest.raises(ProviderError) as info:
            async for _ in stream.events:
                pass
    assert info.value.code == "upstream_broken"      # the answer broke off (stalled past `idle`)


async def test_client_disconnect_cancels_the_upstream(upstream, provider):
    upstream["reply"] = {"sse": "text.sse", "delay": 0.05}
    stream = await provider.chat(make_ctx(stream=True), request(stream=True))
    first = await anext(stream.events)
    assert b'"role":"assistant"' in first
    await stream.events.aclose()          # what the writer does when the client goes away
    for _ in range(40):
        if upstream["disconnected"]:
            break
        await asyncio.sleep(0.05)
    assert upstream["disconnected"]


async def test_malformed_upstream_event_is_a_provider_error(upstream, provider, tmp_path, monkeypatch):
    broken = (FIXTURES / "text.sse").read_text().replace('"delta":{"type":"text_delta","text":"Hello"}',
                                                        '"delta":["not", "an", "object"]', 1)
    monkeypatch.setattr(sys.modules[__name__], "FIXTURES", tmp_path)
    (tmp_path / "broken.sse").write_text(broken)
    upstream["reply"] = {"sse": "broken.sse"}
    stream = await provider.chat(make_ctx(stream=True), request(stream=True))
    with pytest.raises(ProviderError) as info:
        async for _ in stream.events:
            pass
    assert info.value.code == "upstream_malformed"
