"""Soak: hold many concurrent slow streams through the gateway for minutes while a steady
trickle of short non-streaming requests runs beside them; report the gateway's RSS over time,
errors, ledger rows against requests sent, and the short requests' latency.

    python -m bench.soak [--minutes 2] [--streams 1000] [--rate 20] [--chunks 30] [--delay-ms 1000]

Not a CI test. Everything runs on 127.0.0.1 in a temp dir: `bench.fake_upstream` and
`modelway serve` (full middleware chain, one worker) as subprocesses, this process as the
client. Bounded: new streams and requests stop at the deadline, the streams in flight then get
`chunks * delay + 60 s` to finish, and every process is stopped at the end. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import cpu_seconds, fd_count, free_port, pct, raise_fd_limit, rss_mb, run_async, spawn, stop, wait_ready


@dataclass
class Tally:
    streams_started: int = 0
    streams_ok: int = 0
    shorts_sent: int = 0
    shorts_ok: int = 0
    errors: Counter = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    short_latency: list[tuple[float, int]] = field(default_factory=list)   # (seconds, open streams)
    open_streams: int = 0
    samples: list[tuple[float, float, int, int, float]] = field(default_factory=list)
    # (elapsed s, RSS MB, open streams, gateway fds, gateway CPU s)


def gateway_config(port: int, up_port: int, data_dir: Path, digest: str, streams: int) -> str:
    return f"""\
server: {{host: 127.0.0.1, port: {port}, data_dir: "{data_dir}", drain_seconds: 60}}
middlewares: [auth, ratelimit, presets, cache, accounting, access_log]
providers:
  up:
    type: openai
    base_url: "http://127.0.0.1:{up_port}/v1"
    api_key: soak-upstream-key
    max_connections: {streams + 200}
    timeouts: {{connect: 10, first_byte: 30, idle: 60, total: 900}}
models:
  soak-model: {{targets: [{{provider: up, model: fake-model}}], pricing: {{input: 0.15, output: 0.6}}}}
keys: [{{label: soak, sha256: "{digest}"}}]
cache: {{enabled: false}}
"""


class Soak:
    def __init__(self, args, url: str, secret: str, gw_pid: int):
        self.args = args
        self.url = url + "/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.gw_pid = gw_pid
        self.t = Tally()
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60

    def body(self, stream: bool, i: int) -> dict:
        body = {"model": "soak-model", "messages": [{"role": "user", "content": f"soak {i}"}]}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True},
                        bench={"chunks": self.args.chunks, "delay_ms": self.args.delay_ms})
        return body

    async def stream_worker(self, http: aiohttp.ClientSession, w: int) -> None:
        await asyncio.sleep(w * self.args.ramp / self.args.streams)       # ramp up, no thundering herd
        i = 0
        while time.monotonic() < self.deadline:
            i += 1
            self.t.streams_started += 1
            self.t.open_streams += 1
            try:
                async with http.post(self.url, json=self.body(True, w * 100000 + i), headers=self.headers) as resp:
                    rid = resp.headers.get("x-request-id")
                    if rid:
                        self.t.request_ids.append(rid)
                    raw = await resp.read()
                if resp.status != 200:
                    self.t.errors[f"stream HTTP {resp.status}"] += 1
                elif not raw.endswith(b"data: [DONE]\n\n") or b'"error"' in raw:
                    self.t.errors["stream error event / no [DONE]"] += 1
                else:
                    self.t.streams_ok += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.t.errors[f"stream {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
            finally:
                self.t.open_streams -= 1

    async def short(self, http: aiohttp.ClientSession, i: int) -> None:
        self.t.shorts_sent += 1
        open_now = self.t.open_streams
        t0 = time.perf_counter()
        try:
            async with http.post(self.url, json=self.body(False, i), headers=self.headers) as resp:
                rid = resp.headers.get("x-request-id")
                if rid:
                    self.t.request_ids.append(rid)
                data = await resp.json()
            took = time.perf_counter() - t0
            if resp.status == 200 and data.get("choices"):
                self.t.shorts_ok += 1
                self.t.short_latency.append((took, open_now))
            else:
                self.t.errors[f"short HTTP {resp.status}"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.t.errors[f"short {type(exc).__name__}"] += 1

    async def trickle(self, http: aiohttp.ClientSession) -> None:
        gap, i, pending = 1.0 / self.args.rate, 0, set()
        next_at = time.monotonic()
        while time.monotonic() < self.deadline:
            i += 1
            task = asyncio.ensure_future(self.short(http, i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=60)

    async def sampler(self) -> None:
        while True:
            self.t.samples.append((time.monotonic() - self.started, rss_mb(self.gw_pid), self.t.open_streams,
                                   fd_count(self.gw_pid), cpu_seconds(self.gw_pid)))
            await asyncio.sleep(self.args.sample_every)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.args.chunks * self.args.delay_ms / 1000 + 120)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            sampler = asyncio.ensure_future(self.sampler())
            workers = [asyncio.ensure_future(self.stream_worker(http, w)) for w in range(self.args.streams)]
            await self.trickle(http)
            grace = self.args.chunks * self.args.delay_ms / 1000 + 60
            done, late = await asyncio.wait(workers, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                self.t.errors["stream still open after the grace period"] += len(late)
            await asyncio.sleep(self.args.sample_every)
            sampler.cancel()


def ledger_check(db: Path, request_ids: list[str]) -> tuple[int, int, int, Counter, list[float]]:
    """Rows, requests with no row, requests with several, statuses, and the gateway's own
    latency (ms) of the short requests."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT request_id, status, stream, latency_ms FROM ledger").fetchall()
    finally:
        conn.close()
    ids = Counter(r[0] for r in rows)
    sent = set(request_ids)
    missing = sum(1 for r in sent if ids[r] == 0)
    duplicated = sum(1 for r in sent if ids[r] > 1)
    return len(rows), missing, duplicated, Counter(r[1] for r in rows), [r[3] for r in rows if not r[2]]


