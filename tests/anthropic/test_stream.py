"""Anthropic SSE transcripts -> OpenAI chunks, one event at a time. Every chunk is parsed with the
official `openai` SDK and the accumulated stream must equal the non-streamed translation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from proxy.anthropic.messages import reasoning_blocks
from proxy.anthropic.response import to_openai
from proxy.anthropic.stream import StreamTranslator
from proxy.errors import ProviderError
from proxy.sse import parse_event

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
EVENT = TypeAdapter(RawMessageStreamEvent)


def events(name: str) -> list[tuple[str, dict]]:
    out = []
    for raw in (FIXTURES / name).read_bytes().split(b"\n\n"):
        if not raw.strip():
            continue
        event = parse_event(raw + b"\n\n")
        data = json.loads(event.data)
        assert data["type"] == event.event
        if data["type"] not in ("ping", "error"):
            EVENT.validate_python(data)      # the transcript has the real API's event shapes
        out.append((event.event, data))
    return out


def run(name: str, **kw) -> tuple[StreamTranslator, list[dict]]:
    translator = StreamTranslator(created=1_700_000_000, **kw)
    chunks = []
    for kind, data in events(name):
        chunks.extend(translator.feed(kind, data))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return translator, chunks


def accumulate(chunks: list[dict]) -> dict:
    """What an OpenAI client rebuilds from the deltas."""
    msg = {"content": "", "reasoning_content": "", "reasoning_details": [], "tool_calls": {}, "finish_reason": None}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            msg["content"] += delta.get("content") or ""
            msg["reasoning_content"] += delta.get("reasoning_content") or ""
            msg["reasoning_details"] += delta.get("reasoning_details") or []
            for call in delta.get("tool_calls") or []:
                slot = msg["tool_calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                slot["id"] = slot["id"] or call.get("id")
                slot["name"] = slot["name"] or call.get("function", {}).get("name")
                slot["arguments"] += call.get("function", {}).get("arguments") or ""
            msg["finish_reason"] = choice["finish_reason"] or msg["finish_reason"]
    return msg


@pytest.mark.parametrize("name", ["text", "tool_single", "tool_parallel", "thinking_tool", "redacted_thinking",
                                  "cache_usage", "max_tokens"])
def test_stream_equals_the_non_streamed_translation(name):
    translator, chunks = run(f"{name}.sse")
    expected = to_openai(json.loads((FIXTURES / f"{name}.json").read_text()))
    message, finish = expected["choices"][0]["message"], expected["choices"][0]["finish_reason"]
    got = accumulate(chunks)
    assert got["content"] == (message["content"] or "")
    assert got["finish_reason"] == finish == translator.finish_reason
    calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
             for c in message.get("tool_calls") or []]
    assert [{**c, "arguments": json.loads(c["arguments"])} for _, c in sorted(got["tool_calls"].items())] == calls
    assert got["reasoning_content"] == (message.get("reasoning_content") or "")
    assert translator.usage.to_openai() == expected["usage"]
    assert translator.done and translator.id == expected["id"] and chunks[0]["model"] == expected["model"]


def test_first_chunk_carries_the_role():
    _, chunks = run("text.sse")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}


def test_each_event_is_translated_at_once():
    translator = StreamTranslator()
    feed = iter(events("tool_single.sse"))
    assert len(translator.feed(*next(feed))) == 1               # message_start -> role chunk
    produced = [len(translator.feed(kind, data)) for kind, data in feed]
    kinds = [kind for kind, _ in events("tool_single.sse")[1:]]
    # every non-empty text or argument delta gives exactly one chunk, right away
    for kind, data, n in zip(kinds, [d for _, d in events("tool_single.sse")[1:]], produced):
        if kind == "content_block_delta":
            fragment = data["delta"].get("text") or data["delta"].get("partial_json")
            assert n == (1 if fragment else 0)


def test_tool_call_deltas_have_stable_indexes():
    _, chunks = run("tool_parallel.sse")
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    firsts = [tc for tc in calls if "id" in tc]
    assert [(tc["index"], tc["id"], tc["function"]["name"], tc["function"]["arguments"]) for tc in firsts] == [
        (0, "toolu_01A09q90qw90lq917835lq9", "get_weather", ""),
        (1, "toolu_01B19q90qw90lq917835lr0", "get_weather", ""),
        (2, "toolu_01C29q90qw90lq917835ls1", "get_time", "")]
    assert all(set(tc) == {"index", "function"} for tc in calls if "id" not in tc)
    assert [tc["index"] for tc in calls] == sorted(tc["index"] for tc in calls)


def test_tool_index_counts_tool_blocks_only():
    _, chunks = run("tool_single.sse")      # text is content block 0, the tool is block 1
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert {tc["index"] for tc in calls} == {0}


def test_streamed_reasoning_details_round_trip_to_the_same_thinking_blocks():
    for name in ("thinking_tool", "redacted_thinking"):
        _, chunks = run(f"{name}.sse")
        details = accumulate(chunks)["reasoning_details"]   # a client that just appends every delta
        original = json.loads((FIXTURES / f"{name}.json").read_text())["content"]
        assert reasoning_blocks(details, "x") == [b for b in original
                                                  if b["type"] in ("thinking", "redacted_thinking")]


def test_signature_and_redacted_deltas():
    _, chunks = run("redacted_thinking.sse")
    details = [d for c in chunks for d in c["choices"][0]["delta"].get("reasoning_details") or []]
    signed = [d for d in details if "signature" in d]
    assert len(signed) == 1 and signed[0]["index"] == 0 and signed[0]["type"] == "reasoning.text"
    [encrypted] = [d for d in details if d["type"] == "reasoning.encrypted"]
    assert encrypted["index"] == 1 and encrypted["data"].startswith("EmwKAhgBEgy3va3p")


def test_separate_thinking_blocks_are_separated_in_reasoning_content():
    t = StreamTranslator()
    t.feed("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {}}})
    for i, text in ((0, "First."), (2, "Second.")):
        t.feed("content_block_start", {"index": i, "content_block": {"type": "thinking", "thinking": ""}})
        [chunk] = t.feed("content_block_delta", {"index": i, "delta": {"type": "thinking_delta", "thinking": text}})
        assert chunk["choices"][0]["delta"]["reasoning_details"][0]["index"] == i // 2
    assert chunk["choices"][0]["delta"]["reasoning_content"] == "\n\nSecond."


def test_cache_usage_is_not_double_counted():
    translator, _ = run("cache_usage.sse")
    u = translator.usage
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.completion_tokens) == (3598, 2048, 1536, 17)


def test_usage_is_live_and_authoritative_from_message_delta():
    translator = StreamTranslator()
    usage = translator.usage
    kinds = events("thinking_tool.sse")
    translator.feed(*kinds[0])
    assert (usage.prompt_tokens, usage.completion_tokens) == (512, 4)
    for kind, data in kinds[1:]:
        translator.feed(kind, data)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (512, 201, 120)
    assert translator.usage is usage


def test_forced_json_tool_streams_as_content():
    translator, chunks = run("json_tool.sse", json_tool="CalendarEvent")
    got = accumulate(chunks)
    assert got["tool_calls"] == {} and got["finish_reason"] == "stop"
    assert json.loads(got["content"]) == {"name": "Science fair", "date": "Friday", "participants": ["Alice", "Bob"]}


def test_mid_stream_error_raises_after_the_partial_answer():
    translator = StreamTranslator(provider="claude")
    chunks = []
    with pytest.raises(ProviderError) as info:
        for kind, data in events("error_midstream.sse"):
            chunks.extend(translator.feed(kind, data))
    assert accumulate(chunks)["content"] == "Partial answer"
    assert info.value.status == 502 and info.value.upstream_status == 529 and "Overloaded" in info.value.message
    assert not translator.done


def test_ping_and_unknown_events_are_ignored():
    t = StreamTranslator()
    assert t.feed("ping", {"type": "ping"}) == []
    assert t.feed("content_block_start", {"index": 0, "content_block": {"type": "server_tool_use", "id": "srvtoolu_1",
                                                                        "name": "web_search", "input": {}}}) == []
    assert t.feed("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                "partial_json": '{"q'}}) == []
    assert t.feed("some_future_event", {"type": "some_future_event"}) == []
