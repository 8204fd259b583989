"""Prometheus metrics, correct with several worker processes.

Each process counts in memory (`observe(row)` per request queues the ledger row; they are
counted in one pass per snapshot). Every second, if anything changed, it writes a snapshot to
`data_dir/metrics/<pid>.json` (write + atomic rename, in a thread). `render()` / `arender()`
merges the files of all workers, using this process's live state instead of its own file,
into Prometheus text format 0.0.4.

Counters and histograms are summed over all files, including those of dead workers, so totals
stay monotonic. Every minute a worker folds dead workers' files into `metrics/dead.json` (under
an flock; the file remembers which (pid, instance) it absorbed, so a crash halfway neither
loses nor double-counts). Gauges are per-process views (e.g. a target's cooldown state): only
live workers count, merged by max.
"""
from __future__ import annotations

import asyncio
import bisect
import fcntl
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
from proxy.store.files import private_dir, private_file, write_private

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
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "modelway_request_latency_seconds": ("Request latency until the last byte.", ("model",),
                                         LATENCY_BUCKETS),
    "modelway_ttft_seconds": ("Time to first token of streamed answers.", ("model",),
                              TTFT_BUCKETS),
}
# the ledger row's values _fold() groups by, and those it counts, in the order it unpacks them
_LABELS = operator.itemgetter(*(LEDGER_COLUMNS.index(c) for c in ("model", "provider", "status")))
_COUNTED = operator.itemgetter(*(LEDGER_COLUMNS.index(c) for c in (
    "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost",
    "cache_hit", "latency_ms", "ttft_ms")))
# the histograms' bounds in ms, as the ledger row has the durations
_LATENCY_MS = tuple(round(b * 1000, 6) for b in LATENCY_BUCKETS)
_TTFT_MS = tuple(round(b * 1000, 6) for b in TTFT_BUCKETS)
FOLD_AT = 4096       # observed rows waiting to be counted at most
DEAD_FILE = "dead.json"
COMPACT_EVERY = 60.0
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

Labels = tuple  # label values in the metric's label-name order; for gauges, (name, value) pairs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._hists: dict[str, dict[Labels, list]] = {n: {} for n in HISTOGRAMS}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._gauge_help: dict[str, str] = {}
        self._dirty = True
        self._task: asyncio.Task | None = None

    # --- recording (event loop) ----------------------------------------------------------
    def observe(self, row: tuple) -> None:
        """Count one finished request: the ledger row (a tuple in LEDGER_COLUMNS order, not to
        be changed afterwards). It is queued, and counted with the others in one pass when the
        next snapshot is taken (every `interval`, and for every /metrics answer), or when
        FOLD_AT are waiting: one tight loop is cheaper than the same work spread over requests."""
        self._rows.append(row)
        if len(self._rows) >= FOLD_AT:
            self._fold()
        self._dirty = True

    def _fold(self) -> None:
        """Count the queued rows: grouped by (model, provider, status), each group's columns
        added up in C (sum, bisect and Counter over the group's transposed values), into one
        list per group, which snapshot() folds into the exported series, and into the
        histograms. Per row this is a few C calls, not a dozen Python statements."""
        rows, self._rows = self._rows, []
        for (model, provider, status), group in grouped(list(map(_LABELS, rows)), rows).items():
            # a request refused before it was routed (no key, a limit, an unknown model) counts
            # under model="": its model name is the client's, and a label must not be
            model, provider = (model or "", provider) if provider else ("", "")
            *sums, latencies, ttfts = zip(*map(_COUNTED, group))
            labels = (model, provider, status or 0)
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
            _add(requests, (model, provider, str(status)), s[0])
            for i, kind in enumerate(TOKEN_KINDS, 1):
                if s[i]:
                    _add(tokens, (model, kind), s[i])
            if s[6]:
                _add(cost, (model,), s[6])
            if s[7]:
                _add(hits, (model,), s[7])
        return out

    def inc(self, name: str, labels: Labels, value: float = 1) -> None:
        """Add to one of COUNTERS; `labels` are the values in its label-name order."""
        _add(self._counters[name], tuple(labels), value)
        self._dirty = True

    def set_gauge(self, name: str, labels: dict[str, str], value: float, help: str = "") -> None:
        """Set a gauge of this process (e.g. modelway_target_cooldown{target=...} 1)."""
        if name not in self._gauges:
            if not _NAME.match(name) or name in COUNTERS or name in HISTOGRAMS:
                raise ValueError(f"invalid gauge name {name!r}")
            self._gauges[name] = {}
            self._gauge_help[name] = help or name
        self._gauges[name][tuple(sorted((str(k), str(v)) for k, v in labels.items()))] = value
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
            _write_atomic(self.dir / f"{self.pid}.json", orjson.dumps(self.snapshot()))
            self._dirty = False

    async def start(self) -> None:
        """Absorb a stale file left under our pid, then write snapshots every `interval`."""
        if self.dir is None or self._task is not None:
            return
        await asyncio.to_thread(_compact, self.dir, self.pid, self.instance)
        self._task = asyncio.create_task(self._run(), name="metrics-snapshot")

    async def _run(self) -> None:
        last_compact = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self._dirty:
                    self._dirty = False
                    data = orjson.dumps(self.snapshot())
                    await asyncio.to_thread(_write_atomic, self.dir / f"{self.pid}.json", data)
                if time.monotonic() - last_compact > COMPACT_EVERY:
                    last_compact = time.monotonic()
                    await asyncio.to_thread(_compact, self.dir, self.pid, self.instance)
            except Exception:
                log.exception("metrics_snapshot_failed")

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
            data = orjson.dumps(self.snapshot())
            await asyncio.to_thread(_write_atomic, self.dir / f"{self.pid}.json", data)

    # --- exposition ----------------------------------------------------------------------
    def render(self, data_dir: str | Path | None = None) -> str:
        """Prometheus text of all workers sharing `data_dir` (default: this one's). Blocking
        file reads; from a handler use `arender()`."""
        mdir = Path(data_dir) / "metrics" if data_dir is not None else self.dir
        return _render(_merge(self.snapshot(), _read_others(mdir, self.pid)))

    async def arender(self) -> str:
        live = self.snapshot()
        return await asyncio.to_thread(lambda: _render(_merge(live, _read_others(self.dir,
                                                                                 self.pid))))


