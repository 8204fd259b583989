"""Hostile soak: normal traffic beside idle connections, slowloris clients, a flood of bad keys
and giant model names on a wildcard route; reports normal traffic's latency beside a quiet
run, and the gateway's RSS, open files, `/metrics` size and ledger growth over time.

    python -m bench.hostile [--minutes 2] [--quiet-seconds 30] [--idle 1000] [--slowloris 300]
                            [--bad-key-rate 200] [--giant-rate 20] [--giant-kb 100] [--rate 20]

Not a CI test. Everything runs on 127.0.0.1 in a temp dir: `bench.fake_upstream` and
`modelway serve` (full middleware chain, one worker) as subprocesses, this process as every
client. First a quiet phase (normal traffic only), then the hostile phase for `--minutes`:

- idle: connections that send nothing; when the gateway closes one it is reopened 1 s later;
- slowloris: half send a request's header lines one every 5 s and never end them, half send
  whole headers with `Content-Length: 100000` and then one body byte every 5 s; reopened 1 s
  after the gateway closes them;
- bad keys: chat requests with a fresh random bearer key each, at `--bad-key-rate` per second;
- giant names: chat requests (good key) for `wild/<--giant-kb KB of random letters>`, each
  name new, at `--giant-rate` per second, on the route `wild/*`;
- normal: `--rate` short chat requests per second with the good key, the latency measured.

Bounded: every loop stops at its phase's deadline, requests have a 30 s timeout, and every
process is stopped at the end. The open-file limit is raised in this process (its children
inherit it). See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import random
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

from bench.common import cpu_seconds, fd_count, free_port, pct, raise_fd_limit, rss_mb, run_async, spawn, stop, \
    wait_ready

CHAT = "/v1/chat/completions"
REOPEN_AFTER = 1.0       # seconds before an attacker reopens a connection the gateway closed
DRIP_EVERY = 5.0         # seconds between a slowloris client's header lines or body bytes


def gateway_config(port: int, up_port: int, data_dir: Path, digest: str) -> str:
    return f"""\
server: {{host: 127.0.0.1, port: {port}, data_dir: "{data_dir}", drain_seconds: 5}}
middlewares: [auth, ratelimit, presets, cache, accounting, access_log]
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1", api_key: hostile-upstream-key}}
models:
  normal-model: {{targets: [{{provider: up, model: fake-model}}], pricing: {{input: 0.15, output: 0.6}}}}
  "wild/*": {{targets: [{{provider: up}}], pricing: {{input: 0.15, output: 0.6}}}}
