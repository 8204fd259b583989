"""SSE keep-alives (`server.sse_ping_seconds`): while an upstream is silent — thinking before its
first token, or between two tokens — the client gets `: ping` comment lines, so a load balancer
with an idle timeout keeps the connection. The upstream's own events still arrive byte for byte,
the official SDKs parse such streams, a failure within the first interval is still a real HTTP
status (and falls back), one after it an error event in the stream's own format."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import httpx2
import openai
import orjson
import pytest

from proxy.config import ConfigError, parse_config
from tests.core.helpers import chat_body, sse_data
from tests.fakes.quiet_upstream import QuietUpstream, anthropic_events, openai_events

PING = b": ping\n\n"
INTERVAL = 0.3
CHAT = "/v1/chat/completions"
CONFIG = """
server: {{data_dir: "{data_dir}", sse_ping_seconds: {ping}}}
middlewares: [accounting]
providers:
  quiet: {{type: openai, base_url: "{url}/v1", timeouts: {{first_byte: 30, idle: 30, total: 60}}}}
  claude: {{type: anthropic, base_url: "{url}", api_key: "sk-ant-test-0123456789",
            timeouts: {{first_byte: 30, idle: 30, total: 60}}}}
  mock: {{type: mock, options: {{chunks: 2}}}}
models:
  "quiet/*": {{targets: [{{provider: quiet}}], retries: 0}}
  "claude/*": {{targets: [{{provider: claude}}], retries: 0}}
  quick-fail-then-mock: {{targets: [{{provider: quiet, model: quick-fail}}, {{provider: mock, model: m}}], retries: 0}}
  quiet-fail-then-mock: {{targets: [{{provider: quiet, model: quiet-fail}}, {{provider: mock, model: m}}], retries: 0}}
"""
BODIES = {   # a streamed request to `model` on each SSE endpoint
    "/v1/chat/completions": lambda model: chat_body(model, stream=True),
    "/v1/messages": lambda model: {"model": model, "max_tokens": 64, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": lambda model: {"model": model, "input": "hi", "stream": True},
    "/v1/completions": lambda model: {"model": model, "prompt": "hi", "stream": True},
}


@pytest.fixture
async def quiet():
    upstream = await QuietUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
def make_gw(make_gateway, quiet, tmp_path):
    async def make(ping: float = INTERVAL):
        return await make_gateway(CONFIG.format(data_dir=tmp_path / "var", url=quiet.url, ping=ping))
    return make


@pytest.fixture
async def gw(make_gw):
    return await make_gw()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def next_event(resp: aiohttp.ClientResponse) -> bytes:
    return await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)


async def events_until(resp: aiohttp.ClientResponse, want: bytes) -> list[bytes]:
    """The events read up to and including the first equal to `want` (or containing it)."""
    got = []
    while not got or want not in got[-1]:
        got.append(await next_event(resp))
    return got


def without_usage(events: list[bytes]) -> bytes:
    """What a client that did not ask for usage gets of an OpenAI upstream's events."""
    return b"".join(e for e in events if b'"choices":[]' not in e)


