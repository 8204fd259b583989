"""Three nodes with the same `state:` behave as one gateway: a target cooled down on one is
skipped on all; a response stored through one is read, and continued, through another."""
from __future__ import annotations

import orjson

from tests.shared.conftest import BROKEN, KEY_B, eventually, headers, readyz

CHAT = "/v1/chat/completions"


async def chat(http, node, model: str, key: str | None = None):
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with http.post(node.url + CHAT, json=body, headers=headers(*(key,) if key else ())) as resp:
        return resp.status, await resp.read()


def request_lines(node, model: str) -> list[dict]:
    return [e for e in node.events("request") if e.get("model") == model]


async def test_nodes_report_shared_state_ready(cluster, http):
    nodes = await cluster.start(3)
    for node in nodes:
        body = await eventually(lambda: _ready(http, node), 10, "ready with both engines up", node)
        assert body["state"]["mode"] == "shared"
        assert body["state"]["redis"]["up"] and body["state"]["postgresql"]["up"]
        async with http.get(node.url + "/metrics") as resp:
            text = await resp.text()
        assert 'modelway_state_backend_up{engine="redis"} 1' in text
        assert 'modelway_state_backend_up{engine="postgresql"} 1' in text


async def _ready(http, node):
    body = await readyz(http, node.url)
    return body if body["status"] == "ready" else None


async def test_a_cooldown_on_node_1_skips_the_target_on_node_3(cluster, http):
    vm1, vm2, vm3 = await cluster.start(3)
    for node in (vm1, vm3):
        await eventually(lambda: _ready(http, node), 10, "ready", node)
    assert (await chat(http, vm1, "flaky"))[0] == 200          # the broken target fails, the next answers
    await eventually(lambda: request_lines(vm1, "flaky"), 5, "the access line", vm1)
    first = request_lines(vm1, "flaky")[0]
    assert first["attempts"] == 2 and first["upstream_model"] == "echo"
    # node 3 hears of the cooldown (a log line), then skips the broken target: one attempt
    await eventually(lambda: [e for e in vm3.events("cooldown_shared") if e["model"] == BROKEN], 5,
                     "the shared cooldown on vm3", vm3)
    status, raw = await chat(http, vm3, "flaky")
    assert status == 200, raw
    await eventually(lambda: request_lines(vm3, "flaky"), 5, "the access line", vm3)
    line = request_lines(vm3, "flaky")[0]
    assert line["attempts"] == 1 and line["upstream_model"] == "echo", line


async def test_a_response_stored_via_node_1_is_read_and_continued_via_node_2(cluster, http):
    vm1, vm2, vm3 = await cluster.start(3)
    for node in (vm1, vm2, vm3):
        await eventually(lambda: _ready(http, node), 10, "ready", node)
    body = {"model": "mock-echo", "input": "the first question, long enough to count tokens"}
    async with http.post(vm1.url + "/v1/responses", json=body, headers=headers()) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.json()
    assert first["store"] is True
    async with http.get(vm2.url + f"/v1/responses/{first['id']}", headers=headers()) as resp:
        assert resp.status == 200, await resp.text()
        got = await resp.json()
    assert got["id"] == first["id"] and got["output"] == first["output"]
    async with http.get(vm3.url + f"/v1/responses/{first['id']}/input_items", headers=headers()) as resp:
        items = (await resp.json())["data"]
    assert [i["content"][0]["text"] for i in items] == [body["input"]]
    async with http.get(vm2.url + f"/v1/responses/{first['id']}", headers=headers(KEY_B)) as resp:
        assert resp.status == 404                            # another key's response does not exist
    # continued on node 2: the history from node 1 reaches the model (more input tokens)
    alone = await _respond(http, vm2, {"model": "mock-echo", "input": "again"})
    chained = await _respond(http, vm2, {"model": "mock-echo", "input": "again",
                                         "previous_response_id": first["id"]})
    assert chained["output"][0]["content"][0]["text"] == "again"
    assert chained["usage"]["input_tokens"] > alone["usage"]["input_tokens"] + 10
    async with http.delete(vm3.url + f"/v1/responses/{first['id']}", headers=headers()) as resp:
        assert resp.status == 200
    async with http.get(vm1.url + f"/v1/responses/{first['id']}", headers=headers()) as resp:
        assert resp.status == 404


async def _respond(http, node, body: dict) -> dict:
    async with http.post(node.url + "/v1/responses", json=body, headers=headers()) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
        return orjson.loads(raw)