keys: [{{label: hostile, sha256: "{digest}", minute_limit: 100000000}}]
cache: {{enabled: false}}
"""


@dataclass
class Sample:
    at: float
    phase: str
    rss_mb: float
    fds: int
    cpu_s: float
    metrics_bytes: int
    ledger_rows: int
    ledger_bytes: int
    idle_open: int
    slow_open: int


@dataclass
class Tally:
    latency: dict[str, list[float]] = field(default_factory=lambda: {"quiet": [], "hostile": []})
    statuses: dict[str, Counter] = field(default_factory=dict)     # per kind of client
    closed_by_gateway: Counter = field(default_factory=Counter)     # idle / slowloris connections
    lifetimes: dict[str, list[float]] = field(default_factory=lambda: {"idle": [], "slowloris": []})
    open_now: Counter = field(default_factory=Counter)
    request_ids: dict[str, list[str]] = field(default_factory=lambda: {"quiet": [], "hostile": []})   # normal 200s
    gateway_latency: dict[str, list[float]] = field(default_factory=dict)   # normal, from the ledger (s)
    samples: list[Sample] = field(default_factory=list)

    def count(self, kind: str, outcome) -> None:
        self.statuses.setdefault(kind, Counter())[outcome] += 1


class Hostile:
    def __init__(self, args, port: int, secret: str, gw_pid: int, db: Path):
        self.args, self.port, self.secret, self.gw_pid, self.db = args, port, secret, gw_pid, db
        self.base = f"http://127.0.0.1:{port}"
        self.good = {"Authorization": f"Bearer {secret}"}
        self.t = Tally()
        self.started = time.monotonic()
        self.phase, self.deadline = "quiet", 0.0
        self.rng = random.Random(1)
        self.statuses: Counter = Counter()      # ledger rows per status, read at the end
        # idle and slowloris connections open now: written by the attack process, sampled here
        self.open_counts = multiprocessing.get_context("spawn").Array("i", 2)

    # -- well-behaved and flooding HTTP clients ------------------------------------------------

    async def post(self, http: aiohttp.ClientSession, kind: str, body: dict, headers: dict) -> float | None:
        t0 = time.perf_counter()
        try:
            async with http.post(self.base + CHAT, json=body, headers=headers) as resp:
                await resp.read()
            self.t.count(kind, resp.status)
            if resp.status == 200 and kind.startswith("normal "):
                self.t.request_ids[kind[7:]].append(resp.headers.get("x-request-id", ""))
            return time.perf_counter() - t0 if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.t.count(kind, type(exc).__name__)
            return None

    async def paced(self, rate: float, send) -> None:
        """Call `send(i)` `rate` times a second until the phase's deadline; wait for the last ones."""
        if rate <= 0:
            return
        gap, i, pending = 1.0 / rate, 0, set()
        next_at = time.monotonic()
        while time.monotonic() < self.deadline:
            i += 1
            task = asyncio.ensure_future(send(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=35)

    async def normal(self, http: aiohttp.ClientSession) -> None:
        async def send(i: int) -> None:
            body = {"model": "normal-model", "messages": [{"role": "user", "content": f"normal {self.phase} {i}"}]}
            took = await self.post(http, "normal " + self.phase, body, self.good)
            if took is not None:
                self.t.latency[self.phase].append(took)
        await self.paced(self.args.rate, send)

    async def bad_keys(self, http: aiohttp.ClientSession) -> None:
        body = {"model": "normal-model", "messages": [{"role": "user", "content": "let me in"}]}

        async def send(i: int) -> None:
            await self.post(http, "bad key", body, {"Authorization": "Bearer sk-" + secrets.token_hex(24)})
        await self.paced(self.args.bad_key_rate, send)

    async def giant_names(self, http: aiohttp.ClientSession) -> None:
        size = self.args.giant_kb * 1024

        async def send(i: int) -> None:
            name = "wild/" + secrets.token_hex(size // 2)     # new each time; hex is cheap to make
            await self.post(http, "giant name", {"model": name, "messages": [{"role": "user", "content": "hi"}]},
                            self.good)
        await self.paced(self.args.giant_rate, send)

    # -- raw-socket attackers --------------------------------------------------------------------

    async def hold(self, kind: str, w: int, first: bytes, drip) -> None:
        """Open a connection, write `first`, then `drip()` every DRIP_EVERY s (nothing when None)
        until the deadline; when the gateway closes it, note how long it lived and reopen."""
        await asyncio.sleep(w * self.args.ramp / max(1, self.args.idle + self.args.slowloris))
        while time.monotonic() < self.deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self.t.count(kind, f"connect {type(exc).__name__}")
                await asyncio.sleep(REOPEN_AFTER)
                continue
            opened = time.monotonic()
            self.t.open_now[kind] += 1
            try:
                writer.write(first)
                while True:
                    left = self.deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        data = await asyncio.wait_for(reader.read(4096), min(left, DRIP_EVERY))
                    except asyncio.TimeoutError:
                        if drip is not None:
                            writer.write(drip())
                        continue
                    if not data:          # closed by the gateway
                        self.t.closed_by_gateway[kind] += 1
                        self.t.lifetimes[kind].append(time.monotonic() - opened)
                        break
                    self.t.count(kind, "answered " + data.split(b" ", 2)[1].decode("latin-1", "replace"))
            except (ConnectionError, OSError):
                self.t.closed_by_gateway[kind] += 1
                self.t.lifetimes[kind].append(time.monotonic() - opened)
            finally:
                self.t.open_now[kind] -= 1
                writer.close()
            if time.monotonic() < self.deadline:
                await asyncio.sleep(REOPEN_AFTER)

    def slowloris(self, w: int):
        if w % 2:      # headers that never end
            first = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            return self.hold("slowloris", w, first, lambda: b"X-Slow-%d: 1\r\n" % self.rng.randrange(10**6))
        first = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {self.good['Authorization']}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").encode()
        return self.hold("slowloris", w, first, lambda: b" ")

    # -- sampling ---------------------------------------------------------------------------------

    async def metrics_bytes(self, http: aiohttp.ClientSession) -> int:
        try:
            async with http.get(self.base + "/metrics") as resp:
                return len(await resp.read())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return -1

    def ledger(self) -> tuple[int, int]:
        size = sum(p.stat().st_size for p in self.db.parent.glob(self.db.name + "*"))
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                rows = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            rows = -1
        return rows, size

    def ledger_latency(self) -> dict[str, list[float]]:
        """The gateway's own latency (`latency_ms` in the ledger) of the normal requests answered 200."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            by_id = dict(conn.execute("SELECT request_id, latency_ms FROM ledger WHERE status = 200"))
        finally:
            conn.close()
        return {phase: [by_id[r] / 1000 for r in ids if by_id.get(r) is not None]
                for phase, ids in self.t.request_ids.items()}

    def ledger_statuses(self) -> Counter:
        """Ledger rows per HTTP status, over the whole run."""
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return Counter(dict(conn.execute("SELECT status, count(*) FROM ledger GROUP BY status")))
            finally:
                conn.close()
        except sqlite3.Error:
            return Counter()

    async def sample(self, http: aiohttp.ClientSession) -> None:
        rows, size = await asyncio.to_thread(self.ledger)
        self.t.samples.append(Sample(time.monotonic() - self.started, self.phase, rss_mb(self.gw_pid),
                                     fd_count(self.gw_pid), cpu_seconds(self.gw_pid), await self.metrics_bytes(http),
                                     rows, size, self.open_counts[0], self.open_counts[1]))

    async def sampler(self, http: aiohttp.ClientSession) -> None:
        while True:
            await self.sample(http)
            await asyncio.sleep(self.args.sample_every)

    # -- the two phases ---------------------------------------------------------------------------

    async def attack(self) -> None:
        """Every attacker until the deadline; runs in the attack process (`attack_process`)."""
        async def publish() -> None:
            while True:
                self.open_counts[0], self.open_counts[1] = self.t.open_now["idle"], self.t.open_now["slowloris"]
                await asyncio.sleep(0.5)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as flood:
            attackers = [self.hold("idle", w, b"", None) for w in range(self.args.idle)]
            attackers += [self.slowloris(self.args.idle + w) for w in range(self.args.slowloris)]
            attackers += [self.bad_keys(flood), self.giant_names(flood)]
            tasks = [asyncio.ensure_future(a) for a in attackers]
            publisher = asyncio.ensure_future(publish())
            _, late = await asyncio.wait(tasks, timeout=self.deadline - time.monotonic() + 60)
            for task in late:
                task.cancel()
            publisher.cancel()
            self.open_counts[0] = self.open_counts[1] = 0

    async def run(self) -> None:
        """The quiet phase, then the hostile one: normal traffic and sampling here, the attackers
        in a second process, so that their CPU does not delay this one's normal requests."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
            sampler = asyncio.ensure_future(self.sampler(http))
            try:
                self.deadline = time.monotonic() + self.args.quiet_seconds
                await self.normal(http)
                await asyncio.sleep(2)     # the ledger's last batch of the quiet phase
                await self.sample(http)
                self.phase, self.deadline = "hostile", time.monotonic() + self.args.minutes * 60
                mp = multiprocessing.get_context("spawn")
                results, sender = mp.Pipe(duplex=False)
                attackers = mp.Process(target=attack_process, daemon=True, args=(
                    self.args, self.port, self.secret, self.deadline, self.open_counts, sender))
                attackers.start()
                try:
                    await self.normal(http)
                    wait = self.deadline - time.monotonic() + 90
                    got = await asyncio.to_thread(lambda: results.recv() if results.poll(wait) else None)
                finally:
                    await asyncio.to_thread(attackers.join, 10)
                    if attackers.is_alive():
                        attackers.kill()
                if got is not None:
                    self.t.statuses.update(got[0])
                    self.t.closed_by_gateway, self.t.lifetimes = got[1], got[2]
                self.phase = "after"
                await asyncio.sleep(2)     # the ledger's last batch
                await self.sample(http)
                self.statuses = await asyncio.to_thread(self.ledger_statuses)
                self.t.gateway_latency = await asyncio.to_thread(self.ledger_latency)
            finally:
                sampler.cancel()


def attack_process(args, port: int, secret: str, deadline: float, open_counts, sender) -> None:
    """The attack process: every attacker until `deadline` (time.monotonic() is system-wide),
    then its tallies sent back to the main process."""
    h = Hostile(args, port, secret, 0, Path())
    h.phase, h.deadline, h.open_counts = "hostile", deadline, open_counts
    run_async(h.attack())
    sender.send((h.t.statuses, h.t.closed_by_gateway, h.t.lifetimes))
    sender.close()


def summary(h: Hostile) -> list[str]:
    """The headline table: each number the hardening issue asks for, quiet beside hostile."""
    t = h.t
    quiet = [s for s in t.samples if s.phase == "quiet"]
    hostile = [s for s in t.samples if s.phase == "hostile"]
    after = [s for s in t.samples if s.phase == "after"]
    if not (quiet and hostile and after):
        return []
    q, last, end = quiet[-1], hostile[-1], after[-1]
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    sent = {kind: sum(got.values()) for kind, got in t.statuses.items()}
    refused = sum(n for got in t.statuses.values() for outcome, n in got.items()
                  if outcome in (503, "answered 503") or str(outcome).startswith("connect "))
    legit = sent.get("normal hostile", 0) + sent.get("giant name", 0)
    rows = end.ledger_rows - q.ledger_rows
    return [
        "| | quiet | hostile |", "|---|---:|---:|",
        f"| normal traffic p50 / p99 (ms) | {ms(pct(t.latency['quiet'], 50))} / {ms(pct(t.latency['quiet'], 99))} "
        f"| {ms(pct(t.latency['hostile'], 50))} / {ms(pct(t.latency['hostile'], 99))} |",
        f"| the same inside the gateway (ledger `latency_ms`) p50 / p99 (ms) | "
        f"{ms(pct(t.gateway_latency.get('quiet', []), 50))} / {ms(pct(t.gateway_latency.get('quiet', []), 99))} | "
        f"{ms(pct(t.gateway_latency.get('hostile', []), 50))} / {ms(pct(t.gateway_latency.get('hostile', []), 99))} |",
        f"| normal requests sent / answered 200 | {sent.get('normal quiet', 0)} / "
        f"{t.statuses.get('normal quiet', Counter())[200]} | {sent.get('normal hostile', 0)} / "
        f"{t.statuses.get('normal hostile', Counter())[200]} |",
        f"| gateway RSS (MB): end of quiet; hostile peak / end; after | {q.rss_mb:.1f} "
        f"| {max(s.rss_mb for s in hostile):.1f} / {last.rss_mb:.1f}; {end.rss_mb:.1f} |",
        f"| `/metrics` (bytes): end of quiet; hostile max / end | {q.metrics_bytes} "
        f"| {max(s.metrics_bytes for s in hostile)} / {last.metrics_bytes} |",
        f"| gateway open fds: end of quiet; hostile peak; after | {q.fds} | {max(s.fds for s in hostile)}; {end.fds} |",
        f"| ledger rows added (hostile: for {sent.get('normal hostile', 0)} normal + {sent.get('giant name', 0)} "
        f"giant-name requests = {legit}, plus slowloris bodies cut off) | {q.ledger_rows} | {rows} |",
        f"| ledger rows with status 401 (bad keys sent: {sent.get('bad key', 0)}) | | {h.statuses[401]} |",
        f"| ledger bytes per row added | | {(end.ledger_bytes - q.ledger_bytes) / max(rows, 1):.0f} |",
        f"| connections refused (503 `too_many_connections` or connect error) | | {refused} |",
        f"| ledger rows by status (whole run) | | {dict(sorted(h.statuses.items()))} |",
    ]


def report(args, h: Hostile, exit_code: int, fd_limit: int, wall: float) -> str:
    t = h.t
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    lines = [f"python -m bench.hostile --minutes {args.minutes:g} --quiet-seconds {args.quiet_seconds:g} "
             f"--idle {args.idle} --slowloris {args.slowloris} --bad-key-rate {args.bad_key_rate:g} "
             f"--giant-rate {args.giant_rate:g} --giant-kb {args.giant_kb} --rate {args.rate:g}",
             f"wall {wall:.0f} s, fd limit {fd_limit}, gateway exit code {exit_code}", "", *summary(h), "",
             "| normal traffic | sent | ok | p50 (ms) | p99 (ms) | max (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for phase in ("quiet", "hostile"):
        got, lat = t.statuses.get("normal " + phase, Counter()), t.latency[phase]
        lines.append(f"| {phase} | {sum(got.values())} | {got[200]} | {ms(pct(lat, 50))} | {ms(pct(lat, 99))} | "
                     f"{ms(max(lat, default=float('nan')))} |")
    lines += ["", "| t (s) | phase | RSS (MB) | fds | CPU (s) | /metrics (bytes) | ledger rows | ledger bytes "
                  "| idle open | slowloris open |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    step = max(1, len(t.samples) // 16)
    picked = t.samples[::step] + ([t.samples[-1]] if (len(t.samples) - 1) % step else [])
    for s in picked:
        lines.append(f"| {s.at:.0f} | {s.phase} | {s.rss_mb:.1f} | {s.fds} | {s.cpu_s:.1f} | {s.metrics_bytes} | "
                     f"{s.ledger_rows} | {s.ledger_bytes} | {s.idle_open} | {s.slow_open} |")
    hostile = [s for s in t.samples if s.phase == "hostile"]
    if len(hostile) >= 4:
        first, half, last = hostile[0], hostile[len(hostile) // 2], hostile[-1]
        answered = sum(n for kind, got in t.statuses.items() if kind in ("bad key", "giant name", "normal hostile")
                       for outcome, n in got.items() if isinstance(outcome, int))
        rows = last.ledger_rows - first.ledger_rows
        metrics = last.metrics_bytes - half.metrics_bytes
        lines += ["", "second half of the hostile phase (bounded: about 0): "
                      f"RSS {last.rss_mb - half.rss_mb:+.1f} MB, /metrics {metrics:+d} bytes",
                  f"ledger over the hostile phase: +{rows} rows for {answered} HTTP answers, "
                  f"{(last.ledger_bytes - first.ledger_bytes) / max(rows, 1) / 1024:.1f} KB a row"]
    lines.append("")
    for kind in ("normal quiet", "normal hostile", "bad key", "giant name", "idle", "slowloris"):
        got = t.statuses.get(kind, Counter())
        life = t.lifetimes.get(kind)
        extra = (f"; closed by the gateway {t.closed_by_gateway[kind]} times, after p50 {pct(life, 50):.1f} s, "
                 f"max {max(life, default=float('nan')):.1f} s") if life is not None else ""
        lines.append(f"{kind}: {dict(got) if got else 'nothing answered'}{extra}")
    return "\n".join(lines)


def log_summary(path: Path) -> str:
    """The gateway's output: its size, and its access-log lines per status (401s are sampled)."""
    statuses: Counter = Counter()
    longest = 0
    with open(path, "rb") as f:
        for line in f:
            longest = max(longest, len(line))
            if b'"event":"request"' in line:
                at = line.find(b'"status":')
                statuses[line[at + 9:at + 12].decode("latin-1")] += 1
    return (f"gateway log: {path.stat().st_size} bytes, longest line {longest} bytes; request lines by status: "
            f"{dict(sorted(statuses.items()))}")


async def main_async(args) -> int:
    fd_limit = raise_fd_limit()
    need = 2 * (args.idle + args.slowloris) + 1000
    if fd_limit < need:
        raise SystemExit(f"open-file limit {fd_limit} is below the {need} this soak needs")
    tmp = Path(tempfile.mkdtemp(prefix="modelway-hostile-"))
    up_port, gw_port = free_port(), free_port()
    secret = "sk-hostile-" + secrets.token_hex(16)
    config = tmp / "routes.yaml"
    config.write_text(gateway_config(gw_port, up_port, tmp / "var", hashlib.sha256(secret.encode()).hexdigest()))
    upstream = spawn([sys.executable, "-m", "bench.fake_upstream", "--port", str(up_port)], tmp / "upstream.log")
    gateway = spawn([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)], tmp / "gateway.log")
    wall = time.monotonic()
    hostile = Hostile(args, gw_port, secret, gateway.pid, tmp / "var" / "modelway.db")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, upstream, f"http://127.0.0.1:{up_port}/healthz")
            await wait_ready(http, gateway, f"http://127.0.0.1:{gw_port}/healthz")
        print(f"hostile: {args.quiet_seconds:g} s quiet, then {args.minutes:g} min hostile, in {tmp}", file=sys.stderr)
        await hostile.run()
    finally:
        exit_code = stop(gateway, 30)
        stop(upstream, 10)
    print(report(args, hostile, exit_code, fd_limit, time.monotonic() - wall))
    print(log_summary(tmp / "gateway.log"))
    if args.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    normal = hostile.t.statuses.get("normal hostile", Counter())
    return 0 if exit_code == 0 and normal and set(normal) == {200} else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the hostile phase")
    parser.add_argument("--quiet-seconds", type=float, default=30.0, help="length of the quiet phase before it")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections")
    parser.add_argument("--slowloris", type=int, default=300, help="slowloris clients")
    parser.add_argument("--bad-key-rate", type=float, default=200.0, help="requests with a bad key per second")
    parser.add_argument("--giant-rate", type=float, default=20.0, help="giant-model-name requests per second")
    parser.add_argument("--giant-kb", type=int, default=100, help="size of a giant model name (KB)")
    parser.add_argument("--rate", type=float, default=20.0, help="normal requests per second")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the attackers connect")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs, ledger)")
    return run_async(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
