"""Metrics: observed rows come out as valid Prometheus text, merged over worker processes."""
import os
import re

import pytest

from proxy.store.ledger import row_values
from proxy.store.metrics import Metrics

DEAD_PID = 4_194_304 + 12_345          # above Linux's largest pid_max: never a live process

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})?'
    r' (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')
META = re.compile(r'^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* '
                  r'(counter|gauge|histogram|summary|untyped))$')


def _row(**over):
    row = {"model": "gpt-4o", "provider": "openai", "status": 200, "prompt_tokens": 100,
           "completion_tokens": 20, "cached_tokens": 40, "cache_write_tokens": 0,
           "reasoning_tokens": 5, "cost": 0.0015, "latency_ms": 300.0, "ttft_ms": 80.0,
           "cache_hit": False, "error_type": None, "attempts": 1}
    row.update(over)
    return row_values(row)


def _parse(text: str) -> dict[str, float]:
    assert text.endswith("\n")
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert META.match(line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        assert name not in samples, f"duplicate series {name}"
        samples[name] = float(value)
    return samples


def test_observe_then_render(tmp_path):
    m = Metrics(tmp_path)
    m.observe(_row(), "gpt-4o")
    m.observe(_row(status=502, error_type="upstream_error", completion_tokens=0, cost=0,
                   latency_ms=2000.0, ttft_ms=None), "gpt-4o")
    m.observe(_row(model='we"ird\\mo\ndel', cache_hit=True, cost=0, attempts=0), 'we"ird\\mo\ndel')
    m.inc("modelway_upstream_errors_total", ("openai", "upstream_error"))   # as the dispatcher counts a failed call
    m.set_gauge("modelway_target_cooldown", {"target": "openai/gpt-4o"}, 1,
                help="1 while a target is cooling down after errors.")
    text = m.render()
    s = _parse(text)

    assert "# TYPE modelway_requests_total counter" in text
    assert "# TYPE modelway_request_latency_seconds histogram" in text
    assert s['modelway_requests_total{model="gpt-4o",provider="openai",status="200"}'] == 1
    assert s['modelway_requests_total{model="gpt-4o",provider="openai",status="502"}'] == 1
    assert s['modelway_tokens_total{model="gpt-4o",kind="prompt"}'] == 200
    assert s['modelway_tokens_total{model="gpt-4o",kind="completion"}'] == 20
    assert s['modelway_tokens_total{model="gpt-4o",kind="cached"}'] == 80
    assert 'kind="cache_write"' not in text
    assert s['modelway_cost_usd_total{model="gpt-4o"}'] == 0.0015
    assert s['modelway_upstream_errors_total{provider="openai",type="upstream_error"}'] == 1
    assert s['modelway_cache_hits_total{model="we\\"ird\\\\mo\\ndel"}'] == 1
    lat = 'modelway_request_latency_seconds'
    assert s[f'{lat}_bucket{{model="gpt-4o",le="0.25"}}'] == 0
    assert s[f'{lat}_bucket{{model="gpt-4o",le="0.5"}}'] == 1
    assert s[f'{lat}_bucket{{model="gpt-4o",le="2.5"}}'] == 2
    assert s[f'{lat}_bucket{{model="gpt-4o",le="+Inf"}}'] == 2
    assert s[f'{lat}_count{{model="gpt-4o"}}'] == 2
    assert s[f'{lat}_sum{{model="gpt-4o"}}'] == 2.3
    assert s['modelway_ttft_seconds_count{model="gpt-4o"}'] == 1
    assert s['modelway_target_cooldown{target="openai/gpt-4o"}'] == 1


def test_workers_are_merged_and_dead_workers_keep_their_totals(tmp_path):
    me = Metrics(tmp_path)
    dead = Metrics(tmp_path, pid=DEAD_PID)           # a worker that has exited
    for _ in range(3):
        dead.observe(_row(), "gpt-4o")
    dead.set_gauge("modelway_target_cooldown", {"target": "t"}, 1)
    dead.write_snapshot()
    assert (tmp_path / "metrics" / f"{DEAD_PID}.json").exists()

    me.observe(_row(cost=0.0005), "gpt-4o")
    me.write_snapshot()
    me.observe(_row(cost=0.0005), "gpt-4o")                     # live state, newer than my file
    s = _parse(me.render())
    assert s['modelway_requests_total{model="gpt-4o",provider="openai",status="200"}'] == 5
    assert s['modelway_cost_usd_total{model="gpt-4o"}'] == pytest.approx(0.0055)
    assert s['modelway_request_latency_seconds_count{model="gpt-4o"}'] == 5
    assert s['modelway_request_latency_seconds_bucket{model="gpt-4o",le="0.5"}'] == 5
    assert not any(k.startswith("modelway_target_cooldown") for k in s)   # dead: gauge gone

    # another live worker reads the same totals from the files, once mine is written again
    me.write_snapshot()
    other = Metrics(tmp_path, pid=os.getppid())
    assert _parse(other.render())[
        'modelway_requests_total{model="gpt-4o",provider="openai",status="200"}'] == 5


async def test_snapshot_loop_and_compaction_keep_totals(tmp_path):
    dead = Metrics(tmp_path, pid=DEAD_PID)
    dead.observe(_row(), "gpt-4o")
    dead.write_snapshot()
    me = Metrics(tmp_path, interval=0.01)
    await me.start()                                  # folds the dead worker into dead.json
    files = sorted(p.name for p in (tmp_path / "metrics").glob("*.json"))
    assert files == ["dead.json"]
    me.observe(_row(), "gpt-4o")
    await me.close()
    assert (tmp_path / "metrics" / f"{os.getpid()}.json").exists()

    reader = Metrics(tmp_path, pid=os.getppid())
    s = _parse(reader.render())
    assert s['modelway_requests_total{model="gpt-4o",provider="openai",status="200"}'] == 2
    assert s['modelway_ttft_seconds_bucket{model="gpt-4o",le="0.1"}'] == 2
    assert _parse(await me.arender()) == s


def test_render_without_data_dir_shows_only_this_process():
    m = Metrics()
    m.observe(_row(status=429, provider=None, error_type="rate_limit_error", attempts=0), "")
    s = _parse(m.render())
    # refused before routing: the model is only what the client asked for, not a label
    assert s['modelway_requests_total{model="",provider="",status="429"}'] == 1
    assert not any(k.startswith("modelway_upstream_errors_total") for k in s)


async def test_long_labels_are_cut_and_garbage_files_of_older_versions_are_compacted_away(tmp_path):
    """An older version labelled requests by the model name a client sent: 100 KB names, kept in
    metrics/*.json across restarts. Those series are dropped, and gone from the files once the
    next worker starts."""
    import orjson
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    junk = "openai/" + "x" * 100_000
    old = {"pid": DEAD_PID, "instance": "old", "counters": {
        "modelway_requests_total": [[[junk, "up", "404"], 33], [["gpt-4o", "openai", "200"], 2]]},
        "histograms": {"modelway_request_latency_seconds": [[[junk], [1] + [0] * 13 + [0.01]]]}, "gauges": {}}
    (mdir / f"{DEAD_PID}.json").write_bytes(orjson.dumps(old))
    (mdir / "dead.json").write_bytes(orjson.dumps({**old, "pid": 0, "instance": "dead", "absorbed": []}))
    me = Metrics(tmp_path)
    await me.start()
    me.observe(_row(), "m" * 500)                 # a route name longer than a label may be
    me.set_gauge("modelway_target_cooldown", {"provider": "up", "model": "y" * 500}, 1)
    me.inc("modelway_upstream_errors_total", ("up", "z" * 500))
    text = await me.arender()
    await me.close()
    s = _parse(text)
    assert s['modelway_requests_total{model="gpt-4o",provider="openai",status="200"}'] == 4
    assert len(text) < 10_000 and "x" * 101 not in text
    assert s[f'modelway_requests_total{{model="{"m" * 100}",provider="openai",status="200"}}'] == 1
    assert s[f'modelway_target_cooldown{{model="{"y" * 100}",provider="up"}}'] == 1
    assert s[f'modelway_upstream_errors_total{{provider="up",type="{"z" * 100}"}}'] == 1
    assert sum(p.stat().st_size for p in mdir.glob("*.json")) < 20_000
