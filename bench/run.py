"""Overhead benchmark: the same load against the fake upstream directly, the bare forwarder,
the gateway (access log only) and the gateway with the full middleware chain, in one run.

    python -m bench.run [--quick] [--targets direct,forwarder,gateway,full,shared] [--write-readme] [--keep]

Method and how to read the table: bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import itertools
import json
import os
import platform
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
README = Path(__file__).resolve().parent / "README.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNKS = 20                 # content chunks per streamed answer
PACED_DELAY_MS = 20         # upstream pause between chunks in the "held back?" phase
TARGET_NAMES = ("direct", "forwarder", "gateway", "full", "shared")
TITLES = {"direct": "direct", "forwarder": "forwarder", "gateway": "gateway", "full": "full chain",
          "shared": "shared limits"}
GATEWAYS = ("gateway", "full", "shared")


@dataclass(frozen=True)
class Plan:
    """Each phase run is bounded by (max requests, max seconds). Latency and throughput run in
    `rounds` rounds interleaved across targets, to spread the noise of a shared machine."""
    warmup: tuple[int, float]
    latency: tuple[int, float]
    throughput: tuple[int, float]
    stream: tuple[int, float]
    paced: tuple[int, float]
    rounds: int


FULL = Plan(warmup=(300, 3.0), latency=(600, 1.0), throughput=(10000, 3.0), stream=(3000, 6.0),
            paced=(20, 5.0), rounds=4)
QUICK = Plan(warmup=(60, 1.0), latency=(200, 0.4), throughput=(3000, 1.5), stream=(400, 1.5),
             paced=(10, 2.0), rounds=1)


@dataclass
class Target:
    name: str
    origin: str                 # http://127.0.0.1:PORT
    pid: int                    # the server under test (for direct: the fake upstream itself)
    acc: dict = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_error: str | None = None


# ---------------------------------------------------------------- /proc readings

def _process_tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    tree = [pid]
    for p in tree:
        tree.extend(kids.get(p, ()))
    return tree


def cpu_ms(pid: int) -> float:
    """utime+stime of the process and its children (live ones, and reaped ones via cutime/cstime)."""
    ticks = 0
    for p in _process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])
    return ticks * 1000 / CLK_TCK


def rss_mb(pid: int) -> float:
    kb = 0
    for p in _process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
        except OSError:
            continue
    return kb / 1024


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server with its output in tmp/<name>.log, unbuffered as under systemd (deploy/)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)


def log_tail(tmp: Path, name: str, lines: int = 12) -> str:
    try:
        text = (tmp / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n    ".join(text.strip().splitlines()[-lines:])


async def wait_ready(session: aiohttp.ClientSession, proc: subprocess.Popen, url: str,
                     timeout: float = 30.0) -> str | None:
    """None once `url` answers 200, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    return f"no 200 from {url} within {timeout:.0f} s"


def gateway_config(port: int, up_port: int, data_dir: Path, secret: str | None, redis: str | None = None) -> str:
    """The gateway's routes.yaml; with a secret, the full default chain (every request a cache
    miss); with a Redis URL, its limits shared through it (`state.redis`)."""
    chain = "auth, ratelimit, presets, cache, accounting, access_log" if secret else "access_log"
    lines = [
        f"server: {{host: 127.0.0.1, port: {port}, data_dir: {json.dumps(str(data_dir))}}}",
        f"middlewares: [{chain}]",
        "providers:",
        f'  up: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1", api_key: bench-key}}',
        "models:",
        "  bench-model: {targets: [{provider: up, model: fake-model}], pricing: {input: 0.15, output: 0.6}}",
    ]
    if secret:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        lines += [f"keys: [{{label: bench, sha256: {digest}, minute_limit: 100000000}}]",
                  "cache: {enabled: true}"]
    if redis:
        lines.append(f'state: {{redis: "{redis}"}}')
    return "\n".join(lines) + "\n"


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> str | None:
    """SIGTERM, then SIGKILL after `timeout`; a note unless it was running and exited 0."""
    if proc.poll() is not None:
        return None
    proc.terminate()
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"still running {timeout:.0f} s after SIGTERM; killed"
    return None if status == 0 else f"exited with status {status} on SIGTERM"


# ---------------------------------------------------------------- load

SEQ = itertools.count()     # every request body is unique: the cache never hits
PLAIN = b'{"model":"bench-model","messages":[{"role":"user","content":"bench request %d"}]}'
STREAM = (b'{"model":"bench-model","stream":true,"stream_options":{"include_usage":true},'
          b'"messages":[{"role":"user","content":"bench request %d"}]}')
