"""Broken upstreams on 127.0.0.1. Each case ends cleanly for the client (a documented status
before the first byte; an error event then `data: [DONE]` after it), writes exactly one
ledger row, leaks no task, socket or upstream connection, and the gateway keeps serving."""
from __future__ import annotations

import time

import orjson
import pytest

from tests.faults.conftest import assert_envelope, assert_stream_error, chat, sse_data

# (model, stream, HTTP status, error code). A status of 200 means the first content token had
# reached the client: the error arrives as an event and the ledger records the error's status
# with partial = 1. A failure before the first content token is a real HTTP status.
CASES = [
    pytest.param("dead/any", False, 502, "upstream_unreachable", id="refused"),
    pytest.param("dead/any", True, 502, "upstream_unreachable", id="refused-stream"),
    pytest.param("bad/reset-early", False, 502, "upstream_unreachable", id="reset-before-answer"),
    pytest.param("bad/reset-body", False, 502, "upstream_broken", id="reset-mid-body"),
    pytest.param("bad/reset-stream", True, 200, "upstream_broken", id="reset-mid-stream"),
    pytest.param("up/malformed", False, 502, "upstream_malformed", id="malformed-json"),
    pytest.param("bad/malformed-sse", True, 502, "upstream_broken", id="malformed-sse-not-sse"),
    pytest.param("bad/malformed-sse-json", True, 200, "upstream_malformed", id="malformed-sse-bad-json"),
    pytest.param("bad/empty-stream", True, 502, "upstream_broken", id="empty-stream"),
    pytest.param("bad/endless", True, 200, "upstream_broken", id="never-ending-sse-total-timeout"),
    pytest.param("bad/endless-comments", True, 200, "upstream_broken", id="keep-alive-forever-idle-timeout"),
    pytest.param("bad/comments-only", True, 502, "upstream_broken", id="keep-alives-only-idle-timeout"),
    pytest.param("bad/not-json-event", True, 200, "upstream_malformed", id="not-json-event"),
    pytest.param("up/stall", True, 200, "upstream_broken", id="stall-between-chunks-idle-timeout"),
    pytest.param("up/slow", False, 502, "upstream_timeout", id="no-first-byte-timeout"),
    pytest.param("up/slow", True, 502, "upstream_timeout", id="no-first-byte-timeout-stream"),
    pytest.param("up/error-body", False, 502, "upstream_error_body", id="200-with-error-body"),
    pytest.param("bad/error-after-content", True, 200, "upstream_stream_error", id="error-event-mid-stream"),
    pytest.param("up/fail-503", True, 502, "upstream_error", id="5xx-before-stream"),
    pytest.param("bad/huge-event", True, 200, "upstream_broken", id="huge-sse-event"),
    pytest.param("bad/reset-role", True, 502, "upstream_broken", id="reset-before-first-content-token"),
]


@pytest.mark.parametrize("model, stream, status, code", CASES)
async def test_broken_upstream_gives_a_clean_error_one_row_and_no_leak(harness, faulty, model, stream, status,
                                                                       code):
    await harness.baseline("up/gpt-4o-mini")
    started = time.monotonic()
    got_status, headers, body = await harness.post(chat(model, stream=stream))
    assert time.monotonic() - started < 4, "the gateway took too long to give up"
    if status == 200:
        assert got_status == 200 and stream
        events = sse_data(body)
        assert orjson.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
        err = assert_stream_error(body, "provider_error", code)
        assert err["trace_id"] == headers["x-request-id"]
    else:
        assert_envelope(got_status, headers, body, status, "provider_error", code)
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"], row["stream"]) == (502, "provider_error", int(stream))
    assert row["partial"] == (status == 200)
    assert row["attempts"] == 1
    assert row["provider"] == model.split("/")[0]
    assert await faulty.wait_idle(), "the gateway kept a connection to the upstream open"
    await harness.assert_healthy()


async def test_huge_but_valid_response_passes_whole(harness):
    """A 3 MB completion arrives in many TCP segments: it must be read in full, not cut at
    the first segment."""
    await harness.baseline()
    status, headers, body = await harness.post(chat("bad/huge-json-3"))
    assert status == 200, body
    assert len(body["choices"][0]["message"]["content"]) == 3 * 1024 * 1024
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"], row["prompt_tokens"]) == (200, None, 9)
    await harness.assert_healthy()


async def test_response_over_the_size_limit_is_502(harness):
    await harness.baseline()
    status, headers, body = await harness.post(chat("small/huge-json-3"))      # max_response_mb: 1
    assert_envelope(status, headers, body, 502, "provider_error", "upstream_too_large")
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (502, "provider_error")
    await harness.assert_healthy()


async def test_never_ending_stream_is_cut_at_the_total_timeout(harness, faulty):
    """The upstream keeps sending content: the provider's `timeouts.total` (1.2 s) ends it."""
    started = time.monotonic()
    status, _, raw = await harness.post(chat("bad/endless", stream=True))
    took = time.monotonic() - started
    assert status == 200 and 1.0 < took < 3, took
    assert len(sse_data(raw)) > 10          # it did stream until then
    assert_stream_error(raw)
    assert await faulty.wait_idle()


async def test_sdk_client_sees_a_clean_error_on_a_reset_stream(harness):
    import openai
    client = harness.gw.client()
    stream = await client.chat.completions.create(model="bad/reset-stream", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await client.close()
