"""The access log: one JSON line per request with what ops needs, no prompts and no secrets;
usage (and cost) learned even when a streaming client did not ask for the usage chunk."""
from __future__ import annotations

import asyncio
import re

import pytest

from tests.core.helpers import CLIENT_KEY, UPSTREAM_KEY, chat_body, post_json, post_stream

CHAT = "/v1/chat/completions"
FIELDS = {"request_id", "model", "provider", "upstream_model", "status", "latency_ms", "ttft_ms",
          "prompt_tokens", "completion_tokens", "stream", "cost", "level", "timestamp"}
COST = (12 * 0.15 + 7 * 0.60) / 1e6


async def test_one_line_per_nonstreaming_request(gw, http, log_lines):
    status, headers, _ = await post_json(http, gw.url + CHAT, chat_body(text="a private prompt"))
    assert status == 200
    line = log_lines.access(headers["x-request-id"])
    assert set(line) >= FIELDS
    assert (line["model"], line["provider"], line["upstream_model"]) == \
        ("gpt-4o-mini", "up", "gpt-4o-mini-2024-07-18")
    assert (line["status"], line["stream"]) == (200, False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 7)
    assert line["cost"] == pytest.approx(COST)
    assert line["latency_ms"] > 0
    assert "a private prompt" not in log_lines.raw.decode()


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streaming_line_has_ttft_and_usage_even_when_client_did_not_ask(gw, http, log_lines, include_usage):
    body = chat_body(stream=True, text="another private prompt")
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, headers, raw = await post_stream(http, gw.url + CHAT, body)
    assert status == 200 and (b'"choices":[]' in raw) == include_usage
    line = log_lines.access(headers["x-request-id"])
    assert (line["status"], line["stream"]) == (200, True)
    assert 0 < line["ttft_ms"] <= line["latency_ms"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 7)
    assert line["cost"] == pytest.approx(COST)
    assert "another private prompt" not in log_lines.raw.decode()


async def test_mock_stream_cost_known_without_usage_chunk(fake_openai, make_gateway, http, log_lines):
    gw = await make_gateway("""
middlewares: [access_log]
providers: {mock: {type: mock}}
models: {mock-echo: {targets: [{provider: mock}], pricing: {input: 1.0, output: 2.0}}}
""")
    status, headers, _ = await post_stream(http, gw.url + CHAT, chat_body("mock-echo", "hello there", stream=True))
    line = log_lines.access(headers["x-request-id"])
    assert line["completion_tokens"] > 0 and line["cost"] > 0


async def test_errors_are_logged_with_status_and_code(gw, http, log_lines):
    for model, status, code in (("nope", 404, "model_not_found"), ("up/fail-500", 502, "upstream_error"),
                                ("up/fail-429", 429, "upstream_rate_limited")):
        got = await post_json(http, gw.url + CHAT, chat_body(model), headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        line = log_lines.access(got[1]["x-request-id"])
        assert (line["status"], line["error"]) == (status, code)
    got = await post_json(http, gw.url + CHAT, b"{not json")
    assert log_lines.access(got[1]["x-request-id"])["status"] == 400
    text = log_lines.raw.decode()
    assert UPSTREAM_KEY not in text and CLIENT_KEY not in text


async def test_concurrent_requests_each_get_one_whole_line(gw, http, log_lines):
    """Lines of requests that finish in the same turn of the event loop are written together;
    each stays one whole JSON line with a timestamp in structlog's format."""
    got = await asyncio.gather(*(post_json(http, gw.url + CHAT, chat_body(text=f"n{i}")) for i in range(20)))
    assert [status for status, _, _ in got] == [200] * 20
    for _, headers, _ in got:
        line = log_lines.access(headers["x-request-id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    assert all(raw.startswith(b"{") and raw.endswith(b"}") for raw in log_lines.raw.splitlines() if raw)
