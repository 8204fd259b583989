"""A node whose Redis and PostgreSQL cannot be reached from the start still starts and serves
(node-local state), says so on /readyz and /metrics, and answers at once; the embedded mode
reports itself as such."""
from __future__ import annotations

import time

from tests.engines import free_port

ROUTES = """
auth: {{mode: none}}
providers: {{mock: {{type: mock}}}}
models:
  mock-echo: {{targets: [{{provider: mock}}]}}
{state}
"""


async def test_a_node_starts_and_serves_while_its_engines_are_unreachable(make_gateway, http):
    dead = free_port()                               # nothing listens there
    gw = await make_gateway(ROUTES.format(state=f'state: {{redis: "redis://127.0.0.1:{dead}/0", '
                                                f'database: "postgresql://u:hunter2@127.0.0.1:{dead}/db"}}'))
    async with http.get(gw.url + "/readyz") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "degraded", body
    assert body["state"]["mode"] == "shared"
    assert body["state"]["redis"]["up"] is False and "Connect" in body["state"]["redis"]["error"]
    assert body["state"]["postgresql"]["up"] is False
    assert "hunter2" not in str(body)
    client = gw.client()
    answer = await client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hi"
    created = await client.responses.create(model="mock-echo", input="hello")
    assert created.store is False and created.output_text == "hello"
    started = time.monotonic()
    async with http.get(gw.url + "/v1/responses/resp_123") as resp:
        err = await resp.json()
    assert resp.status == 503 and err["error"]["code"] == "state_unavailable"
    assert time.monotonic() - started < 0.5
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'modelway_state_backend_up{engine="redis"} 0' in text
    assert 'modelway_state_backend_up{engine="postgresql"} 0' in text


async def test_the_embedded_mode_says_so(make_gateway, http):
    gw = await make_gateway(ROUTES.format(state=""))
    async with http.get(gw.url + "/readyz") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready"
    assert body["state"] == {"mode": "embedded", "degraded": False}
    async with http.get(gw.url + "/metrics") as resp:
        assert "modelway_state_backend_up" not in await resp.text()
    created = await gw.client().responses.create(model="mock-echo", input="hello")
    assert created.store is True
