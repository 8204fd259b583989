"""Claude Code itself (the npm package @anthropic-ai/claude-code) pointed at the gateway: a plain
answer and a tool round trip (the model asks for `Read`, the CLI runs it, the result comes back)
against the mock, a fake OpenAI-compatible upstream and a fake Anthropic API, all on 127.0.0.1.

The CLI is found at $CLAUDE_CODE_BIN, .ci/node/node_modules/.bin/claude (what .ci/run installs)
or on PATH; without it these tests are skipped. It runs with HOME in a temporary directory,
telemetry, auto-update and non-essential traffic off, and an unreachable HTTPS proxy for anything
but 127.0.0.1, so it cannot reach the internet.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import shutil

import pytest

from tests.inbound.conftest import ANT_KEY, PRICING

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "mw-cli-test-key-0123456789"


def _cli() -> str | None:
    for candidate in (os.environ.get("CLAUDE_CODE_BIN"), str(ROOT / ".ci/node/node_modules/.bin/claude"),
                      shutil.which("claude")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CLI = _cli()
pytestmark = pytest.mark.skipif(CLI is None, reason="Claude Code CLI not installed (npm install --prefix .ci/node "
                                                    "@anthropic-ai/claude-code, or set CLAUDE_CODE_BIN)")
CONFIG = """
middlewares: [access_log, auth, ratelimit, presets, cache, accounting]
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{openai}", api_key: up-key}}
  anthropic: {{type: anthropic, base_url: "{anthropic}", api_key: "{ant_key}"}}
models:
  mock-echo: {{targets: [{{provider: mock}}], pricing: {pricing}}}
  gpt-smart: {{targets: [{{provider: up, model: smart-4o}}], pricing: {pricing}}}
  claude-sonnet: {{targets: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}], pricing: {pricing}}}
keys: [{{label: cli, sha256: "{sha}"}}]
"""


@pytest.fixture
async def gateway(make_gateway, fake_openai, fake_anthropic):
    return await make_gateway(CONFIG.format(openai=fake_openai.url, anthropic=fake_anthropic.url, ant_key=ANT_KEY,
                                            pricing=PRICING, sha=hashlib.sha256(KEY.encode()).hexdigest()))


async def claude(gateway, tmp_path, model: str, prompt: str, timeout: float = 120) -> str:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmp_path),
           "ANTHROPIC_BASE_URL": gateway.url, "ANTHROPIC_API_KEY": KEY,
           "ANTHROPIC_SMALL_FAST_MODEL": model, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_COST_WARNINGS": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "-p", prompt, "--model", model, "--allowedTools", "Read", cwd=str(tmp_path), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (out + err).decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def _requests(model: str, fake_openai, fake_anthropic) -> list[dict]:
    """The requests the upstream behind `model` received, in the Anthropic shape for Claude."""
    if model == "claude-sonnet":
        return [r["json"] for r in fake_anthropic.requests if r["path"] == "/v1/messages"]
    return [r["json"] for r in fake_openai.requests if r["path"] == "/v1/chat/completions"]


@pytest.mark.parametrize("model", ["mock-echo", "gpt-smart", "claude-sonnet"])
async def test_plain_answer(gateway, tmp_path, fake_openai, fake_anthropic, model):
    out = await claude(gateway, tmp_path, model, "hello from the cli")
    assert "hello from the cli" in out, out
    if model == "claude-sonnet":
        sent = [r for r in fake_anthropic.requests if r["path"] == "/v1/messages"][-1]
        assert "mid-conversation-system-2026-04-07" in sent["headers"]["anthropic-beta"]
        assert sent["query"] == "beta=true" and sent["json"]["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize("model", ["mock-echo", "gpt-smart", "claude-sonnet"])
async def test_tool_round_trip(gateway, tmp_path, fake_openai, fake_anthropic, model):
    out = await claude(gateway, tmp_path, model, "Read the file notes.txt please")
    requests = _requests(model, fake_openai, fake_anthropic) if model != "mock-echo" else None
    if model == "claude-sonnet":
        results = [b for r in requests for m in r["messages"] if isinstance(m["content"], list)
                   for b in m["content"] if b["type"] == "tool_result"]
        uses = [b for a in fake_anthropic.answers for b in a["content"] if b["type"] == "tool_use"]
        assert uses and uses[0]["name"] == "Read"
        assert results and results[0]["tool_use_id"] == uses[0]["id"]
        assert "Tool results:" in out, out
    elif model == "gpt-smart":
        tool_messages = [m for r in requests for m in r["messages"] if m["role"] == "tool"]
        calls = [c for r in requests for m in r["messages"] if m["role"] == "assistant"
                 for c in m.get("tool_calls") or ()]
        assert calls and calls[0]["function"]["name"] == "Read"
        assert tool_messages and tool_messages[0]["tool_call_id"] == calls[0]["id"]
    else:
        assert out.strip(), out              # the mock echoes the user's turn after the tool result