def _add(series: dict, labels: Labels, value: float) -> None:
    series[labels] = series.get(labels, 0) + value


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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = private_dir(path.parent) / f".{path.name}.{os.getpid()}.tmp"
    write_private(tmp, data)
    os.replace(tmp, path)


def _load(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _pid_files(mdir: Path) -> list[Path]:
    return [p for p in mdir.glob("*.json") if p.stem.isdigit()]


def _read_others(mdir: Path | None, own_pid: int) -> list[tuple[dict, bool]]:
    """(snapshot, its process is alive) for every file but our own, dead.json included."""
    if mdir is None or not mdir.is_dir():
        return []
    dead = _load(mdir / DEAD_FILE)
    absorbed = {tuple(x) for x in dead.get("absorbed", [])} if dead else set()
    out = [(dead, False)] if dead else []
    for path in _pid_files(mdir):
        pid = int(path.stem)
        snap = _load(path) if pid != own_pid else None
        if snap and (snap.get("pid"), snap.get("instance")) not in absorbed:
            out.append((snap, _pid_alive(pid)))
    return out


def _compact(mdir: Path, own_pid: int, own_instance: str) -> None:
    """Fold files of dead workers (and an older process's file under our pid) into dead.json."""
    with open(private_file(private_dir(mdir) / ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dead = _load(mdir / DEAD_FILE) or {"absorbed": []}
        absorbed = {tuple(x) for x in dead.get("absorbed", [])}
        victims: list[Path] = []
        snaps: list[dict] = []
        for path in _pid_files(mdir):
            pid = int(path.stem)
            if pid == own_pid or not _pid_alive(pid):
                snap = _load(path)
                if snap is None or snap.get("instance") == own_instance:
                    continue
                victims.append(path)
                if (snap.get("pid"), snap.get("instance")) not in absorbed:
                    snaps.append(snap)
                    absorbed.add((snap.get("pid"), snap.get("instance")))
        if not victims:
            return
        merged = _merge(None, [(dead, False)] + [(s, False) for s in snaps])
        _write_atomic(mdir / DEAD_FILE, orjson.dumps(_to_snapshot(merged, absorbed)))
        for path in victims:
            path.unlink(missing_ok=True)
        remaining = {(int(p.stem), (_load(p) or {}).get("instance")) for p in _pid_files(mdir)}
        kept = absorbed & remaining
        if kept != absorbed:
            _write_atomic(mdir / DEAD_FILE, orjson.dumps(_to_snapshot(merged, kept)))


def _merge(live: dict | None, others: list[tuple[dict, bool]]) -> dict:
    """{"counters": {name: {labels: v}}, "histograms": {name: {labels: [..]}},
    "gauges": {name: {labels: v}}, "gauge_help": {name: str}}"""
    out: dict[str, Any] = {"counters": {}, "histograms": {}, "gauges": {}, "gauge_help": {}}
    sources = ([(live, True)] if live else []) + others
    for snap, alive in sources:
        for name, samples in snap.get("counters", {}).items():
            series = out["counters"].setdefault(name, {})
            for labels, value in samples:
                _add(series, tuple(labels), value)
        for name, samples in snap.get("histograms", {}).items():
            series = out["histograms"].setdefault(name, {})
            for labels, h in samples:
                key = tuple(labels)
                cur = series.get(key)
                if cur is None:
                    series[key] = list(h)
                elif len(cur) == len(h):
                    series[key] = [a + b for a, b in zip(cur, h)]
        if not alive:
            continue
        for name, g in snap.get("gauges", {}).items():
            out["gauge_help"][name] = g["help"]
            series = out["gauges"].setdefault(name, {})
            for pairs, value in g["samples"]:
                key = tuple(tuple(p) for p in pairs)
                series[key] = max(series.get(key, value), value)
    return out


def _to_snapshot(merged: dict, absorbed: set) -> dict:
    return {"pid": 0, "instance": "dead", "absorbed": sorted([list(a) for a in absorbed]),
            "counters": {n: [[list(k), v] for k, v in s.items()]
                         for n, s in merged["counters"].items()},
            "histograms": {n: [[list(k), h] for k, h in s.items()]
                           for n, s in merged["histograms"].items()},
            "gauges": {}}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Any) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


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


def live_gauge(data_dir: str | Path, name: str) -> dict[tuple, float]:
    """A gauge as the running workers last wrote it: {(label pairs...): max value} (for the CLI)."""
    out: dict[tuple, float] = {}
    for snap, alive in _read_others(Path(data_dir) / "metrics", own_pid=-1):
        if not alive:
            continue
        for labels, value in ((snap.get("gauges") or {}).get(name) or {}).get("samples", []):
            key = tuple(tuple(pair) for pair in labels)
            out[key] = max(value, out.get(key, value))
    return out
