"""`modelway routes` shows which targets a running gateway on the same data_dir is skipping."""
from __future__ import annotations

import asyncio
import time

from proxy.config import load_config
from proxy.routes_table import rows

CONFIG = """
server: {{data_dir: {data_dir}}}
middlewares: [accounting]
providers:
  up: {{type: openai, base_url: "{url}"}}
models:
  flaky: {{targets: [{{provider: up, model: fail-500}}], retries: 2, cooldown_after: 2, cooldown_seconds: 30}}
  fine: {{targets: [{{provider: up, model: gpt-4o-mini}}]}}
"""


async def test_routes_marks_a_cooling_target(make_gateway, fake_openai, tmp_path):
    gw = await make_gateway(CONFIG.format(data_dir=tmp_path / "var", url=fake_openai.url))
    client = gw.client()
    for _ in range(2):                            # two failed requests (of three attempts each)
        try:
            await client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
        except Exception:
            pass
    config = load_config(str(tmp_path / "routes.yaml"))
    deadline = time.monotonic() + 5
    while True:                                   # the worker writes its metrics every second
        status = {r["model"]: r["status"] for r in rows(config)}
        if "cooling down" in status["flaky"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status["flaky"].endswith("cooling down")
    assert "cooling" not in status["fine"]
