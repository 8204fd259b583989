"""Hot reload of routes.yaml in a running `modelway serve`: SIGHUP (or a changed file with
`server.watch_config: true`) swaps the table atomically; a stream started before the reload
finishes on the old table; a broken file keeps the old table and the log names the line."""
from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.ops.conftest import CHAT, chat, eventually, ledger_rows, readyz, stream_text, version_of, write_config

V1 = """\
server: {{data_dir: ./var, drain_seconds: 10, watch_config: {watch}}}
middlewares: [access_log, accounting]
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{url}"}}
models:
  old-model: {{targets: [{{provider: mock}}]}}
  gated: {{targets: [{{provider: up, model: gated}}]}}
"""
# the old provider is removed and its model moved to a new one: the in-flight stream must
# still finish through the old provider's pool, which is closed only after it.
V2 = """\
server: {{data_dir: ./var, drain_seconds: 10, watch_config: {watch}}}
middlewares: [access_log, accounting]
providers:
  mock: {{type: mock}}
  up2: {{type: openai, base_url: "{url}"}}
models:
  new-model: {{targets: [{{provider: mock}}]}}
  gated: {{targets: [{{provider: up2, model: gated}}]}}
"""
GATED_TEXT = "Hello from faulty"       # the `gated` stream of tests/fakes/faulty_upstream.py
BROKEN = {
    "unknown-field": ("  new-model: {targets: [{provider: mock}], pricng: {input: 1}}\n", "pricng"),
    "bad-provider": ("  new-model: {targets: [{provider: nosuch}]}\n", "nosuch"),
    "invalid-yaml": ("  new-model: {targets: [{provider: mock}]}}\n", "invalid YAML"),
}


async def test_sighup_swaps_the_table_while_an_inflight_stream_finishes_on_the_old_one(
        start_server, http, faulty, tmp_path):
    v1_text = V1.format(watch="false", url=faulty.url)
    server = await start_server(v1_text)
    assert (await readyz(http, server.url))["config_version"] == version_of(v1_text)
    status, _, _ = await chat(http, server.url, "old-model")
    assert status == 200

    resp = await http.post(server.url + CHAT, json={"model": "gated", "stream": True,
                                                    "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert first.startswith(b"data: {")

    v2_text = write_config(server.config, V2.format(watch="false", url=faulty.url))
    server.proc.send_signal(signal.SIGHUP)

    async def swapped():
        return (await readyz(http, server.url))["config_version"] == version_of(v2_text)

    await eventually(swapped, 10, "the new config_version on /readyz", server)
    status, _, body = await chat(http, server.url, "new-model", "from the new table")
    assert status == 200 and body["choices"][0]["message"]["content"] == "from the new table"
    status, _, body = await chat(http, server.url, "old-model")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert server.events("config_reloaded")[-1]["version"] == version_of(v2_text)

    faulty.gate.set()                            # let the old stream go on
    raw = first + await asyncio.wait_for(resp.read(), 5)
    assert stream_text(raw) == GATED_TEXT

    async with http.post(server.url + CHAT, json={"model": "gated", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]}) as r2:
        assert stream_text(await r2.read()) == GATED_TEXT
    await eventually(lambda: len([r for r in ledger_rows(tmp_path / "var") if r["model"] == "gated"]) == 2,
                     5, "two ledger rows for the streams", server)
    rows = [r for r in ledger_rows(tmp_path / "var") if r["model"] == "gated"]
    assert [(r["provider"], r["status"]) for r in rows] == [("up", 200), ("up2", 200)]
    assert server.terminate() == 0


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_edit_keeps_the_old_table_and_the_log_names_the_line(start_server, http, faulty, case):
    v1_text = V1.format(watch="false", url=faulty.url)
    server = await start_server(v1_text)
    line_text, needle = BROKEN[case]
    broken = v1_text + line_text
    bad_line = broken.splitlines().index(line_text.rstrip("\n")) + 1
    write_config(server.config, broken)
    server.proc.send_signal(signal.SIGHUP)
    problems = await eventually(lambda: [e["problem"] for e in server.events("reload_failed")], 10,
                                "a reload_failed log line", server)
    assert any(f"routes.yaml:{bad_line}:" in p and needle in p for p in problems), problems
    assert (await readyz(http, server.url))["config_version"] == version_of(v1_text)
    status, _, _ = await chat(http, server.url, "old-model")
    assert status == 200                          # the old table keeps serving
    status, _, _ = await chat(http, server.url, "new-model")
    assert status == 404
    assert not server.events("config_reloaded")
    assert server.terminate() == 0


async def test_watch_config_reloads_on_a_file_change(start_server, http, faulty):
    v1_text = V1.format(watch="true", url=faulty.url)
    server = await start_server(v1_text)
    v2_text = write_config(server.config, V2.format(watch="true", url=faulty.url))

    async def swapped():
        return (await readyz(http, server.url))["config_version"] == version_of(v2_text)

    await eventually(swapped, 10, "the watcher to reload", server)
    status, _, _ = await chat(http, server.url, "new-model")
    assert status == 200
    write_config(server.config, v2_text + "  broken: {targets: []}\n")     # a broken edit is ignored
    await eventually(lambda: server.events("reload_failed"), 10, "reload_failed", server)
    assert (await readyz(http, server.url))["config_version"] == version_of(v2_text)
    assert server.terminate() == 0


POOLS_V1 = """\
server: {{data_dir: "{data_dir}", drain_seconds: 5}}
middlewares: [accounting]
providers:
  kept: {{type: openai, base_url: "{url}"}}
  gone: {{type: openai, base_url: "{url}"}}
models:
  via-kept: {{targets: [{{provider: kept, model: ok}}]}}
  via-gone: {{targets: [{{provider: gone, model: gated}}]}}
"""


async def test_reload_keeps_unchanged_pools_and_closes_removed_ones_after_their_last_request(
        make_gateway, faulty, tmp_path):
    """In-process: the provider objects (and their connection pools) of unchanged providers
    survive a reload; a removed provider is closed only once its in-flight stream ended."""
    gw = await make_gateway(POOLS_V1.format(data_dir=tmp_path / "var", url=faulty.url))
    old = gw.gateway.state
    kept, gone = old.providers["kept"], old.providers["gone"]
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + CHAT, json={"model": "via-gone", "stream": True,
                                                    "messages": [{"role": "user", "content": "hi"}]})
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        v2 = POOLS_V1.replace('  gone: {{type: openai, base_url: "{url}"}}\n', "").replace(
            "  via-gone: {{targets: [{{provider: gone, model: gated}}]}}\n", "")
        write_config(tmp_path / "routes.yaml", v2.format(data_dir=tmp_path / "var", url=faulty.url))
        reload = asyncio.ensure_future(gw.gateway.reload())
        await eventually(lambda: gw.gateway.state is not old, 5, "the swap")
        assert gw.gateway.state.providers["kept"] is kept          # same pool
        assert "gone" not in gw.gateway.state.providers
        await asyncio.sleep(0.3)
        assert not gone.session.closed                            # still serving its last stream
        faulty.gate.set()
        raw = first + await asyncio.wait_for(resp.read(), 5)
        assert stream_text(raw) == GATED_TEXT
        assert await asyncio.wait_for(reload, 5) is True        # returns at the swap, closes in the background
        await eventually(lambda: gone.session.closed, 5, "the retired provider closed")
        assert not kept.session.closed
        async with http.post(gw.url + CHAT, json={"model": "via-kept",
                                                  "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
