"""GET /metrics: Prometheus text with requests, tokens, cost, latency and time-to-first-token
histograms, upstream errors and cache hits, consistent with the ledger; with two worker
processes sharing the data_dir, each serves the sum after the 1 s snapshot."""
from __future__ import annotations

import asyncio

import openai
import pytest

from tests.cli.procs import Server, clean_env
from tests.middlewares.helpers import (APP, OPS, UNKNOWN, call, eventually, metric, parse_prometheus, routes,
                                       wait_ledger)

HI = [{"role": "user", "content": "hi"}]


async def scrape(http, url: str) -> dict:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_prometheus(await resp.text())


async def test_metrics_count_requests_tokens_cost_errors_cache_hits_and_latency(upstream, make_gateway, http,
                                                                                 data_dir):
    gw = await make_gateway(routes(upstream.url, cache={"enabled": True}))
    client = gw.client(APP)
    miss = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)           # a cache hit
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="up/fail-500", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        await gw.client(UNKNOWN).chat.completions.create(model="mock-echo", messages=HI)
    stream = await client.chat.completions.create(model="mock-echo", messages=HI, stream=True)
    assert [c async for c in stream]

    m = await scrape(http, gw.url)
    assert metric(m, "modelway_requests_total", model="gpt-4o-mini", provider="up", status="200") == 2
    # a wildcard route's requests are labelled by the route, not by the name the client sent
    assert metric(m, "modelway_requests_total", model="up/*", provider="up", status="502") == 1
    assert metric(m, "modelway_requests_total", model="", provider="", status="401") == 1   # never routed
    assert metric(m, "modelway_requests_total", model="mock-echo", provider="mock", status="200") == 1
    assert metric(m, "modelway_requests_total") == 5
    assert metric(m, "modelway_cache_hits_total", model="gpt-4o-mini") == 1
    assert metric(m, "modelway_cost_usd_total", model="gpt-4o-mini") == pytest.approx(miss.usage.cost)
    # one failed upstream call, by its error code, and nothing else (no second series per request)
    errors = {labels: v for (name, labels), v in m.items() if name == "modelway_upstream_errors_total"}
    assert errors == {frozenset({("provider", "up"), ("type", "upstream_error")}): 1}

    rows = await wait_ledger(data_dir, 4)      # the 401 has no row
    for kind in ("prompt", "completion"):
        for model in ("gpt-4o-mini", "mock-echo"):
            assert metric(m, "modelway_tokens_total", model=model, kind=kind) == \
                sum(r[f"{kind}_tokens"] for r in rows if r["model"] == model), (model, kind)
    assert metric(m, "modelway_cost_usd_total") == pytest.approx(sum(r["cost"] for r in rows))
    assert metric(m, "modelway_auth_failures_total", reason="invalid_api_key") == 1

    count = metric(m, "modelway_request_latency_seconds_count", model="gpt-4o-mini")
    assert count == 2 and metric(m, "modelway_request_latency_seconds_sum", model="gpt-4o-mini") > 0
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in m.items()
                     if name == "modelway_request_latency_seconds_bucket" and ("model", "gpt-4o-mini") in labels)
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))          # cumulative
    assert metric(m, "modelway_ttft_seconds_count", model="mock-echo") == 1
    assert metric(m, "modelway_ttft_seconds_bucket", model="mock-echo", le="+Inf") == 1


async def test_clients_cannot_add_series_with_model_names(upstream, make_gateway, http, data_dir):
    """33 requests with 100 KB model names through a wildcard route (and to no route at all)
    leave /metrics small: the label is the route's name."""
    gw = await make_gateway(routes(upstream.url, server={"data_dir": str(data_dir), "max_body_mb": 1}))
    client = gw.client(APP)
    for i in range(33):
        name = f"{i}" + "x" * 100_000
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="up/fail-500" + name, messages=HI)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nowhere/" + name, messages=HI)
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert len(text) < 20_000, len(text)
    m = parse_prometheus(text)
    assert metric(m, "modelway_requests_total", model="up/*", status="502") == 33
    assert metric(m, "modelway_requests_total", model="", status="404") == 33
    rows = await wait_ledger(data_dir, 66)     # the ledger keeps a model name's first 256 characters
    assert {len(r["model"]) for r in rows} == {256}
    assert sum(len(r["upstream_model"] or "") for r in rows) < 66 * 300
    await gw.gateway.metrics.close()          # the snapshot file on disk is as small
    assert sum(p.stat().st_size for p in (data_dir / "metrics").glob("*.json")) < 50_000


async def test_two_worker_processes_sharing_the_data_dir_add_up(make_gateway, http, tmp_path):
    """This process is one worker; `modelway serve` on the same routes.yaml is another."""
    here = await make_gateway(routes(None))
    other = Server(tmp_path, "--config", str(tmp_path / "routes.yaml"), env=clean_env())
    try:
        await asyncio.to_thread(other.wait_listening)
        for _ in range(3):
            await here.client(APP).chat.completions.create(model="mock-echo", messages=HI)
        for _ in range(2):
            status, _, _ = await call(http, "POST", other.url + "/v1/chat/completions", APP,
                                      {"model": "mock-lazy", "messages": HI})
            assert status == 200

        def totals(m):
            return (metric(m, "modelway_requests_total", model="mock-echo", status="200"),
                    metric(m, "modelway_requests_total", model="mock-lazy", status="200"))

        async def both_add_up():
            seen = [totals(await scrape(http, here.url)), totals(await scrape(http, other.url))]
            return seen if seen == [(3, 2), (3, 2)] else None
        await eventually(both_add_up, timeout=4, interval=0.1, what="both workers' metrics adding up")
        async def all_rows():      # the other worker's ledger flushes on its own 0.25 s beat
            _, _, activity = await call(http, "GET", here.url + "/v1/account/activity", OPS)
            models = sorted(r["model"] for r in activity["data"])
            return models if models == ["mock-echo"] * 3 + ["mock-lazy"] * 2 else None
        await eventually(all_rows, timeout=4, interval=0.1, what="both workers' ledger rows")
    finally:
        await asyncio.to_thread(other.terminate)
