"""Prometheus metrics, correct with several worker processes.

Each process counts in memory (`observe(row, model)` per request queues the ledger row; they
are counted in one pass per snapshot). Every second, if anything changed, it writes a snapshot to
`data_dir/metrics/<pid>.json` (write + atomic rename, in a thread). `render()` / `arender()`
merges the files of all workers (proxy.store.metrics_files), using this process's live state
instead of its own file, into Prometheus text format 0.0.4.

Counters and histograms are summed over all files, including those of dead workers, so totals
stay monotonic. Every minute a worker folds dead workers' files into `metrics/dead.json` (under
an flock; the file remembers which (pid, instance) it absorbed, so a crash halfway neither
loses nor double-counts). Gauges are per-process views (e.g. a target's cooldown state): only
live workers count, merged by max.

Label values are a bounded set: the `model` label is the route's name (`openai/*` for every
model a wildcard route forwards, "" for a request refused before it was routed), never the
name a client sent, and every label value is cut to LABEL_MAX characters. Series with longer
values, which older versions could write, are dropped when a file is read and compacted away.
"""
from __future__ import annotations

import asyncio
import bisect
import operator
import os
import re
import secrets
import time
from collections import Counter
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.store.db import LEDGER_COLUMNS, NONE_NUMBER, grouped, stop_task
from proxy.store.metrics_files import (LABEL_MAX, add, compact, merge, read_others, write_atomic,
                                       live_gauge)

__all__ = ["COUNTERS", "HISTOGRAMS", "LABEL_MAX", "Metrics", "live_gauge"]

log = structlog.get_logger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TOKEN_KINDS = ("prompt", "completion", "cached", "cache_write", "reasoning")

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "modelway_requests_total": ("Requests by model, provider and HTTP status.",
                                ("model", "provider", "status")),
    "modelway_tokens_total": ("Tokens by model and kind (prompt includes cached and "
                              "cache_write).", ("model", "kind")),
    "modelway_cost_usd_total": ("Cost in USD by model.", ("model",)),
    "modelway_upstream_errors_total": ("Failed upstream calls (each retry and fallback counts), by "
                                       "provider and error code.", ("provider", "type")),
    "modelway_cache_hits_total": ("Requests answered from the response cache.", ("model",)),
    "modelway_auth_failures_total": ("Requests refused with 401, by reason (missing_api_key, "
                                     "invalid_api_key, key_disabled, key_expired).", ("reason",)),
    "modelway_ledger_write_failures_total": ("Failed ledger writes (each retried batch counts).", ()),
    "modelway_ledger_rows_dropped_total": ("Ledger rows dropped because the queue of unwritten rows was "
                                           "full.", ()),
    "modelway_cache_backend_errors_total": ("Failed calls of the shared response cache (Redis), by operation "
                                            "(get, set, probe): each is a miss or a store skipped.", ("op",)),
    "modelway_key_store_lookups_total": ("Key-store lookups of keys a worker did not know yet, by "
                                         "result (found, missing, error).", ("result",)),
    "modelway_limits_uncounted_total": ("Requests refused (503) because their key's limits could not "
                                        "be counted (counters table full).", ()),
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "modelway_request_latency_seconds": ("Request latency until the last byte.", ("model",),
                                         LATENCY_BUCKETS),
    "modelway_ttft_seconds": ("Time to first token of streamed answers.", ("model",),
                              TTFT_BUCKETS),
}
# the ledger row's values _fold() groups by, and those it counts, in the order it unpacks them
_PROVIDER = operator.itemgetter(LEDGER_COLUMNS.index("provider"))
_STATUS = operator.itemgetter(LEDGER_COLUMNS.index("status"))
_COUNTED = operator.itemgetter(*(LEDGER_COLUMNS.index(c) for c in (
    "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost",
    "cache_hit", "latency_ms", "ttft_ms")))
# the histograms' bounds in ms, as the ledger row has the durations
_LATENCY_MS = tuple(round(b * 1000, 6) for b in LATENCY_BUCKETS)
_TTFT_MS = tuple(round(b * 1000, 6) for b in TTFT_BUCKETS)
FOLD_AT = 4096       # observed rows waiting to be counted at most
COMPACT_EVERY = 60.0
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

Labels = tuple  # label values in the metric's label-name order; for gauges, (name, value) pairs


