"""A gateway with auth, presets and accounting in front of the mock provider, the fake OpenAI
upstream (`up/<behaviour>`, `smart-*` answers like a model) and the fake Anthropic upstream
(`claude`, with thinking signatures it checks on replay); two API keys, for ownership tests."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic, start as start_anthropic
from tests.faults.conftest import ledger_rows

KEY_A, KEY_B = "sk-resp-key-a-0123456789", "sk-resp-key-b-0123456789"
ANTHROPIC_KEY = "sk-ant-test"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}

CONFIG = """
server: {{data_dir: "{data_dir}"}}
middlewares: [auth, ratelimit, presets, cache, accounting]
providers:
  mock: {{type: mock, options: {{chunks: 3}}}}
  up: {{type: openai, base_url: "{openai}", timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 20}}}}
  anthropic: {{type: anthropic, base_url: "{anthropic}", api_key: "${{ANTHROPIC_API_KEY}}"}}
models:
  mock-echo: {{targets: [{{provider: mock}}], pricing: {{input: 1, output: 2}}}}
  mock-stream-error: {{targets: [{{provider: mock}}], retries: 0}}
  "up/*": {{targets: [{{provider: up}}], retries: 0, pricing: {{input: 1, output: 2}}}}
  claude: {{targets: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}], pricing: {{input: 3, output: 15}}}}
presets:
  echo-bot: {{model: mock-echo, system: "You are terse.", params: {{temperature: 0.1}}}}
keys:
  - {{label: a, sha256: "{a}"}}
  - {{label: b, sha256: "{b}"}}
responses: {{retention_days: 7}}
"""


@pytest.fixture
async def anthropic_fake():
    fake = FakeAnthropic(api_key=ANTHROPIC_KEY)
    runner, _ = await start_anthropic(fake)
    yield fake
    await runner.cleanup()


@pytest.fixture
async def gw(make_gateway, fake_openai, anthropic_fake, tmp_path):
    text = CONFIG.format(data_dir=tmp_path / "var", openai=fake_openai.url, anthropic=anthropic_fake.url,
                         a=hashlib.sha256(KEY_A.encode()).hexdigest(), b=hashlib.sha256(KEY_B.encode()).hexdigest())
    return await make_gateway(text, env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY})


@pytest.fixture
async def client(gw):
    async with gw.client(api_key=KEY_A) as c:
        yield c


@pytest.fixture
async def other(gw):
    async with gw.client(api_key=KEY_B) as c:
        yield c


async def ledger_row(gw, request_id: str, timeout: float = 3.0) -> dict:
    """The one ledger row of a request (polled until the writer has flushed it)."""
    path = os.path.join(gw.gateway.data_dir, "modelway.db")
    deadline = time.monotonic() + timeout
    while True:
        await gw.gateway.ledger.flush()
        rows = ledger_rows(path, request_id)
        if rows or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 1, rows
    return rows[0]


__all__ = ["KEY_A", "KEY_B", "WEATHER", "ledger_row"]
