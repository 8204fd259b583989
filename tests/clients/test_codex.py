"""The Codex CLI as it ships (npm `@openai/codex`), run as `codex exec` against the gateway.

Codex speaks only the Responses API, streamed, with store false, encrypted reasoning asked for,
developer/user message items, function tools, a namespace tool and web_search. Each test runs the
real binary with a fresh CODEX_HOME whose config.toml (checked with --strict-config) names one
model provider, the gateway, with no sandbox, no update checks, no analytics and no feature that
reaches another host (checked with strace: its only connection is to the gateway).
The binary is MODELWAY_CODEX, else `codex` on PATH, else .ci/node's; without one the tests skip."""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import shutil
import struct
import zlib

import orjson
import pytest

from tests.clients.conftest import KEY_A

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODEX = os.environ.get("MODELWAY_CODEX") or shutil.which("codex") or next(
    (str(p) for p in [ROOT / ".ci/node/node_modules/.bin/codex"] if p.exists()), None)
pytestmark = pytest.mark.skipif(CODEX is None, reason="the Codex CLI is not installed (npm install @openai/codex; "
                                                      "MODELWAY_CODEX=<path to codex>)")
RUN_TIMEOUT = 120.0
MARKER = "mw-codex-ran-7f3a"
TRIGGER = "Check the marker with a shell command."

CONFIG = """
model = "{model}"
model_provider = "modelway"
check_for_update_on_startup = false
sandbox_mode = "danger-full-access"
approval_policy = "never"

[model_providers.modelway]
name = "Modelway"
base_url = "{base_url}/v1"
env_key = "MODELWAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[otel]
exporter = "none"

# the features that reach other hosts (plugin marketplace sync from github.com, apps and model
# discovery on chatgpt.com): off, so the CLI connects to the gateway and nothing else
[features]
plugins = false
remote_plugin = false
plugin_sharing = false
apps = false
api_key_model_discovery = false
in_app_updates = false
tool_suggest = false
"""


async def codex_exec(gw, tmp_path, model: str, *args: str, extra: str = "") -> list[dict]:
    """Run `codex exec --json [args]` once; its JSONL events (the run must exit 0)."""
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    (home / "config.toml").write_text(extra + CONFIG.format(model=model, base_url=gw.url))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "CODEX_HOME": str(home),
           "MODELWAY_API_KEY": KEY_A, "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        CODEX, "exec", "--strict-config", "--json", "--skip-git-repo-check", "-C", str(work), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    errors = [e for e in events if e["type"] in ("error", "turn.failed")]
    assert not errors, (errors, err.decode(errors="replace")[-3000:])
    return events


def items(events: list[dict], kind: str) -> list[dict]:
    return [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind]


@pytest.mark.parametrize("model", ["mock-echo", "up/smart-codex", "claude"])
async def test_plain_answer(gw, tmp_path, model):
    events = await codex_exec(gw, tmp_path, model, "Say hello to the gateway")
    assert items(events, "agent_message")[-1]["text"].strip().endswith("Say hello to the gateway")
    assert events[-1]["type"] == "turn.completed" and events[-1]["usage"]["input_tokens"] > 0


