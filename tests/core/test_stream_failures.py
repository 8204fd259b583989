"""Failures while streaming, and timeouts: a real status before the first byte, an error event
then [DONE] after it, never a silent close and never a hang."""
from __future__ import annotations

import time

import openai
import orjson
import pytest

from tests.core.helpers import UPSTREAM_KEY, assert_envelope, chat_body, gateway_config, post_json, post_stream, sse_data

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fast_gw(fake_openai, make_gateway):
    """Short timeouts: 0.3 s to the first byte, 0.3 s between chunks."""
    fake_openai.slow_seconds = 3
    return await make_gateway(gateway_config(fake_openai.url, first_byte=0.3, idle=0.3),
                              env={"UP_KEY": UPSTREAM_KEY})


@pytest.mark.parametrize("model, status, type_", [
    ("up/fail-500", 502, "provider_error"),
    ("up/fail-401", 502, "provider_error"),
    ("up/fail-429", 429, "rate_limit_error"),
    ("up/fail-400", 400, "invalid_request_error"),
    ("up/malformed", 502, "provider_error"),
    ("up/error-body", 502, "provider_error"),
])
async def test_failure_before_first_byte_is_a_real_http_status(gw, http, model, status, type_):
    async with http.post(gw.url + CHAT, json=chat_body(model, stream=True)) as resp:
        got = resp.status, resp.headers, await resp.json()
    assert_envelope(got, status, type_)


@pytest.mark.parametrize("model, upstream", [("up/midstream-error", "error event"),
                                             ("up/broken", "cut connection"),
                                             ("up/stall", "idle timeout")])
async def test_failure_after_first_byte_is_an_error_event_then_done(fast_gw, http, model, upstream):
    started = time.monotonic()
    status, headers, raw = await post_stream(http, fast_gw.url + CHAT, chat_body(model, stream=True))
    assert time.monotonic() - started < 3, f"{upstream}: took too long"
    assert status == 200
    events = sse_data(raw)
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    assert events[-1] == b"[DONE]"
    first = orjson.loads(events[0])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    err = orjson.loads(events[-2])["error"]
    assert err["type"] == "provider_error"
    assert err["trace_id"] == headers["x-request-id"]
    assert set(err) >= {"message", "type", "code", "param", "tip", "trace_id"}
    assert all(b'"error"' not in e for e in events[:-2])


async def test_sdk_raises_on_midstream_error_event(gw):
    stream = await gw.client().chat.completions.create(model="up/midstream-error", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as exc_info:
        async for _ in stream:
            pass
    assert "mid-stream" in exc_info.value.message


async def test_midstream_failure_logged_with_its_status(fast_gw, http, log_lines):
    status, headers, _ = await post_stream(http, fast_gw.url + CHAT, chat_body("up/broken", stream=True))
    line = log_lines.access(headers["x-request-id"])
    assert (line["status"], line["stream"], line["provider"]) == (502, True, "up")
    assert line["ttft_ms"] is not None


@pytest.mark.parametrize("stream", [False, True])
async def test_first_byte_timeout_is_502_upstream_timeout_not_a_hang(fast_gw, http, stream):
    started = time.monotonic()
    got = await post_json(http, fast_gw.url + CHAT, chat_body("up/slow", stream=stream))
    assert time.monotonic() - started < 2
    err = assert_envelope(got, 502, "provider_error", code="upstream_timeout")
    assert "0.3" in err["message"]


async def test_total_timeout_is_502_not_a_hang(fake_openai, make_gateway, http):
    """A generous first-byte limit, but the provider's total limit cuts the slow upstream."""
    fake_openai.slow_seconds = 3
    config = gateway_config(fake_openai.url).replace("total: 30", "total: 0.4")
    gw = await make_gateway(config, env={"UP_KEY": UPSTREAM_KEY})
    started = time.monotonic()
    got = await post_json(http, gw.url + CHAT, chat_body("up/slow"))
    assert time.monotonic() - started < 2
    assert_envelope(got, 502, "provider_error")


async def test_unreachable_upstream_is_502(make_gateway, http):
    gw = await make_gateway(gateway_config("http://127.0.0.1:9/v1", first_byte=1), env={"UP_KEY": UPSTREAM_KEY})
    got = await post_json(http, gw.url + CHAT, chat_body("up/anything"))
    err = assert_envelope(got, 502, "provider_error", code="upstream_unreachable")
    assert UPSTREAM_KEY not in err["message"]