PACED = STREAM.replace(b'"messages"', b'"bench":{"chunks":%d,"delay_ms":%d},"messages"' % (CHUNKS, PACED_DELAY_MS))
LOAD_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Load:
    """The client side against one target: single requests, a bounded worker pool, the phases.
    Results accumulate in `target.acc`."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, secret: str, upstream: str):
        self.session, self.target, self.upstream = session, target, upstream
        self.url = target.origin + "/v1/chat/completions"
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}

    def fail(self, why: str) -> None:
        if self.target.first_error is None:
            self.target.first_error = why

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.target.acc[key] = self.target.acc.get(key, 0) + value

    async def complete(self) -> float | None:
        """Latency (ms) of one non-streamed request, body read in full."""
        t0 = time.perf_counter()
        async with self.session.post(self.url, data=PLAIN % next(SEQ), headers=self.headers) as resp:
            body = await resp.read()
        if resp.status != 200:
            return self.fail(f"HTTP {resp.status}: {body[:300]!r}")
        return (time.perf_counter() - t0) * 1000

    async def stream(self, template: bytes = STREAM) -> tuple[float, float, int] | None:
        """(ms to the first body bytes, largest gap between two reads in ms, reads) of one stream."""
        t0 = time.perf_counter()
        first = last = gap = 0.0
        reads, tail = 0, b""
        async with self.session.post(self.url, data=template % next(SEQ), headers=self.headers) as resp:
            if resp.status != 200:
                return self.fail(f"HTTP {resp.status}: {(await resp.read())[:300]!r}")
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                if reads:
                    gap = max(gap, now - last)
                else:
                    first = now
                last, reads, tail = now, reads + 1, (tail + data)[-32:]
        if not tail.endswith(b"data: [DONE]\n\n"):
            return self.fail(f"stream did not end with [DONE]: ...{tail!r}")
        return (first - t0) * 1000, gap * 1000, reads

    async def paced_stream(self) -> tuple[float, float, int] | None:
        return await self.stream(PACED)

    async def pool(self, concurrency: int, bound: tuple[int, float], one: Callable[[], Awaitable]) -> list:
        """Call `one` from `concurrency` workers until bound = (calls, seconds) is reached; returns
        the results. A None result or an exception counts as a failure."""
        limit, seconds = bound
        ids, results = itertools.count(), []
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline and next(ids) < limit:
                try:
                    result = await one()
                except LOAD_ERRORS as exc:
                    result = self.fail(f"{type(exc).__name__}: {exc}")
                if result is None:
                    self.add(failures=1)
                else:
                    results.append(result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    async def preflight(self) -> str | None:
        """None if one plain and one streamed request work, else why not."""
        for call in (self.complete, self.stream):
            try:
                if await call() is None:
                    return self.target.first_error
            except LOAD_ERRORS as exc:
                return f"{type(exc).__name__}: {exc}"
        return None

    async def upstream_stats(self) -> tuple[int, int]:
        """(requests, connections) the fake upstream has seen so far."""
        async with self.session.get(self.upstream + "/_stats") as resp:
            stats = await resp.json()
        return stats["requests"], stats["connections"]

    # The phases. Each is bounded by the plan's (requests, seconds).

    async def warmup(self, plan: Plan) -> None:
        await self.pool(8, plan.warmup, self.complete)
        await self.pool(8, (plan.warmup[0] // 4, plan.warmup[1]), self.stream)
        self.target.acc["failures"] = 0

    async def latency(self, plan: Plan) -> None:
        self.target.latencies += await self.pool(1, plan.latency, self.complete)

    async def throughput(self, plan: Plan) -> None:
        pid, failures = self.target.pid, self.target.acc.get("failures", 0)
        (seen, conns), cpu, t0 = await self.upstream_stats(), cpu_ms(pid), time.perf_counter()
        ok = len(await self.pool(64, plan.throughput, self.complete))
        elapsed, cpu = time.perf_counter() - t0, cpu_ms(pid) - cpu
        seen_after, conns_after = await self.upstream_stats()
        self.add(tp_ok=ok, tp_sent=ok + self.target.acc["failures"] - failures, tp_secs=elapsed,
                 tp_cpu=cpu, tp_upstream=seen_after - seen, tp_conns=conns_after - conns)

    async def streaming(self, plan: Plan) -> None:
        (_, conns), cpu = await self.upstream_stats(), cpu_ms(self.target.pid)
        done = await self.pool(100, plan.stream, self.stream)
        cpu, conns = cpu_ms(self.target.pid) - cpu, (await self.upstream_stats())[1] - conns
        ttfb, gaps = [d[0] for d in done], [d[1] for d in done]
        self.target.acc.update(st_p50=pct(ttfb, 50), st_p99=pct(ttfb, 99), st_gap99=pct(gaps, 99),
                               st_gapmax=max(gaps, default=float("nan")), st_cpu=cpu / max(len(done), 1),
                               st_n=len(done), st_conns=conns)

    async def paced(self, plan: Plan) -> None:
        done = await self.pool(10, plan.paced, self.paced_stream)
        self.target.acc.update(pc_p50=pct([d[0] for d in done], 50), pc_reads=pct([d[2] for d in done], 50),
                               pc_gapmax=max((d[1] for d in done), default=float("nan")))


async def measure(loads: list[Load], plan: Plan) -> None:
    """Phases outer, targets inner (throughput in interleaved rounds), so that the drifts of a
    noisy machine hit every column alike."""
    for load in loads:
        await load.warmup(plan)
    for title, rounds, phase in (("latency c=1", plan.rounds, Load.latency),
                                 ("throughput c=64", plan.rounds, Load.throughput),
                                 ("streaming c=100", 1, Load.streaming), ("paced streaming", 1, Load.paced)):
        print(f"  {title} ...", file=sys.stderr, flush=True)
        for _ in range(rounds):
            for load in loads:
                await phase(load, plan)
    for t in (load.target for load in loads):
        t.acc.update(rss=rss_mb(t.pid), lat_p50=pct(t.latencies, 50), lat_p99=pct(t.latencies, 99))


# ---------------------------------------------------------------- report

def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def cpu_per_request(t: Target) -> float:
    return t.acc["tp_cpu"] / t.acc["tp_ok"] if t.acc.get("tp_ok") else float("nan")


def table(targets: list[Target]) -> str:
    direct = next((t for t in targets if t.name == "direct"), None)
    base = direct.acc.get("lat_p50", float("nan")) if direct else float("nan")
    rows = [
        ("latency c=1 p50 (ms)", lambda a: _f(a["lat_p50"])),
        ("latency c=1 p99 (ms)", lambda a: _f(a["lat_p99"])),
        ("added p50 over direct (ms)", lambda a: _f(a["lat_p50"] - base)),
        ("throughput c=64 (req/s)", lambda a: _f(a["tp_ok"] / a["tp_secs"], 0)),
        ("server CPU per request, c=64 (ms)", lambda a: _f(a["tp_cpu"] / a["tp_ok"], 3) if a["tp_ok"] else "n/a"),
        ("requests that reached the upstream", lambda a: f"{a['tp_upstream']}/{a['tp_sent']}"),
        ("new upstream connections / requests, c=64", lambda a: f"{a['tp_conns']}/{a['tp_sent']}"),
        (f"stream c=100 x{CHUNKS} chunks: TTFB p50 (ms)", lambda a: _f(a["st_p50"])),
        ("stream c=100: TTFB p99 (ms)", lambda a: _f(a["st_p99"])),
        ("stream c=100: max inter-chunk gap, p99 / worst (ms)",
         lambda a: f"{_f(a['st_gap99'], 1)} / {_f(a['st_gapmax'], 1)}"),
        ("server CPU per stream, c=100 (ms)", lambda a: _f(a["st_cpu"], 3)),
        ("new upstream connections / streams, c=100", lambda a: f"{a['st_conns']}/{a['st_n']}"),
        (f"paced stream (chunk every {PACED_DELAY_MS} ms): TTFB p50 (ms)", lambda a: _f(a["pc_p50"])),
        ("paced stream: worst inter-chunk gap (ms)", lambda a: _f(a["pc_gapmax"], 1)),
        ("paced stream: reads per stream (median)", lambda a: _f(a["pc_reads"], 0)),
        ("RSS at end (MB)", lambda a: _f(a["rss"], 1)),
        ("failed requests", lambda a: str(a.get("failures", 0))),
    ]
    out = ["| metric | " + " | ".join(TITLES[t.name] for t in targets) + " |",
           "|---|" + "---:|" * len(targets)]
    for label, cell in rows:
        out.append(f"| {label} | " + " | ".join(cell(t.acc) for t in targets) + " |")
    return "\n".join(out)


def goals(targets: list[Target]) -> str:
    by = {t.name: t for t in targets}

    def ratio(a: str, b: str, limit: float) -> str | None:
        if a not in by or b not in by:
            return None
        r = cpu_per_request(by[a]) / cpu_per_request(by[b])
        return (f"- CPU/request {TITLES[a]} ÷ {TITLES[b]}: **{r:.2f}×** (goal ≤ {limit}×) "
                f"{'PASS' if r <= limit else 'MISS'}")

    lines = [ratio("gateway", "forwarder", 1.25), ratio("full", "forwarder", 1.5), ratio("full", "gateway", 1.2),
             ratio("shared", "full", 1.5)]
    if "shared" in by and "full" in by:
        added = by["shared"].acc["lat_p50"] - by["full"].acc["lat_p50"]
        lines.append(f"- shared limits added p50 at c=1 over the embedded full chain: **{added:.2f} ms** "
                     f"(goal ≤ 0.3 ms) {'PASS' if added <= 0.3 else 'MISS'}")
    for name in GATEWAYS:
        if name not in by:
            continue
        a = by[name].acc
        if "direct" in by:
            added = a["lat_p50"] - by["direct"].acc["lat_p50"]
            over_fw = (f"; {a['lat_p50'] - by['forwarder'].acc['lat_p50']:.2f} ms over the forwarder"
                       if "forwarder" in by else "")
            lines.append(f"- {TITLES[name]} added p50 at c=1: **{added:.2f} ms** over direct{over_fw} "
                         f"(goal < 1 ms) {'PASS' if added < 1 else 'MISS'}")
        lines.append(f"- {TITLES[name]} RSS: **{a['rss']:.1f} MB** (goal < 100 MB) {'PASS' if a['rss'] < 100 else 'MISS'}")
        held = not (a["pc_p50"] < 4 * PACED_DELAY_MS and a["pc_reads"] >= CHUNKS / 2)
        lines.append(f"- {TITLES[name]} streamed chunks held back: **{'yes' if held else 'no'}** (paced TTFB "
                     f"{a['pc_p50']:.1f} ms vs {(CHUNKS - 1) * PACED_DELAY_MS} ms for a whole stream, "
                     f"{a['pc_reads']:.0f} reads/stream) {'MISS' if held else 'PASS'}")
    return "\n".join(line for line in lines if line)


def redis_round_trips(tmp: Path) -> str:
    """Redis round trips and script calls per request of the shared gateway (its exit log line)."""
    served = 0
    stats = None
    for line in (tmp / "shared.log").read_text(errors="replace").splitlines():
        if '"limits_redis_calls"' in line:
            stats = json.loads(line)
        elif '"event":"request"' in line or '"event": "request"' in line:
            served += 1
    if not stats or not served:
        return "- shared limits: Redis round trips per request not found in its log"
    return (f"- shared limits, Redis per request (all phases, {served} requests): "
            f"**{stats['round_trips'] / served:.2f} round trips** (goal: one on the hot path), "
            f"{stats['script_calls'] / served:.2f} script calls")


def environment(quick: bool) -> str:
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (no uvloop)"
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {'--quick' if quick else 'full run'}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
            f"{loop} in the bench client")


def write_readme(report: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = README.read_text()
    if start not in text or end not in text:
        print(f"bench/README.md has no {start} ... {end} markers; not written", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    README.write_text(f"{head}{start}\n{report}\n{end}{rest.split(end, 1)[1]}")


# ---------------------------------------------------------------- main

def otel_env(sink_port: int) -> dict[str, str]:
    """`--otel`: the gateway exports its traces (OTLP/HTTP) to the fake upstream's /v1/traces."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}", "OTEL_SERVICE_NAME": "modelway-bench"}


