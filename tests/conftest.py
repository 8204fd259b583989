"""Shared fixtures: fake upstreams on 127.0.0.1 and a gateway built from a YAML text."""
from __future__ import annotations

import textwrap

import aiohttp
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.gateway import Gateway
from tests.fakes import serve_loopback
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.fakes.openai_upstream import FakeOpenAI, start


@pytest.fixture
async def fake_openai():
    fake = FakeOpenAI()
    runner, url = await start(fake)
    fake.url = url
    yield fake
    await runner.cleanup()


@pytest.fixture
async def faulty():
    """The raw fake upstream (tests/fakes/faulty_upstream.py) for what aiohttp cannot fake."""
    upstream = await FaultyUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def http():
    """A plain aiohttp session, for exact bytes and headers."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def make_gateway(tmp_path):
    """make_gateway(yaml_text, env={...}) -> Running gateway with .url, .app, .gateway, .client()."""
    runners = []

    async def make(yaml_text: str, env: dict | None = None, filename: str | None = None) -> "Running":
        text = textwrap.dedent(yaml_text)
        if "data_dir" not in text:
            text = f"server: {{data_dir: {tmp_path / 'var'}}}\n" + text
        path = tmp_path / (filename or "routes.yaml")
        path.write_text(text)
        config = parse_config(text, str(path), env=env or {})
        gateway = Gateway(config, str(path))
        app = create_app(gateway)
        runner, url = await serve_loopback(app)
        runners.append(runner)
        return Running(url, app, gateway, runner)

    yield make
    for runner in runners:
        await runner.cleanup()


class Running:
    def __init__(self, url, app, gateway, runner):
        self.url, self.app, self.gateway, self.runner = url, app, gateway, runner

    def client(self, api_key: str = "sk-client-test", **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def sync_client(self, api_key: str = "sk-client-test", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    async def close(self):
        await self.runner.cleanup()