async def test_exec_command_round_trip_openai(gw, tmp_path, fake_openai):
    fake_openai.script[TRIGGER] = ("exec_command", {"cmd": f"echo {MARKER}"})
    events = await codex_exec(gw, tmp_path, "up/smart-codex", TRIGGER)
    ran = items(events, "command_execution")
    assert ran and MARKER in ran[0]["aggregated_output"] and ran[0]["exit_code"] == 0
    # the command's output went back to the model as the tool message answering its call
    last = fake_openai.last["json"]
    call = last["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "exec_command"
    assert last["messages"][-1]["role"] == "tool" and last["messages"][-1]["tool_call_id"] == call["id"]
    assert MARKER in last["messages"][-1]["content"]
    assert MARKER in items(events, "agent_message")[-1]["text"]


@pytest.mark.parametrize("effort", [None, "medium"])
async def test_exec_command_round_trip_anthropic(gw, tmp_path, anthropic_fake, effort):
    """With reasoning on, Claude's signed thinking goes to Codex as encrypted_content and must come
    back intact on the tool-result turn (the fake checks the signature)."""
    anthropic_fake.script[TRIGGER] = ("exec_command", {"cmd": f"echo {MARKER}"})
    extra = f'model_reasoning_effort = "{effort}"\n' if effort else ""
    events = await codex_exec(gw, tmp_path, "claude", TRIGGER, extra=extra)
    ran = items(events, "command_execution")
    assert ran and MARKER in ran[0]["aggregated_output"] and ran[0]["exit_code"] == 0
    last = anthropic_fake.last["messages"]
    use = next(b for b in last[-2]["content"] if b["type"] == "tool_use")
    assert use["name"] == "exec_command" and use["input"] == {"cmd": f"echo {MARKER}"}
    result = next(b for b in last[-1]["content"] if b["type"] == "tool_result")
    assert result["tool_use_id"] == use["id"] and MARKER in orjson.dumps(result["content"]).decode()
    assert MARKER in items(events, "agent_message")[-1]["text"]
    if effort:
        assert anthropic_fake.last["thinking"]["type"] in ("enabled", "adaptive")
        assert anthropic_fake.verified_thinking and last[-2]["content"][0]["type"] == "thinking"
        assert items(events, "reasoning")


async def test_resume_sends_the_history_back(gw, tmp_path, anthropic_fake):
    """`codex exec resume --last`: the second run sends the first turn back as items (the call, its
    output, the answer, the thinking as the gateway's encrypted_content), stateless (store false)."""
    anthropic_fake.script[TRIGGER] = ("exec_command", {"cmd": f"echo {MARKER}"})
    extra = 'model_reasoning_effort = "high"\n'
    await codex_exec(gw, tmp_path, "claude", TRIGGER, extra=extra)
    verified = len(anthropic_fake.verified_thinking)
    events = await codex_exec(gw, tmp_path, "claude", "resume", "--last", "Thanks, all done?", extra=extra)
    assert items(events, "agent_message")[-1]["text"].endswith("Thanks, all done?")
    history = anthropic_fake.last["messages"]
    kinds = [[b["type"] for b in m["content"]] for m in history]
    assert kinds[1] == ["thinking", "tool_use"] and kinds[2] == ["tool_result"] and kinds[-1][-1] == "text"
    assert MARKER in orjson.dumps(history[2]).decode()
    assert len(anthropic_fake.verified_thinking) > verified       # the first turn's signature came back intact


def write_png(path: pathlib.Path) -> None:
    """A 4x4 red PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


async def test_image_attachment(gw, tmp_path, fake_openai):
    """`codex exec -i picture.png`: an input_image item part reaches the model as an image_url."""
    write_png(tmp_path / "red.png")
    events = await codex_exec(gw, tmp_path, "up/smart-codex", "Describe the image", "-i", str(tmp_path / "red.png"))
    assert "[images=1 documents=0]" in items(events, "agent_message")[-1]["text"]
    parts = fake_openai.last["json"]["messages"][-1]["content"]
    image = next(p for p in parts if p["type"] == "image_url")
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


NATIVE = """
server: {{data_dir: "{data_dir}"}}
providers:
  native: {{type: openai, base_url: "{openai}", options: {{responses: native}}}}
models:
  "nat/*": {{targets: [{{provider: native}}]}}
keys: [{{label: a, sha256: "{a}"}}]
"""


async def test_native_mode_forwards_codex_requests_as_sent(make_gateway, fake_openai, tmp_path):
    """With `responses: native`, Codex's request reaches the upstream's /responses untouched
    (web_search with it, store false, encrypted reasoning asked for); the answer comes back."""
    gw = await make_gateway(NATIVE.format(data_dir=tmp_path / "var", openai=fake_openai.url,
                                          a=hashlib.sha256(KEY_A.encode()).hexdigest()))
    events = await codex_exec(gw, tmp_path, "nat/gpt-5-codex", "Say hello natively")
    assert items(events, "agent_message")[-1]["text"].endswith("Say hello natively")
    sent = fake_openai.last
    assert sent["path"] == "/v1/responses" and sent["json"]["model"] == "gpt-5-codex"
    assert sent["json"]["store"] is False and sent["json"]["stream"] is True
    assert any(t["type"] == "web_search" for t in sent["json"]["tools"])
    assert {"include", "prompt_cache_key", "client_metadata"} <= set(sent["json"])