class Metrics:
    """In-process counters, histograms and gauges of one worker, plus the multi-process view."""

    def __init__(self, data_dir: str | Path | None = None, *, pid: int | None = None,
                 interval: float = 1.0) -> None:
        self.dir = Path(data_dir) / "metrics" if data_dir is not None else None
        self.pid = os.getpid() if pid is None else pid
        self.instance = secrets.token_hex(8)
        self.interval = interval
        self._counters: dict[str, dict[Labels, float]] = {n: {} for n in COUNTERS}
        # (model, provider, status) -> [requests, prompt, completion, cached, cache_write and
        # reasoning tokens, cost, cache hits], the per-request counters (see observe)
        self._requests: dict[tuple, list] = {}
        self._rows: list[tuple] = []     # observed, not yet counted
        self._models: list[str] = []     # their model labels
        self._hists: dict[str, dict[Labels, list]] = {n: {} for n in HISTOGRAMS}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._gauge_help: dict[str, str] = {}
        self._dirty = True
        self._task: asyncio.Task | None = None

    # --- recording (event loop) ----------------------------------------------------------
    def observe(self, row: tuple, model: str) -> None:
        """Count one finished request: the ledger row (a tuple in LEDGER_COLUMNS order, not to
        be changed afterwards) under the `model` label, the route's name ("" if the request
        was refused before it was routed). It is queued, and counted with the others in one
        pass when the next snapshot is taken (every `interval`, and for every /metrics answer),
        or when FOLD_AT are waiting: one tight loop is cheaper than the same work spread over
        requests."""
        self._rows.append(row)
        self._models.append(model)
        if len(self._rows) >= FOLD_AT:
            self._fold()
        self._dirty = True

    def _fold(self) -> None:
        """Count the queued rows: grouped by (model, provider, status), each group's columns
        added up in C (sum, bisect and Counter over the group's transposed values), into one
        list per group, which snapshot() folds into the exported series, and into the
        histograms. Per row this is a few C calls, not a dozen Python statements."""
        rows, models, self._rows, self._models = self._rows, self._models, [], []
        keys = list(zip(models, map(_PROVIDER, rows), map(_STATUS, rows)))
        for (model, provider, status), group in grouped(keys, rows).items():
            model = _cap(model or "")
            *sums, latencies, ttfts = zip(*map(_COUNTED, group))
            labels = (model, _cap(provider or ""), status or 0)
            s = self._requests.get(labels)
            if s is None:
                s = self._requests[labels] = [0, 0, 0, 0, 0, 0, 0.0, 0]
            s[0] += len(group)
            for i, column in enumerate(sums, 1):     # tokens by kind, cost, cache hits
                s[i] += sum(filter(None, column))
            _observe(self._hists["modelway_request_latency_seconds"], (model,), _LATENCY_MS, latencies)
            _observe(self._hists["modelway_ttft_seconds"], (model,), _TTFT_MS, ttfts)   # -1: no token came

    def _counter_series(self) -> dict[str, dict[Labels, float]]:
        """The counters with the per-request lists folded in: {name: {labels: value}}."""
        out = {n: dict(series) for n, series in self._counters.items()}
        requests, tokens = out["modelway_requests_total"], out["modelway_tokens_total"]
        cost, hits = out["modelway_cost_usd_total"], out["modelway_cache_hits_total"]
        for (model, provider, status), s in self._requests.items():
            add(requests, (model, provider, str(status)), s[0])
            for i, kind in enumerate(TOKEN_KINDS, 1):
                if s[i]:
                    add(tokens, (model, kind), s[i])
            if s[6]:
                add(cost, (model,), s[6])
            if s[7]:
                add(hits, (model,), s[7])
        return out

    def inc(self, name: str, labels: Labels, value: float = 1) -> None:
        """Add to one of COUNTERS; `labels` are the values in its label-name order."""
        add(self._counters[name], tuple(map(_cap, labels)), value)
        self._dirty = True

    def set_gauge(self, name: str, labels: dict[str, str], value: float, help: str = "") -> None:
        """Set a gauge of this process (e.g. modelway_target_cooldown{target=...} 1)."""
        if name not in self._gauges:
            if not _NAME.match(name) or name in COUNTERS or name in HISTOGRAMS:
                raise ValueError(f"invalid gauge name {name!r}")
            self._gauges[name] = {}
            self._gauge_help[name] = help or name
        self._gauges[name][tuple(sorted((str(k), _cap(str(v))) for k, v in labels.items()))] = value
        self._dirty = True

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> dict:
        """A JSON-able copy of this process's state (taken on the loop thread)."""
        self._fold()
        return {
            "pid": self.pid, "instance": self.instance, "time": time.time(),
            "counters": {n: [[list(k), v] for k, v in s.items()]
                         for n, s in self._counter_series().items()},
            "histograms": {n: [[list(k), list(h)] for k, h in s.items()]
                           for n, s in self._hists.items()},
            "gauges": {n: {"help": self._gauge_help[n],
                           "samples": [[[list(p) for p in k], v] for k, v in s.items()]}
                       for n, s in self._gauges.items()},
        }

    def write_snapshot(self) -> None:
        """Write `metrics/<pid>.json` now (blocking)."""
        if self.dir is not None:
            write_atomic(self.dir / f"{self.pid}.json", orjson.dumps(self.snapshot()))
            self._dirty = False

    async def start(self) -> None:
        """Absorb a stale file left under our pid, then write snapshots every `interval`."""
        if self.dir is None or self._task is not None:
            return
        await asyncio.to_thread(compact, self.dir, self.pid, self.instance)
        self._task = asyncio.create_task(self._run(), name="metrics-snapshot")

    async def _run(self) -> None:
        last_compact = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self._dirty:
                    self._dirty = False
                    data = orjson.dumps(self.snapshot())
                    await asyncio.to_thread(write_atomic, self.dir / f"{self.pid}.json", data)
                if time.monotonic() - last_compact > COMPACT_EVERY:
                    last_compact = time.monotonic()
                    await asyncio.to_thread(compact, self.dir, self.pid, self.instance)
            except Exception:
                log.exception("metrics_snapshot_failed")

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
            data = orjson.dumps(self.snapshot())
            await asyncio.to_thread(write_atomic, self.dir / f"{self.pid}.json", data)

    # --- exposition ----------------------------------------------------------------------
    def render(self, data_dir: str | Path | None = None) -> str:
        """Prometheus text of all workers sharing `data_dir` (default: this one's). Blocking
        file reads; from a handler use `arender()`."""
        mdir = Path(data_dir) / "metrics" if data_dir is not None else self.dir
        return _render(merge(self.snapshot(), read_others(mdir, self.pid)))

    async def arender(self) -> str:
        live = self.snapshot()
        return await asyncio.to_thread(lambda: _render(merge(live, read_others(self.dir,
                                                                                 self.pid))))