async def settled(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def keepalive_tasks() -> list[asyncio.Task]:
    """Live tasks of the keep-alive machinery: aiohttp-sse's ping loop, the gateway's peek."""
    return [t for t in asyncio.all_tasks() if not t.done()
            and t.get_coro().__qualname__.split(".")[-1] in ("_ping", "_read_head")]


# -- pings on the wire, upstream bytes unchanged ------------------------------------------------

async def test_pings_while_silent_before_the_first_token_then_the_content(gw, quiet, http):
    started = time.monotonic()
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-start", stream=True)) as resp:
        waited = time.monotonic() - started
        assert resp.status == 200 and waited >= INTERVAL * 0.9      # headers once an interval passed
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["x-request-id"]
        head = [await next_event(resp), await next_event(resp)]
        assert head == [PING, PING]
        quiet.release.set()
        rest = await resp.read()
    before, after = openai_events("quiet-start")
    assert rest.replace(PING, b"") == without_usage(before + after)      # byte for byte
    assert await settled(lambda: not keepalive_tasks())


async def test_pings_while_silent_between_tokens_and_bytes_unchanged(gw, quiet, http):
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-middle", stream=True)) as resp:
        assert resp.status == 200
        got = await events_until(resp, b'"Hello"')
        got += [await next_event(resp), await next_event(resp)]
        assert got[-2:] == [PING, PING]
        quiet.release.set()
        raw = b"".join(got) + await resp.read()
    before, after = openai_events("quiet-middle")
    assert raw.replace(PING, b"") == without_usage(before + after)
    assert raw.count(PING) >= 2 and PING not in raw[:raw.index(b'"Hello"')]


async def test_a_stream_that_never_goes_quiet_is_forwarded_exactly(gw, quiet, http):
    quiet.release.set()
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-middle", stream=True)) as resp:
        raw = await resp.read()
    before, after = openai_events("quiet-middle")
    assert raw == without_usage(before + after)


async def test_pings_off_with_zero(make_gw, quiet, http):
    gw = await make_gw(ping=0)
    quiet.pause = INTERVAL * 3
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-middle", stream=True)) as resp:
        raw = await resp.read()
    before, after = openai_events("quiet-middle")
    assert raw == without_usage(before + after)
    # and nothing commits the response early: a late failure is still a real status
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-fail", stream=True)) as resp:
        assert resp.status == 502 and resp.content_type == "application/json"


# -- the official SDKs parse streams with pings -------------------------------------------------

class Tap(httpx2.AsyncBaseTransport):
    """An SDK's HTTP transport that keeps the bytes it reads, and calls `on_ping` at the
    first ping among them (the test then lets the upstream go on)."""

    def __init__(self, on_ping):
        self.inner = httpx2.AsyncHTTPTransport()
        self.raw = bytearray()
        self.on_ping = on_ping

    async def handle_async_request(self, request):
        resp = await self.inner.handle_async_request(request)
        tap = self

        class Stream(httpx2.AsyncByteStream):
            async def __aiter__(self):
                async for chunk in resp.stream:
                    tap.raw += chunk
                    if PING in tap.raw:
                        tap.on_ping()
                    yield chunk

            async def aclose(self):
                await resp.stream.aclose()

        return httpx2.Response(resp.status_code, headers=resp.headers, stream=Stream(), extensions=resp.extensions)

    async def aclose(self):
        await self.inner.aclose()


@pytest.mark.parametrize("model", ["quiet/quiet-start", "quiet/quiet-middle"])
async def test_openai_sdk_chat_stream_parses_through_pings(gw, quiet, model):
    tap = Tap(quiet.release.set)
    async with gw.client(http_client=openai.DefaultAsyncHttpxClient(transport=tap)) as client:
        stream = await client.chat.completions.create(model=model, stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert PING in tap.raw


async def test_openai_sdk_responses_stream_parses_through_pings(gw, quiet):
    tap = Tap(quiet.release.set)
    async with gw.client(http_client=openai.DefaultAsyncHttpxClient(transport=tap)) as client:
        stream = await client.responses.create(model="quiet/quiet-start", input="hi", stream=True)
        events = [event async for event in stream]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello world"
    assert events[-1].type == "response.completed"
    assert PING in tap.raw


@pytest.mark.parametrize("model", ["quiet/quiet-start", "quiet/quiet-middle", "claude/quiet-middle"])
async def test_anthropic_sdk_stream_parses_through_pings(gw, quiet, model):
    """Translated (an OpenAI upstream) and passed through (a Claude upstream): for the latter
    the client's bytes are Anthropic's, byte for byte, with the pings between them."""
    tap = Tap(quiet.release.set)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-client-test", max_retries=0,
                                      http_client=anthropic.DefaultAsyncHttpxClient(transport=tap))
    async with client:
        async with client.messages.stream(model=model, max_tokens=64,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            text = await stream.get_final_text()
            final = await stream.get_final_message()
    assert text == "Hello world" and final.stop_reason == "end_turn"
    assert PING in tap.raw
    if model.startswith("claude/"):
        before, after = anthropic_events("quiet-middle")
        assert bytes(tap.raw).replace(PING, b"") == b"".join(before + after)


# -- failures: a real status within the first interval, a stream error event after it ------------

async def test_a_failure_within_the_first_interval_is_a_real_status(gw, quiet, http):
    async with http.post(gw.url + CHAT, json=chat_body("quiet/quick-fail", stream=True)) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"]["type"] == "provider_error"


async def test_a_failure_within_the_first_interval_falls_back(gw, quiet, http):
    async with http.post(gw.url + CHAT, json=chat_body("quick-fail-then-mock", stream=True)) as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert quiet.requests == ["quick-fail"]
    events = sse_data(raw)
    assert events[-1] == b"[DONE]" and b'"error"' not in raw and PING not in raw


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_failure_after_pings_is_an_error_event_in_the_stream_format(gw, quiet, http, path):
    async with http.post(gw.url + path, json=BODIES[path]("quiet/quiet-fail")) as resp:
        assert resp.status == 200
        head = await events_until(resp, PING)       # /v1/responses starts with response.created
        quiet.release.set()
        raw = b"".join(head) + await resp.read()
    if path == "/v1/messages":
        assert raw.endswith(b"\n\n") and b"event: error\ndata: " in raw
        last = orjson.loads(sse_data(raw)[-1])
        assert last["type"] == "error" and last["error"]["type"] == "api_error"
    elif path == "/v1/responses":
        last = orjson.loads(sse_data(raw)[-1])
        assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    else:
        events = sse_data(raw)
        assert events[-1] == b"[DONE]"
        assert orjson.loads(events[-2])["error"]["type"] == "provider_error"


async def test_after_the_response_started_there_is_no_fallback_but_an_error_event(gw, quiet, http):
    async with http.post(gw.url + CHAT, json=chat_body("quiet-fail-then-mock", stream=True)) as resp:
        assert resp.status == 200
        assert await next_event(resp) == PING
        quiet.release.set()
        raw = await resp.read()
    assert quiet.requests == ["quiet-fail"]
    events = sse_data(raw)
    assert events[-1] == b"[DONE]" and orjson.loads(events[-2])["error"]["type"] == "provider_error"


# -- a client that goes away while pinged cancels the upstream at once ---------------------------

@pytest.mark.parametrize("model, before", [("quiet/quiet-hang", b""), ("quiet/quiet-middle", b'"Hello"')])
async def test_disconnect_during_pings_cancels_the_upstream(gw, quiet, http, model, before):
    resp = await http.post(gw.url + CHAT, json=chat_body(model, stream=True))
    assert resp.status == 200
    if before:
        await events_until(resp, before)
    assert await next_event(resp) == PING
    assert not quiet.disconnected.is_set()
    resp.close()                 # the client drops the connection
    await asyncio.wait_for(quiet.disconnected.wait(), 2)
    assert await settled(lambda: not keepalive_tasks())


async def test_disconnect_while_the_stream_is_peeked_cancels_the_upstream(make_gw, quiet, http):
    """Within the first interval nothing is sent yet; the peek runs in its own task, which goes too."""
    gw = await make_gw(ping=30)

    async def call():
        async with http.post(gw.url + CHAT, json=chat_body("quiet/quiet-hang", stream=True)) as resp:
            await resp.read()
    task = asyncio.ensure_future(call())
    assert await settled(lambda: quiet.requests == ["quiet-hang"])
    task.cancel()                # the client gives up before any byte came back
    await asyncio.wait_for(quiet.disconnected.wait(), 2)
    assert await settled(lambda: not keepalive_tasks())


async def test_no_task_outlives_its_stream(gw, quiet, http):
    quiet.release.set()
    for model in ("quiet/quiet-start", "quiet/quick-fail", "quick-fail-then-mock"):
        async with http.post(gw.url + CHAT, json=chat_body(model, stream=True)) as resp:
            await resp.read()
    assert await settled(lambda: not keepalive_tasks())


# -- configuration ----------------------------------------------------------------------------

def test_default_interval_is_15_seconds_and_bad_values_name_their_line():
    base = "providers: {mock: {type: mock}}\nmodels: {m: {targets: [{provider: mock}]}}\n"
    assert parse_config(base).server.sse_ping_seconds == 15.0
    assert parse_config("server: {sse_ping_seconds: 0}\n" + base).server.sse_ping_seconds == 0.0
    for bad in ("-1", "fast", ".inf"):
        with pytest.raises(ConfigError) as exc:
            parse_config(f"server:\n  sse_ping_seconds: {bad}\n" + base)
        [problem] = exc.value.problems
        assert (problem.path, problem.line) == ("server.sse_ping_seconds", 2), problem
        assert "number >= 0" in problem.message