def report(args, t: Tally, ledger: tuple, exit_code: int, fd_limit: int, wall: float) -> str:
    rows, missing, duplicated, statuses, inside = ledger
    full = [s for s, open_now in t.short_latency if open_now >= 0.9 * args.streams]
    every = [s for s, _ in t.short_latency]
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    lines = [f"python -m bench.soak --minutes {args.minutes:g} --streams {args.streams} --rate {args.rate:g} "
             f"--chunks {args.chunks} --delay-ms {args.delay_ms}",
             f"wall {wall:.0f} s, fd limit {fd_limit}, gateway exit code {exit_code}", "",
             "| t (s) | gateway RSS (MB) | open streams | gateway fds | gateway CPU (s) |",
             "|---:|---:|---:|---:|---:|"]
    step = max(1, len(t.samples) // 16)
    picked = t.samples[::step] + ([t.samples[-1]] if (len(t.samples) - 1) % step else [])
    for at, rss, open_now, fds, cpu in picked:
        lines.append(f"| {at:.0f} | {rss:.1f} | {open_now} | {fds} | {cpu:.1f} |")
    loaded = [s for s in t.samples if s[2] >= 0.9 * args.streams]
    if len(loaded) >= 2:
        cpu = 100 * (loaded[-1][4] - loaded[0][4]) / max(loaded[-1][0] - loaded[0][0], 1e-9)
        lines += ["", f"RSS while >= 90 % of the streams were open: first {loaded[0][1]:.1f} MB, "
                      f"min {min(s[1] for s in loaded):.1f}, max {max(s[1] for s in loaded):.1f}, "
                      f"last {loaded[-1][1]:.1f} MB; gateway CPU {cpu:.0f} % of one core"]
    lines += ["",
              f"streams: {t.streams_started} started, {t.streams_ok} complete with [DONE]",
              f"short requests: {t.shorts_sent} sent, {t.shorts_ok} ok",
              f"errors: {dict(t.errors) if sum(t.errors.values()) else 'none'}",
              f"ledger: {rows} rows for {len(set(t.request_ids))} requests answered "
              f"({t.streams_started + t.shorts_sent} sent); missing {missing}, duplicated {duplicated}; "
              f"statuses {dict(statuses)}",
              f"short-request latency, all ({len(every)}): p50 {ms(pct(every, 50))} ms, p99 {ms(pct(every, 99))} ms, "
              f"max {ms(max(every) if every else float('nan'))} ms",
              f"short-request latency with >= 90 % of the streams open ({len(full)}): p50 {ms(pct(full, 50))} ms, "
              f"p99 {ms(pct(full, 99))} ms, max {ms(max(full) if full else float('nan'))} ms",
              f"short-request latency inside the gateway (ledger latency_ms, {len(inside)}): "
              f"p50 {pct(inside, 50):.1f} ms, p99 {pct(inside, 99):.1f} ms, "
              f"max {max(inside, default=float('nan')):.1f} ms"]
    return "\n".join(lines)


async def main_async(args) -> int:
    fd_limit = raise_fd_limit()
    need = 2 * args.streams + 500
    if fd_limit < need:
        raise SystemExit(f"open-file limit {fd_limit} is below the {need} this soak needs")
    tmp = Path(tempfile.mkdtemp(prefix="modelway-soak-"))
    up_port, gw_port = free_port(), free_port()
    secret = "sk-soak-" + secrets.token_hex(16)
    config = tmp / "routes.yaml"
    config.write_text(gateway_config(gw_port, up_port, tmp / "var", hashlib.sha256(secret.encode()).hexdigest(),
                                     args.streams))
    upstream = spawn([sys.executable, "-m", "bench.fake_upstream", "--port", str(up_port)], tmp / "upstream.log")
    gateway = spawn([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)], tmp / "gateway.log")
    wall = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, upstream, f"http://127.0.0.1:{up_port}/healthz")
            await wait_ready(http, gateway, f"http://127.0.0.1:{gw_port}/healthz")
        print(f"soak: {args.streams} streams + {args.rate:g}/s short requests for {args.minutes:g} min "
              f"in {tmp}", file=sys.stderr)
        soak = Soak(args, f"http://127.0.0.1:{gw_port}", secret, gateway.pid)
        await soak.run()
    finally:
        exit_code = stop(gateway)
        stop(upstream, 10)
    ledger = ledger_check(tmp / "var" / "modelway.db", soak.t.request_ids)
    print(report(args, soak.t, ledger, exit_code, fd_limit, time.monotonic() - wall))
    if args.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not soak.t.errors and not ledger[1] and not ledger[2] and exit_code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent slow streams to hold")
    parser.add_argument("--rate", type=float, default=20.0, help="short non-streaming requests per second")
    parser.add_argument("--chunks", type=int, default=30, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=int, default=1000, help="upstream pause between chunks")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the streams open")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs, ledger)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    args = parser.parse_args(argv)
    return run_async(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