def _cap(value: str) -> str:
    return value if len(value) <= LABEL_MAX else value[:LABEL_MAX]


def _observe(series: dict, labels: Labels, bounds_ms: tuple[float, ...], values_ms: tuple) -> None:
    """Observations in ms (None or NONE_NUMBER: none) into a histogram of seconds:
    [count per bucket..., count above the last, sum]."""
    if None in values_ms or NONE_NUMBER in values_ms:
        values_ms = [v for v in values_ms if v is not None and v != NONE_NUMBER]
        if not values_ms:
            return
    h = series.get(labels)
    if h is None:
        h = series[labels] = [0] * (len(bounds_ms) + 1) + [0.0]
    for bucket, n in Counter(map(bisect.bisect_left, repeat(bounds_ms), values_ms)).items():
        h[bucket] += n
    h[-1] += sum(values_ms) / 1000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Any) -> str:
    text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs)
    return "{" + text + "}" if text else ""


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v == float("inf"):
        return "+Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _header(lines: list[str], name: str, help: str, kind: str) -> None:
    text = help.replace("\\", "\\\\").replace("\n", "\\n")
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


def _render(merged: dict) -> str:
    lines: list[str] = []
    for name, (help, label_names) in COUNTERS.items():
        _header(lines, name, help, "counter")
        for labels, value in sorted(merged["counters"].get(name, {}).items()):
            lines.append(f"{name}{_labels(zip(label_names, labels))} {_num(value)}")
    for name, (help, label_names, bounds) in HISTOGRAMS.items():
        _header(lines, name, help, "histogram")
        les = [repr(float(b)) for b in bounds] + ["+Inf"]
        for labels, h in sorted(merged["histograms"].get(name, {}).items()):
            pairs = list(zip(label_names, labels))
            total = 0
            for le, n in zip(les, h[:-1]):
                total += n
                lines.append(f"{name}_bucket{_labels(pairs + [('le', le)])} {total}")
            lines.append(f"{name}_sum{_labels(pairs)} {_num(h[-1])}")
            lines.append(f"{name}_count{_labels(pairs)} {total}")
    for name in sorted(merged["gauges"]):
        _header(lines, name, merged["gauge_help"][name], "gauge")
        for pairs, value in sorted(merged["gauges"][name].items()):
            lines.append(f"{name}{_labels(pairs)} {_num(value)}")
    return "\n".join(lines) + "\n"