def start_servers(args: argparse.Namespace, tmp: Path, secret: str,
                  procs: dict[str, subprocess.Popen]) -> tuple[dict[str, int], dict[str, str]]:
    """Start the fake upstream and the wanted servers; returns (ports, skipped targets with why)."""
    py, wanted = sys.executable, args.targets
    ports = {name: free_port() for name in ("upstream", *wanted)}
    procs["upstream"] = spawn("upstream", [py, "-m", "bench.fake_upstream", "--port", str(ports["upstream"]),
                                           "--chunks", str(CHUNKS)], tmp)
    if "forwarder" in wanted:
        procs["forwarder"] = spawn("forwarder", [py, "-m", "bench.forwarder", "--port", str(ports["forwarder"]),
                                                 "--upstream", f"http://127.0.0.1:{ports['upstream']}"], tmp)
    skipped: dict[str, str] = {}
    command = shlex.split(args.gateway_cmd) if args.gateway_cmd else [py, "-m", "proxy.cli"]
    redis = None
    if "shared" in wanted:
        if shutil.which("redis-server") is None:
            skipped["shared"] = "redis-server is not installed"
        else:
            ports["redis"] = free_port()
            procs["redis"] = spawn("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no", "--dir", str(tmp)], tmp)
            redis = f"redis://127.0.0.1:{ports['redis']}/0"
            time.sleep(0.5)         # listening well before the gateway's first probe
    for name in GATEWAYS:
        if name not in wanted or name in skipped:
            continue
        if not args.gateway_cmd and importlib.util.find_spec("proxy.cli") is None:
            skipped[name] = "proxy.cli not found (the gateway is not built yet)"
            continue
        config, data = tmp / f"{name}.yaml", tmp / f"{name}-data"
        data.mkdir()
        config.write_text(gateway_config(ports[name], ports["upstream"], data, secret if name != "gateway" else None,
                                         redis if name == "shared" else None))
        procs[name] = spawn(name, [*command, "serve", "--config", str(config),
                                   "--host", "127.0.0.1", "--port", str(ports[name])], tmp,
                            env=otel_env(ports["upstream"]) if args.otel else None)
    return ports, skipped


