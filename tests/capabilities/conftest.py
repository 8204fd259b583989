"""The shared capability suite's subjects: one gateway per provider type, each over its fake upstream.

Every test in test_capabilities.py names the feature it exercises (`@pytest.mark.feature(...)`)
and runs once per provider in PROVIDERS. A provider that cannot do something opts out in SKIP,
with the reason shown in the test report; there are no silent gaps: a test without a feature
mark is an error, and SKIP may only name known providers and features. A new provider type adds
one entry to PROVIDERS (its YAML, upstream model names and fake) and inherits the whole suite.
"""
from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.fakes import anthropic_upstream, openai_upstream

PRICING = {"input": 2.0, "output": 8.0, "cached_input": 0.5, "cache_write": 2.5}   # USD per 1M tokens
FEATURES = frozenset({
    "chat", "streaming", "max_tokens", "tools", "parallel_tool_calls", "tool_result_content",
    "structured_outputs", "reasoning", "reasoning_content", "reasoning_tokens", "vision", "pdf", "audio",
    "capability_errors", "usage", "prompt_caching", "errors"})

#: provider -> feature -> why it opts out (shown as the skip reason)
SKIP: dict[str, dict[str, str]] = {
    "openai": {
        "reasoning_content": "OpenAI's Chat Completions API never returns reasoning text, only reasoning_tokens",
    },
    "anthropic": {
        "audio": "Claude takes no audio input (its clear 400 is covered by capability_errors)",
    },
    "mock": {
        "audio": "mock takes no audio (its clear 400 is covered by capability_errors)",
        "parallel_tool_calls": "the mock answers with one tool call per turn",
        "tool_result_content": "the mock echoes the last user message, not the tool results",
        "prompt_caching": "the mock has no prompt cache",
    },
}


@dataclass(frozen=True)
class ProviderSpec:
    yaml: str                   # the provider's entry under `providers:` ({url} is the fake's URL)
    model: str                  # upstream model that answers normally
    failing: str                # upstream model that fails with a 5xx before answering
    stream_failing: str         # upstream model whose stream breaks after the first chunk
    env: dict[str, str]
    fake: Any = None            # the fake upstream's module (FAKES), None for a built-in provider


PROVIDERS: dict[str, ProviderSpec] = {
    "openai": ProviderSpec('{type: openai, base_url: "{url}", api_key: "${UP_KEY}"}',
                           "smart-gpt-4.1", "fail-500", "midstream-error", {"UP_KEY": "sk-up-test"}, openai_upstream),
    "anthropic": ProviderSpec('{type: anthropic, base_url: "{url}", api_key: "${ANTHROPIC_API_KEY}"}',
                              "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-apierror",
                              "claude-sonnet-4-5-midstream-error", {"ANTHROPIC_API_KEY": "sk-ant-test"},
                              anthropic_upstream),
    "mock": ProviderSpec("{type: mock, options: {chunks: 3}}", "mock-1", "mock-error", "mock-stream-error", {}, None),
}

for _name, _table in SKIP.items():                 # an opt-out that names nothing would be a silent gap
    assert _name in PROVIDERS and set(_table) <= FEATURES, f"SKIP[{_name!r}] names unknown features or providers"

CONFIG = """
middlewares: [access_log]
providers:
  under-test: {provider}
models:
  model-under-test: {{targets: [{{provider: under-test, model: {model}}}], pricing: {pricing}}}
  model-no-vision:
    targets: [{{provider: under-test, model: {model}}}]
    capabilities: {{vision: false}}
  model-failing: {{targets: [{{provider: under-test, model: {failing}}}], retries: 0}}
  model-stream-failing: {{targets: [{{provider: under-test, model: {stream_failing}}}], retries: 0}}
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "feature(name): the capability a shared-suite test exercises")


@functools.cache
def _ssl() -> ssl.SSLContext:
    return ssl.create_default_context()      # one for all clients: building one costs ~0.2 s


@dataclass
class Subject:
    """A provider under test: the gateway in front of it, a client, and its fake upstream."""
    name: str
    url: str
    client: openai.AsyncOpenAI
    upstream: Any
    model: str = "model-under-test"

    def sent(self) -> dict | None:
        """The last request body the upstream received (None for the built-in mock)."""
        if self.upstream is None:
            return None
        last = self.upstream.requests[-1]
        return last["json"]

    @staticmethod
    def cost(usage) -> float:
        """What the route's pricing makes of an OpenAI usage object."""
        cached = usage.prompt_tokens_details.cached_tokens or 0
        written = usage.prompt_tokens_details.cache_write_tokens or 0
        return (max(usage.prompt_tokens - cached - written, 0) * PRICING["input"] + cached * PRICING["cached_input"]
                + written * PRICING["cache_write"] + usage.completion_tokens * PRICING["output"]) / 1e6


async def start_fake(module):
    """(fake, runner, url) of a fake upstream module: FakeOpenAI or FakeAnthropic on 127.0.0.1."""
    fake = module.FakeOpenAI() if module is openai_upstream else module.FakeAnthropic(api_key="sk-ant-test")
    runner, url = await module.start(fake)
    return fake, runner, url


@pytest.fixture(params=list(PROVIDERS))
async def subject(request, make_gateway):
    name: str = request.param
    mark = request.node.get_closest_marker("feature")
    assert mark is not None and mark.args[0] in FEATURES, \
        f"{request.node.name}: every capability test names a known feature (@pytest.mark.feature)"
    reason = SKIP[name].get(mark.args[0])
    if reason:
        pytest.skip(f"{name} opts out of {mark.args[0]}: {reason}")
    spec = PROVIDERS[name]
    fake, runner, url = await start_fake(spec.fake) if spec.fake else (None, None, "")
    try:
        pricing = "{" + ", ".join(f"{k}: {v}" for k, v in PRICING.items()) + "}"
        gw = await make_gateway(CONFIG.format(provider=spec.yaml.replace("{url}", url), model=spec.model,
                                              pricing=pricing, failing=spec.failing,
                                              stream_failing=spec.stream_failing), env=spec.env)
        async with gw.client(http_client=openai.DefaultAsyncHttpxClient(verify=_ssl())) as client:
            yield Subject(name, gw.url, client, fake)
    finally:
        if runner is not None:
            await runner.cleanup()

