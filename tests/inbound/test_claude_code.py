"""Claude Code's requests through /v1/messages (the shape it sends today: tests/inbound/claude_code.py).

Non-Claude targets (the mock, an OpenAI-compatible upstream) get them translated and never refuse
a field Claude Code sends; a Claude target (`type: anthropic`) gets them as sent - body, betas,
version, query - with only `model` rewritten, and the client gets Anthropic's answer as it came.
"""
from __future__ import annotations

import anthropic
import orjson
import pytest

from tests.inbound import claude_code
from tests.inbound.conftest import ANT_KEY, ledger_row

URL = "/v1/messages?" + claude_code.QUERY


async def post(http, gw, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    hdrs = {**claude_code.headers("sk-client-test"), **(headers or {})}
    async with http.post(gw.url + URL, data=orjson.dumps(body), headers=hdrs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def sse(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("event", ""), orjson.loads(lines["data"])))
    return out


# --- translated: the mock and an OpenAI-compatible upstream ----------------------------------------

@pytest.mark.parametrize("model", ["mock-echo", "gpt-smart"])
async def test_claude_code_request_is_translated_not_refused(trio, http, fake_openai, model):
    status, _, raw = await post(http, trio, claude_code.request(model))
    assert status == 200, raw
    message = anthropic.types.Message.model_validate_json(raw)
    assert message.type == "message" and message.role == "assistant"
    assert any(b.type == "text" and "hello" in b.text for b in message.content), message
    if model == "gpt-smart":
        sent = fake_openai.last["json"]
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["system", "user", "system"], roles          # the system message at its place
        assert sent["messages"][2]["content"].startswith("Available agent types")
        assert sent["reasoning_effort"] == "high"                    # output_config.effort
        for dropped in ("thinking", "context_management", "output_config", "metadata"):
            assert dropped not in sent, dropped
        assert [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read", "Write"]


@pytest.mark.parametrize("model", ["mock-echo", "gpt-smart"])
async def test_claude_code_stream_is_translated(trio, http, model):
    status, headers, raw = await post(http, trio, claude_code.request(model, stream=True))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), raw
    events = sse(raw)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert "hello" in text


async def test_system_message_blocks_and_developer_order(trio, http, fake_openai):
    """A system message with text blocks keeps its cache_control; effort alone (no output_config) maps
    from adaptive thinking to medium."""
    body = claude_code.request("gpt-smart")
    body["messages"][1] = {"role": "system", "content": [{"type": "text", "text": "Be brief.",
                                                           "cache_control": {"type": "ephemeral"}}]}
    del body["output_config"]
    status, _, raw = await post(http, trio, body)
    assert status == 200, raw
    sent = fake_openai.last["json"]
    assert sent["messages"][2] == {"role": "system", "content": [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]}
    assert sent["reasoning_effort"] == "medium"


async def test_system_message_with_a_non_text_block_is_a_400_in_anthropic_shape(trio, http):
    body = claude_code.request("mock-echo")
    body["messages"][1] = {"role": "system", "content": [{"type": "image", "source": {
        "type": "url", "url": "https://example.com/a.png"}}]}
    status, _, raw = await post(http, trio, body)
    assert status == 400
    err = orjson.loads(raw)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "messages[1]" in err["error"]["message"]


# --- Claude targets: the request as sent, the answer as it came --------------------------------

def _cost(usage: dict) -> float:
    """The route's pricing (tests/inbound/conftest.py) applied to Anthropic's usage."""
    return round((usage["input_tokens"] * 3.0 + usage.get("cache_read_input_tokens", 0) * 0.3
                  + usage.get("cache_creation_input_tokens", 0) * 3.75 + usage["output_tokens"] * 15.0) / 1e6, 10)


def _assert_sent_as_is(fake_anthropic, client_body: dict, upstream_model: str) -> None:
    got = fake_anthropic.requests[-1]
    assert got["path"] == "/v1/messages" and got["query"] == claude_code.QUERY
    assert got["json"] == {**client_body, "model": upstream_model}
    assert list(got["json"]) == list(client_body)                     # field order kept too
    assert got["headers"]["anthropic-beta"] == claude_code.BETAS
    assert got["headers"]["anthropic-version"] == claude_code.VERSION
    assert got["headers"]["x-api-key"] == ANT_KEY                     # the gateway's key, not the client's
    assert "sk-client-test" not in str(got["headers"])


async def test_claude_target_gets_the_request_as_sent(trio, http, fake_anthropic):
    body = claude_code.request("claude-sonnet")
    status, headers, raw = await post(http, trio, body)
    assert status == 200, raw
    _assert_sent_as_is(fake_anthropic, body, "claude-sonnet-4-5-20250929")
    assert raw == fake_anthropic.sent[-1]                             # Anthropic's answer, byte for byte
    message = orjson.loads(raw)
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]   # adaptive thinking honoured
    row = await ledger_row(trio, headers["x-request-id"])
    usage = message["usage"]
    assert (row["endpoint"], row["provider"], row["status"]) == ("messages", "anthropic", 200)
    assert row["prompt_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"] + \
        usage["cache_creation_input_tokens"]
    assert row["cache_write_tokens"] == usage["cache_creation_input_tokens"]
    assert row["completion_tokens"] == usage["output_tokens"]
    assert row["cost"] == pytest.approx(_cost(usage)) and row["cost"] > 0


