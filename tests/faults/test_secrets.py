"""No configured secret reaches a client, a log line or the ledger, whatever the upstream echoes.

The upstream (tests/fakes/echo_upstream.py) copies the request headers it got — the provider's
`api_key` and every configured header value, `gsk_...` and Azure-style keys included — into
its error texts on every path: a 4xx/5xx body, a 200 error body, an SSE error event before and
after the first content byte; through /v1/chat/completions and /v1/messages, for an OpenAI-type
and an Anthropic-type provider. Redaction is by value (every configured secret), with the
credential patterns as a second net."""
from __future__ import annotations

import io

import aiohttp
import orjson
import pytest
import structlog

from proxy import logs
from tests.faults.conftest import ledger_rows

OPENAI_KEY = "sk-proj-SECRETopenai0123456789"
AZURE_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"          # no Bearer/sk- shape at all
GROQ_KEY = "gsk_SECRETgroq0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-SECRETanthropic0123456789"
SECRETS = (OPENAI_KEY, AZURE_KEY, GROQ_KEY, ANTHROPIC_KEY)

CONFIG = """
server: {{data_dir: "{data_dir}"}}
middlewares: [access_log, accounting]
providers:
  oa:
    type: openai
    base_url: "{url}/v1"
    api_key: "{openai_key}"
    headers: {{api-key: "{azure_key}", X-Custom-Token: "{groq_key}"}}
    timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}
  an:
    type: anthropic
    base_url: "{url}"
    api_key: "{anthropic_key}"
    headers: {{X-Custom-Token: "{groq_key}"}}
    timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}
models:
  "oa/*": {{targets: [{{provider: oa}}], retries: 0}}
  "an/*": {{targets: [{{provider: an}}], retries: 0}}
"""

BEHAVIOURS = ["echo-4xx", "echo-500", "echo-200-error", "echo-sse-early", "echo-sse-late"]


@pytest.fixture
def log_buffer():
    buf = io.BytesIO()
    logs.configure("debug", stream=buf)
    structlog.configure(cache_logger_on_first_use=False)     # module loggers must not keep this buffer
    yield buf
    structlog.reset_defaults()


@pytest.fixture
async def gw(tmp_path, echo, make_gateway, log_buffer):
    return await make_gateway(CONFIG.format(data_dir=tmp_path / "var", url=echo.url, openai_key=OPENAI_KEY,
                                            azure_key=AZURE_KEY, groq_key=GROQ_KEY, anthropic_key=ANTHROPIC_KEY))


def assert_no_secret(where: str, data: bytes) -> None:
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret} leaked into {where}: {data[:2000]!r}"
        assert secret[8:].encode() not in data, f"part of {secret} leaked into {where}: {data[:2000]!r}"


async def send(gw, echo, path: str, body: dict) -> tuple[int, bytes]:
    """(status, headers and body as bytes); for a stream, the upstream's late error is let go
    only once the client has received the content before it."""
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + path, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            raw = b""
            async for piece in resp.content.iter_any():
                raw += piece
                if b"Hello" in raw:
                    echo.gate.set()
            head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()).encode()
            return resp.status, head + b"\n\n" + raw


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", ["chat", "messages"])
@pytest.mark.parametrize("provider", ["oa", "an"])
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_an_upstream_echoing_its_headers_leaks_no_secret(gw, echo, log_buffer, provider, endpoint, stream,
                                                                behaviour):
    if behaviour.startswith("echo-sse") and not stream:
        pytest.skip("an SSE error event needs a stream")
    model = f"{provider}/{behaviour}"
    if endpoint == "chat":
        status, raw = await send(gw, echo, "/v1/chat/completions", {
            "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    else:
        status, raw = await send(gw, echo, "/v1/messages", {
            "model": model, "stream": stream, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    assert echo.hits[behaviour] == 1
    # the upstream's text did reach the client, with the secrets taken out of it
    assert b"echo: " in raw and b"[redacted]" in raw, raw
    if behaviour == "echo-sse-late":
        assert status == 200 and b"Hello" in raw
    else:
        assert status >= 400
    assert_no_secret("the response", raw)
    await gw.gateway.ledger.flush()
    rows = ledger_rows(f"{gw.gateway.data_dir}/modelway.db")
    assert rows and rows[-1]["upstream_model"] == behaviour
    assert_no_secret("the ledger", orjson.dumps(rows))
    logs.flush_access()
    assert b'"upstream_model":"' + behaviour.encode() in log_buffer.getvalue()
    assert_no_secret("the log", log_buffer.getvalue())


def test_secrets_are_redacted_by_value_longest_first_with_the_patterns_as_a_second_net():
    from proxy.errors import Redactor
    redact = Redactor(["abcdefgh12345678", "abcdefgh", "short", None, ""])
    assert redact("x abcdefgh12345678 y abcdefgh z short") == "x [redacted] y [redacted] z short"
    assert redact("Authorization: Bearer tok_unknown_to_the_config") == "Authorization: [redacted]"
    assert Redactor([])("sk-live-123456789 and key=abc") == "[redacted] and key=abc"


async def test_a_logged_exception_carrying_a_secret_is_redacted(gw, log_buffer):
    """The log's own second net: whatever text a log line carries, a configured secret in it is
    replaced (a gateway bug that logs an upstream message must not write the key)."""
    structlog.get_logger("modelway").error("upstream_said", text=f"auth=Bearer {OPENAI_KEY} {AZURE_KEY}")
    line = log_buffer.getvalue()
    assert b"upstream_said" in line and b"[redacted]" in line
    assert_no_secret("the log", line)