async def run(args: argparse.Namespace, tmp: Path, procs: dict[str, subprocess.Popen]) -> str:
    plan = QUICK if args.quick else FULL
    secret = "mw-bench-" + secrets.token_hex(16)
    ports, skipped = start_servers(args, tmp, secret, procs)
    upstream = f"http://127.0.0.1:{ports['upstream']}"
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        why = await wait_ready(session, procs["upstream"], upstream + "/healthz")
        if why:
            raise SystemExit(f"fake upstream did not start: {why}\n    {log_tail(tmp, 'upstream')}")
        loads = []
        for name in (n for n in args.targets if n not in skipped):
            server = procs["upstream" if name == "direct" else name]
            origin = f"http://127.0.0.1:{ports['upstream' if name == 'direct' else name]}"
            load = Load(session, Target(name, origin, server.pid), secret, upstream)
            why = await wait_ready(session, server, origin + "/healthz")
            if why:
                skipped[name] = f"did not start: {why}\n    {log_tail(tmp, name)}"
            elif why := await load.preflight():
                skipped[name] = f"started, but a test request failed: {why}\n    {log_tail(tmp, name)}"
            else:
                loads.append(load)
        for name, why in skipped.items():
            print(f"SKIPPED {TITLES[name]}: {why}", file=sys.stderr)
        print(f"measuring {', '.join(TITLES[load.target.name] for load in loads)} "
              f"({'quick' if args.quick else 'full'} run)", file=sys.stderr)
        await measure(loads, plan)

    targets = [load.target for load in loads]
    traced = ", gateways exporting traces (--otel)" if args.otel else ""
    report = [f"Run: {environment(args.quick)}{traced}.", "", table(targets), "", goals(targets)]
    if any(t.name == "shared" for t in targets):
        report.append("REDIS_ROUND_TRIPS")      # filled in once the shared gateway has stopped
    report += [f"- first failure on {TITLES[t.name]}: `{t.first_error[:300]}`" for t in targets if t.first_error]
    report += [f"- {TITLES[name]} skipped: {why.splitlines()[0]}" for name, why in skipped.items()]
    return "\n".join(report)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke test under 30 s")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES),
                        type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                        help="comma-separated subset of " + ",".join(TARGET_NAMES))
    parser.add_argument("--gateway-cmd", default=os.environ.get("MODELWAY_BENCH_GATEWAY"),
                        help="command that starts the gateway (default: this Python -m proxy.cli; "
                             "e.g. /opt/modelway/venv/bin/modelway); 'serve --config ...' is appended")
    parser.add_argument("--otel", action="store_true", help="gateways export OpenTelemetry traces (OTLP/HTTP) "
                        "to a sink in the fake upstream")
    parser.add_argument("--write-readme", action="store_true", help="put the result table in bench/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, process logs)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    args.targets = [n for n in TARGET_NAMES if n in args.targets]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="modelway-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            report = runner.run(run(args, tmp, procs))
    except KeyboardInterrupt:
        raise SystemExit(130)
    finally:
        for name, proc in procs.items():
            note = stop(proc)
            if note and name in GATEWAYS:
                print(f"note: {TITLES[name]} {note}", file=sys.stderr)
        if "shared" in procs and "report" in locals():
            report = report.replace("REDIS_ROUND_TRIPS", redis_round_trips(tmp))
        if args.keep:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report)
    print(f"\n(bench took {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.write_readme:
        write_readme(report)


if __name__ == "__main__":
    main()