async def test_claude_target_stream_is_forwarded_event_for_event(trio, http, fake_anthropic):
    body = claude_code.request("claude-sonnet", stream=True)
    status, headers, raw = await post(http, trio, body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), raw
    _assert_sent_as_is(fake_anthropic, body, "claude-sonnet-4-5-20250929")
    assert raw == bytes(fake_anthropic.sent[-1])                      # the upstream's events, identical
    assert [n for n, _ in sse(raw)][:2] == ["message_start", "ping"]
    row = await ledger_row(trio, headers["x-request-id"])
    usage = fake_anthropic.answers[-1]["usage"]
    assert (row["endpoint"], row["stream"], row["status"]) == ("messages", 1, 200)
    assert row["completion_tokens"] == usage["output_tokens"]
    assert row["cost"] == pytest.approx(_cost(usage)) and row["cost"] > 0


async def test_anthropic_sdk_against_a_claude_target(trio, fake_anthropic):
    client = anthropic.AsyncAnthropic(base_url=trio.url, api_key="sk-client-test", max_retries=0)
    async with client.beta.messages.stream(model="claude-sonnet", max_tokens=2000, betas=["context-management-2025-06-27"],
                                           context_management={"edits": [{"type": "clear_thinking_20251015",
                                                                          "keep": "all"}]},
                                           thinking={"type": "adaptive"},
                                           messages=[{"role": "user", "content": "hi there"}]) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == "hi there"
    assert fake_anthropic.requests[-1]["json"]["context_management"]["edits"][0]["keep"] == "all"
    await client.close()


async def test_mixed_route_gives_each_target_its_own_form(trio, http, fake_anthropic, fake_openai):
    # the Claude target fails (529): the mock answers the translated request
    status, _, raw = await post(http, trio, claude_code.request("claude-then-mock"))
    assert status == 200, raw
    assert fake_anthropic.requests[-1]["json"]["context_management"]      # it had been sent as is
    assert orjson.loads(raw)["content"][-1]["text"].endswith("hello")
    # the mock fails first: the Claude target gets the request untranslated
    body = claude_code.request("mock-then-claude")
    status, _, raw = await post(http, trio, body)
    assert status == 200, raw
    _assert_sent_as_is(fake_anthropic, body, "claude-sonnet-4-5-20250929")
    assert raw == fake_anthropic.sent[-1]


async def test_claude_target_errors_are_anthropic_errors(trio, http, make_gateway, fake_anthropic):
    body = claude_code.request("claude-sonnet")
    body["messages"][0]["role"] = "assistant"          # the fake API refuses: must start with... (roles)
    body["messages"].append({"role": "assistant", "content": "again"})
    status, _, raw = await post(http, trio, body)
    assert status == 400
    err = orjson.loads(raw)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "alternate" in err["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_target_answers_are_cached_as_they_came(trio, http, fake_anthropic, stream):
    body = claude_code.request("claude-cached", stream=stream)
    status, first_headers, first = await post(http, trio, body)
    assert status == 200 and first_headers["x-cache"] == "MISS", first
    n = len(fake_anthropic.requests)
    status, headers, again = await post(http, trio, body)
    assert status == 200 and headers["x-cache"] == "HIT"
    assert again == first and len(fake_anthropic.requests) == n        # the same bytes, no upstream call
    row = await ledger_row(trio, headers["x-request-id"])
    assert (row["cache_hit"], row["cost"], row["status"]) == (1, 0.0, 200)
    assert row["completion_tokens"] == fake_anthropic.answers[-1]["usage"]["output_tokens"]
    # an Anthropic-only field the translation drops still tells requests apart
    other = {**body, "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}]}}
    status, headers, _ = await post(http, trio, other)
    assert status == 200 and headers["x-cache"] == "MISS" and len(fake_anthropic.requests) == n + 1


async def test_claude_stream_error_after_the_start_goes_on_as_sent(trio, http, fake_anthropic):
    status, headers, raw = await post(http, trio, claude_code.request("claude-midstream", stream=True))
    assert status == 200
    events = sse(raw)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert [n for n, _ in events].count("error") == 1                    # Anthropic's own, not a second one
    row = await ledger_row(trio, headers["x-request-id"])
    assert (row["status"], row["error_type"], row["partial"]) == (502, "provider_error", 1)
