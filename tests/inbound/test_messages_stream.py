"""OpenAI chat.completion.chunk stream -> Anthropic Messages SSE events.

Every event is validated against the anthropic SDK's RawMessageStreamEvent types, folded with
the SDK's own accumulator, and the encoded bytes are served from a loopback aiohttp server to
the official AsyncAnthropic client's `messages.stream()`.
"""
from __future__ import annotations

import anthropic
import orjson
import pytest
from aiohttp import web
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from proxy.inbound import MessagesStreamTranslator, encode_event, to_anthropic_message

EVENT = TypeAdapter(RawMessageStreamEvent)
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
         "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}}
ANTHROPIC_USAGE = {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 60,
                   "cache_creation_input_tokens": 30}


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}
    return {"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [choice]}


def usage_chunk(usage: dict = USAGE) -> dict:
    return {"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [], "usage": usage}


def tool(index: int, args: str, id: str | None = None, name: str | None = None) -> dict:
    call: dict = {"index": index, "function": {"arguments": args}}
    if id:
        call["id"], call["type"] = id, "function"
    if name:
        call["function"]["name"] = name
    return call


def run(chunks: list[dict], *, end: bool = True, **kwargs) -> list[tuple[str, dict]]:
    translator = MessagesStreamTranslator("smart", **kwargs)
    events = [e for c in chunks for e in translator.feed(c)]
    if end:
        events += translator.finish()
        assert translator.finish() == []
    return events


def check(events: list[tuple[str, dict]]) -> anthropic.types.Message:
    """Validate every event, the block protocol, and fold them with the SDK accumulator."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    open_blocks: set[int] = set()
    started = 0
    for name, data in events:
        assert name == data["type"]
        event = EVENT.validate_python(data)
        if name == "content_block_start":
            assert data["index"] == started and not open_blocks, "blocks start in order, one at a time"
            started += 1
            open_blocks.add(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert not open_blocks
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    return anthropic.types.Message.model_validate(snapshot.model_dump())


def test_text_stream_exact_events():
    events = run([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                  chunk(finish="stop"), usage_chunk()], input_tokens=7)
    assert events == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_xyz", "type": "message", "role": "assistant", "content": [], "model": "smart",
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 0, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hel"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "lo"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": ANTHROPIC_USAGE}),
        ("message_stop", {"type": "message_stop"}),
    ]
    message = check(events)
    assert message.content[0].text == "Hello" and message.usage.input_tokens == 10


def test_message_delta_waits_for_the_usage_chunk():
    translator = MessagesStreamTranslator("smart")
    translator.feed(chunk({"role": "assistant", "content": "hi"}))
    at_finish = translator.feed(chunk(finish="length"))
    assert [n for n, _ in at_finish] == ["content_block_stop"]
    at_usage = translator.feed(usage_chunk())
    assert [n for n, _ in at_usage] == ["message_delta", "message_stop"]
    assert at_usage[0][1]["delta"]["stop_reason"] == "max_tokens"
    assert at_usage[0][1]["usage"] == ANTHROPIC_USAGE
    assert translator.finish() == [] and translator.feed(chunk({"content": "late"})) == []


def test_finish_without_usage_chunk_still_ends_the_message():
    events = run([chunk({"content": "hi"}), chunk(finish="stop")])
    assert [n for n, _ in events][-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["usage"]["output_tokens"] == 0
    check(events)


def test_usage_inside_the_finish_chunk_is_used():
    last = chunk(finish="stop")
    last["usage"] = USAGE
    events = run([chunk({"content": "hi"}), last])
    assert events[-2][1]["usage"] == ANTHROPIC_USAGE


def test_thinking_with_signature_then_text():
    events = run([
        chunk({"role": "assistant", "reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "sig-abc"}]}),
        chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "opaque"}]}),
        chunk({"content": "Answer."}),
        chunk(finish="stop"), usage_chunk()])
    kinds = [(n, d.get("content_block", d.get("delta", {})).get("type")) for n, d in events
             if n.startswith("content_block") and n != "content_block_stop"]
    assert kinds == [("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
                     ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
                     ("content_block_start", "redacted_thinking"), ("content_block_start", "text"),
                     ("content_block_delta", "text_delta")]
    message = check(events)
    assert [b.type for b in message.content] == ["thinking", "redacted_thinking", "text"]
    assert message.content[0].thinking == "Let me think." and message.content[0].signature == "sig-abc"
    assert message.content[1].data == "opaque"


def test_reasoning_details_text_without_reasoning_content_is_not_lost_nor_doubled():
    events = run([chunk({"reasoning_content": "a", "reasoning_details": [{"type": "reasoning.text", "text": "a"}]}),
                  chunk({"reasoning_details": [{"type": "reasoning.text", "text": "b", "signature": "s"}]}),
                  chunk(finish="stop")])
    message = check(events)
    assert message.content[0].thinking == "ab" and message.content[0].signature == "s"


def test_separate_signed_thinking_blocks_keep_their_exact_text():
    """Shapes the gateway's Anthropic provider streams: reasoning_content for display (blocks
    separated by a blank line) plus reasoning.text details with the exact text and an `index`."""
    def text(i, t):
        return {"type": "reasoning.text", "text": t, "format": "anthropic-claude-v1", "index": i}

    def sig(i, s):
        return {"type": "reasoning.text", "signature": s, "format": "anthropic-claude-v1", "index": i}

    events = run([
        chunk({"role": "assistant", "reasoning_content": "first", "reasoning_details": [text(0, "first")]}),
        chunk({"reasoning_details": [sig(0, "sig-0")]}),
        chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "enc", "index": 1}]}),
        chunk({"reasoning_content": "\n\nsecond", "reasoning_details": [text(2, "second")]}),
        chunk({"reasoning_details": [sig(2, "sig-2")]}),
        chunk({"content": "done"}), chunk(finish="stop")])
    message = check(events)
    assert [(b.type, getattr(b, "thinking", None), getattr(b, "signature", None)) for b in message.content] == [
        ("thinking", "first", "sig-0"), ("redacted_thinking", None, None), ("thinking", "second", "sig-2"),
        ("text", None, None)]


def test_consecutive_thinking_blocks_split_on_detail_index():
    events = run([chunk({"reasoning_details": [{"type": "reasoning.text", "text": "a", "signature": "s0",
                                                "index": 0}]}),
                  chunk({"reasoning_details": [{"type": "reasoning.text", "text": "b", "signature": "s1",
                                                "index": 1}]}),
                  chunk(finish="stop")])
    message = check(events)
    assert [(b.thinking, b.signature) for b in message.content] == [("a", "s0"), ("b", "s1")]


def test_parallel_tool_calls_become_separate_blocks():
    events = run([
        chunk({"role": "assistant", "content": "Checking both."}),
        chunk({"tool_calls": [tool(0, "", id="call_a", name="get_weather")]}),
        chunk({"tool_calls": [tool(0, '{"city": ')]}),
        chunk({"tool_calls": [tool(0, '"Paris"}')]}),
        chunk({"tool_calls": [tool(1, '{"city": "Rome"}', id="call_b", name="get_weather")]}),
        chunk(finish="tool_calls"), usage_chunk()])
    message = check(events)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert (message.content[1].id, message.content[1].name, message.content[1].input) == \
        ("call_a", "get_weather", {"city": "Paris"})
    assert message.content[2].input == {"city": "Rome"} and message.content[2].id == "call_b"
    assert message.stop_reason == "tool_use"
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}


def test_tool_call_whose_name_arrives_late_is_held():
    events = run([chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"arguments": '{"q"'}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"name": "search", "arguments": ': "x"}'}}]}),
                  chunk(finish="tool_calls")])
    message = check(events)
    assert (message.content[0].name, message.content[0].input) == ("search", {"q": "x"})


def test_text_after_tools_and_stop_sequence():
    events = run([chunk({"tool_calls": [tool(0, "{}", id="c1", name="f")]}), chunk({"content": "after"}),
                  chunk(finish="stop", stop_reason="END")], stop_sequences=["END"])
    message = check(events)
    assert [b.type for b in message.content] == ["tool_use", "text"]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_upstream_saying_stop_after_tool_calls_is_tool_use():
    message = check(run([chunk({"tool_calls": [tool(0, "{}", id="c1", name="f")]}), chunk(finish="stop")]))
    assert message.stop_reason == "tool_use"


def test_finish_closes_a_truncated_stream():
    events = run([chunk({"content": "partial"})])
    assert [n for n, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    check(events)


def test_empty_upstream_still_yields_a_whole_message():
    events = run([])
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert check(events).content == []


def test_error_event_ends_the_stream():
    translator = MessagesStreamTranslator("smart")
    translator.feed(chunk({"content": "hi"}))
    name, data = translator.error_event("upstream timed out", "overloaded_error")
    assert name == "error"
    ErrorResponse.model_validate(data)
    assert data == {"type": "error", "error": {"type": "overloaded_error", "message": "upstream timed out"}}
    assert translator.feed(chunk({"content": "more"})) == [] and translator.finish() == []


def test_error_chunk_from_upstream_becomes_an_error_event():
    events = run([chunk({"content": "hi"}), {"error": {"message": "boom", "type": "server_error"}}], end=False)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    limited = run([{"error": {"message": "slow down", "type": "rate_limit_error"}}], end=False)
    assert limited == [("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})]


def test_stream_and_non_stream_translations_agree():
    message = {"role": "assistant", "content": "Let me check.", "reasoning_content": "hmm",
               "reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "sig"}],
               "tool_calls": [{"id": "call_1", "type": "function",
                               "function": {"name": "f", "arguments": '{"a": [1, 2]}'}}]}
    whole = to_anthropic_message({"id": "chatcmpl-xyz", "model": "up", "usage": USAGE, "choices": [
        {"index": 0, "message": message, "finish_reason": "tool_calls"}]}, model="smart")
    streamed = check(run([
        chunk({"role": "assistant", "reasoning_content": "hmm"}),
        chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "sig"}]}),
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [tool(0, '{"a": [1, ', id="call_1", name="f")]}),
        chunk({"tool_calls": [tool(0, "2]}")]}),
        chunk(finish="tool_calls"), usage_chunk()]))
    assert streamed.model_dump(exclude_none=True) == \
        anthropic.types.Message.model_validate(whole).model_dump(exclude_none=True)


# -- through the official SDK ---------------------------------------------------------------

@pytest.fixture
async def sse_client(aiohttp_server):
    """An AsyncAnthropic client whose server streams whatever `body` is set to."""
    state: dict = {"body": b""}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=state["body"], content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    server = await aiohttp_server(app)
    client = anthropic.AsyncAnthropic(api_key="k", base_url=str(server.make_url("")), max_retries=0)
    yield client, state
    await client.close()


async def test_official_sdk_stream_accumulates_our_events(sse_client):
    client, state = sse_client
    events = run([chunk({"role": "assistant", "reasoning_content": "plan"}),
                  chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "sig"}]}),
                  chunk({"content": "Calling."}),
                  chunk({"tool_calls": [tool(0, '{"city": "Oslo"}', id="call_9", name="get_weather")]}),
                  chunk(finish="tool_calls"), usage_chunk()])
    state["body"] = b"".join(encode_event(n, d) for n, d in events)
    async with client.messages.stream(model="smart", max_tokens=100,
                                      messages=[{"role": "user", "content": "weather?"}]) as stream:
        text = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert text == ["Calling."]
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == {"city": "Oslo"} and final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 10 and final.usage.cache_read_input_tokens == 60


async def test_official_sdk_raises_on_our_error_event(sse_client):
    client, state = sse_client
    translator = MessagesStreamTranslator("smart")
    events = translator.feed(chunk({"content": "hi"}))
    events.append(translator.error_event("upstream failed", "api_error"))
    state["body"] = b"".join(encode_event(n, d) for n, d in events)
    with pytest.raises(anthropic.APIStatusError, match="upstream failed"):
        async with client.messages.stream(model="smart", max_tokens=10,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            await stream.get_final_message()


def test_encode_event_frames_sse():
    assert encode_event("message_stop", {"type": "message_stop"}) == \
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert orjson.loads(encode_event("ping", {"type": "ping"}).split(b"data: ")[1]) == {"type": "ping"}
