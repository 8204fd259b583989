"""The metrics files of `data_dir/metrics/`: one snapshot per worker (`<pid>.json`, written
with an atomic rename), `dead.json` holding the totals of exited workers, and the merge of them
all that /metrics renders (see proxy.store.metrics for what they hold)."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import orjson

from proxy.store.files import private_dir, private_file, write_private

DEAD_FILE = "dead.json"
LABEL_MAX = 100      # characters of a label value at most

Labels = tuple  # label values in the metric's label-name order; for gauges, (name, value) pairs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sane(labels) -> bool:
    """A series of a snapshot file whose label values are within LABEL_MAX (older versions
    labelled by the model name a client sent, of any length)."""
    return all(len(str(v)) <= LABEL_MAX for v in labels)


def add(series: dict, labels: Labels, value: float) -> None:
    series[labels] = series.get(labels, 0) + value


def write_atomic(path: Path, data: bytes) -> None:
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


def read_others(mdir: Path | None, own_pid: int) -> list[tuple[dict, bool]]:
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


def compact(mdir: Path, own_pid: int, own_instance: str) -> None:
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
        if not victims and _all_sane(dead):
            return
        merged = merge(None, [(dead, False)] + [(s, False) for s in snaps])
        write_atomic(mdir / DEAD_FILE, orjson.dumps(_to_snapshot(merged, absorbed)))
        for path in victims:
            path.unlink(missing_ok=True)
        remaining = {(int(p.stem), (_load(p) or {}).get("instance")) for p in _pid_files(mdir)}
        kept = absorbed & remaining
        if kept != absorbed:
            write_atomic(mdir / DEAD_FILE, orjson.dumps(_to_snapshot(merged, kept)))


def _all_sane(snap: dict) -> bool:
    return all(_sane(labels) for kind in ("counters", "histograms")
               for samples in snap.get(kind, {}).values() for labels, _ in samples)


def merge(live: dict | None, others: list[tuple[dict, bool]]) -> dict:
    """{"counters": {name: {labels: v}}, "histograms": {name: {labels: [..]}},
    "gauges": {name: {labels: v}}, "gauge_help": {name: str}}"""
    out: dict[str, Any] = {"counters": {}, "histograms": {}, "gauges": {}, "gauge_help": {}}
    sources = ([(live, True)] if live else []) + others
    for snap, alive in sources:
        for name, samples in snap.get("counters", {}).items():
            series = out["counters"].setdefault(name, {})
            for labels, value in samples:
                if _sane(labels):
                    add(series, tuple(labels), value)
        for name, samples in snap.get("histograms", {}).items():
            series = out["histograms"].setdefault(name, {})
            for labels, h in samples:
                if not _sane(labels):
                    continue
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
                if not _sane(v for _, v in pairs):
                    continue
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


def live_gauge(data_dir: str | Path, name: str) -> dict[tuple, float]:
    """A gauge as the running workers last wrote it: {(label pairs...): max value} (for the CLI)."""
    out: dict[tuple, float] = {}
    for snap, alive in read_others(Path(data_dir) / "metrics", own_pid=-1):
        if not alive:
            continue
        for labels, value in ((snap.get("gauges") or {}).get(name) or {}).get("samples", []):
            key = tuple(tuple(pair) for pair in labels)
            out[key] = max(value, out.get(key, value))
    return out

