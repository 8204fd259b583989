"""A gateway with the three kinds of target behind /v1/messages: the mock, a fake OpenAI-compatible
upstream and a fake Anthropic API (each on 127.0.0.1), with the accounting ledger on."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic, start

ANT_KEY = "sk-ant-test"
CLIENT_KEY = "sk-client-test"
PRICING = "{input: 3.0, output: 15.0, cached_input: 0.3, cache_write: 3.75}"
CONFIG = """
middlewares: [access_log, auth, ratelimit, presets, cache, accounting]
auth: {{mode: none}}
providers:
  mock: {{type: mock, options: {{chunks: 3}}}}
  up: {{type: openai, base_url: "{openai}", api_key: up-key}}
  anthropic:
    type: anthropic
    base_url: "{anthropic}"
    api_key: "{ant_key}"
    timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 20}}
models:
  mock-echo: {{targets: [{{provider: mock}}], pricing: {pricing}}}
  gpt-smart: {{targets: [{{provider: up, model: smart-4o}}], pricing: {pricing}}}
  claude-sonnet: {{targets: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}], pricing: {pricing}}}
  claude-midstream: {{targets: [{{provider: anthropic, model: claude-midstream-error}}], pricing: {pricing}}}
  claude-cached:
    targets: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}]
    cache: true
    pricing: {pricing}
  claude-then-mock:
    strategy: fallback
    retries: 0
    targets: [{{provider: anthropic, model: claude-overloaded}}, {{provider: mock, model: mock-echo}}]
    pricing: {pricing}
  mock-then-claude:
    strategy: fallback
    retries: 0
    targets: [{{provider: mock, model: mock-error}}, {{provider: anthropic, model: claude-sonnet-4-5-20250929}}]
    pricing: {pricing}
"""


@pytest.fixture
async def fake_anthropic():
    fake = FakeAnthropic(api_key=ANT_KEY)
    runner, _ = await start(fake)
    yield fake
    await runner.cleanup()


@pytest.fixture
async def trio(make_gateway, fake_openai, fake_anthropic):
    """The running gateway in front of the mock, fake OpenAI and fake Anthropic upstreams."""
    text = CONFIG.format(openai=fake_openai.url, anthropic=fake_anthropic.url, ant_key=ANT_KEY,
                         pricing=PRICING)
    return await make_gateway(text)


async def ledger_row(gw, request_id: str, timeout: float = 5.0) -> dict:
    path = os.path.join(gw.gateway.data_dir, "modelway.db")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            conn.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in conn.execute("SELECT * FROM ledger WHERE request_id = ?", (request_id,))]
            except sqlite3.OperationalError:
                rows = []
            finally:
                conn.close()
            if rows:
                return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ledger row for {request_id}")
