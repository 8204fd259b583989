"""The upstream boundary's bounds: keep-alives do not keep a stream alive past `idle`, a
compressed reply is refused once its decompressed size passes `max_response_mb` (and the
memory is given back), and a broken answer from the Anthropic provider is retried on the same
target like any other provider's (retryability is the error's type)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from tests.fakes.faulty_upstream import gzip_bomb
from tests.faults.conftest import assert_envelope, assert_stream_error, chat, ledger_rows, sse_data


async def test_keep_alives_do_not_reset_the_idle_timeout(harness, faulty):
    """`long` has idle 0.5 s and total 30 s: an upstream that sends only `: keep-alive`
    after its first token is cut after `idle`, not `total`."""
    started = time.monotonic()
    status, headers, raw = await harness.post(chat("long/endless-comments", stream=True), timeout=15)
    took = time.monotonic() - started
    assert status == 200 and took < 3, took
    assert orjson.loads(sse_data(raw)[1])["choices"][0]["delta"]["content"] == "Hello"
    assert_stream_error(raw, "provider_error", "upstream_broken")
    row = await harness.row(headers["x-request-id"])
    assert (row["status"], row["partial"]) == (502, 1)
    assert await faulty.wait_idle()


async def test_an_upstream_sending_only_keep_alives_is_a_502_after_idle(harness, faulty):
    started = time.monotonic()
    status, headers, body = await harness.post(chat("long/comments-only", stream=True), timeout=15)
    assert time.monotonic() - started < 3
    assert_envelope(status, headers, body, 502, "provider_error", "upstream_broken")
    assert await faulty.wait_idle()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1024 / 1024


async def test_concurrent_gzip_bombs_are_refused_with_bounded_memory(harness, faulty):
    """16 replies of 256 MB each once decompressed (256 KB on the wire), at once: each is a
    clean 502 `upstream_too_large` after the default 16 MB, memory stays bounded while they
    are read and is given back afterwards."""
    await harness.baseline()
    bomb = chat("long/gzip-bomb-256")
    await asyncio.to_thread(gzip_bomb, 256)      # compressed once, before measuring
    before = peak = rss_mb()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.005)
    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(harness.post(bomb, timeout=30) for _ in range(16)))
    finally:
        done.set()
        await sampler
    for status, headers, body in results:
        err = assert_envelope(status, headers, body, 502, "provider_error", "upstream_too_large")
        assert "16 MB" in err["message"]
    assert peak - before < 16 * 16 + 150, f"RSS grew by {peak - before:.0f} MB while reading"
    await harness.assert_healthy()
    assert rss_mb() - before < 100, f"RSS stayed {rss_mb() - before:.0f} MB above the start"
    assert await faulty.wait_idle()


CONFIG = """
server: {{data_dir: "{data_dir}"}}
middlewares: [accounting]
providers:
  an: {{type: anthropic, base_url: "{url}", api_key: "sk-ant-test-0123456789",
        timeouts: {{connect: 1, first_byte: 2, idle: 1, total: 5}}}}
models:
  "an/*": {{targets: [{{provider: an}}], retries: 1, retry_on: []}}
"""


@pytest.mark.parametrize("model, stream", [("flaky-malformed", False), ("flaky-truncated", True),
                                           ("flaky-bad-event", True)])
async def test_a_broken_anthropic_answer_is_retried_on_the_same_target(tmp_path, echo, make_gateway,
                                                                       model, stream):
    """A malformed reply, a stream cut before its first token and a malformed event are
    retried like the OpenAI provider's (no status in `retry_on` needed): the client gets the
    second, good answer; the ledger says two attempts."""
    gw = await make_gateway(CONFIG.format(data_dir=tmp_path / "var", url=echo.url))
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/chat/completions", json=chat(f"an/{model}", stream=stream)) as resp:
            raw = await resp.read()
            status, rid = resp.status, resp.headers["x-request-id"]
    assert status == 200, raw
    if stream:
        assert raw.endswith(b"data: [DONE]\n\n") and b'"Hello"' in raw and b'"error"' not in raw
    else:
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == "ok"
    assert echo.hits[model] == 2
    await gw.gateway.ledger.flush()
    row = ledger_rows(f"{gw.gateway.data_dir}/modelway.db", rid)[0]
    assert (row["status"], row["attempts"], row["provider"]) == (200, 2, "an")
