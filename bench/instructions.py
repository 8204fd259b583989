"""Instructions per request under valgrind: a deterministic count where CPU time is not.

    python -m bench.instructions [--requests 1000] [--targets gateway,full] [--otel] [--stream] [--keep]

CPU time per request moves by ~10% from run to run on a shared machine, too much to see a
change of a few microseconds. This runs the gateway (access log only) and the gateway with the
full chain under `valgrind --tool=callgrind`, both at once, and reports the instructions each
process executes per request, which repeat to about a percent: all threads (the event loop,
the ledger and cache writers) and the event-loop thread alone. valgrind slows a process ~30-50
times, so every periodic task runs SLOWER times less often than configured (the ledger and cache
writes every 6 s instead of 0.25 s): its batches stay about as large, per request, as in a real
run. The batches' edges make the writers' share vary by a few hundred instructions a request.
Needs valgrind; about a minute and a half. Method and results: bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from bench.run import PLAIN, SEQ, STREAM, free_port, gateway_config, otel_env, spawn, stop, wait_ready

SLOWER = 24    # periodic tasks' intervals times this, for valgrind's slowdown
# start the gateway with every periodic task's interval scaled by SLOWER
LAUNCH = f"""
import functools, sys
import proxy.response_cache as rc, proxy.store.ledger as ledger, proxy.store.metrics as metrics
import proxy.store.counters as counters, proxy.cli
def slower(cls, **defaults):
    cls.__init__ = functools.partialmethod(cls.__init__, **{{k: v * {SLOWER} for k, v in defaults.items()}})
slower(rc.ResponseCache, poll_seconds=0.5, flush_seconds=0.25, cull_seconds=1.0)
slower(ledger.LedgerWriter, interval=0.25)
slower(metrics.Metrics, interval=1.0)
counters.SPEND_FLUSH_SECONDS *= {SLOWER}
sys.exit(proxy.cli.main(sys.argv[1:]))
"""
WARMUP = 800    # long enough for several batch writes: SQLite compiles each INSERT text once
CONCURRENCY = 4


async def drive(origin: str, secret: str, count: int, template: bytes = PLAIN) -> None:
    """`count` requests, CONCURRENCY at a time, each body unique (every one a cache miss)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(origin + "/v1/chat/completions", data=template % next(SEQ),
                                        headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP {resp.status} from {origin}: {body[:200]!r}")
        await asyncio.gather(*(worker(count // CONCURRENCY + (i < count % CONCURRENCY))
                               for i in range(CONCURRENCY)))


async def ready(origin: str, proc: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as session:
        why = await wait_ready(session, proc, origin + "/healthz", timeout=600)
    if why:
        raise SystemExit(f"the gateway under valgrind did not start: {why}")


def measure(name: str, upstream_port: int, tmp: Path, requests: int, secret: str, otel: bool = False,
            body: bytes = PLAIN) -> tuple[int, int]:
    """Instructions per request of one target: (all threads, the event-loop thread)."""
    port = free_port()
    data = tmp / f"{name}-data"
    data.mkdir()
    config = tmp / f"{name}.yaml"
    config.write_text(gateway_config(port, upstream_port, data, secret if name == "full" else None))
    out = tmp / f"{name}.callgrind"
    proc = spawn(name, ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
                        sys.executable, "-c", LAUNCH, "serve", "--config", str(config)], tmp,
                 env=otel_env(upstream_port) if otel else None)
    origin = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(ready(origin, proc))
        asyncio.run(drive(origin, secret, WARMUP, body))
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(drive(origin, secret, requests, body))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        stop(proc, timeout=120)
    # one dump per thread: <out>.<pid>.<dump number>-<thread number>; thread 01 runs the loop
    dumps = [p for p in tmp.glob(f"{name}.callgrind.*") if re.search(r"\.\d+\.\d+-\d+$", p.name)]
    if not dumps:
        raise SystemExit(f"no callgrind dump for {name}")
    totals = {p.name.rsplit("-", 1)[1]: sum(int(line.split()[1]) for line in p.read_text().splitlines()
                                            if line.startswith("totals:")) for p in dumps}
    return round(sum(totals.values()) / requests), round(totals.get("01", 0) / requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per target")
    parser.add_argument("--targets", default="gateway,full", help="comma-separated: gateway, full")
    parser.add_argument("--otel", action="store_true", help="the gateways export OpenTelemetry traces (OTLP/HTTP) "
                        "to a sink in the fake upstream")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the callgrind dumps"
                        " (callgrind_annotate <dump> lists the functions)")
    parser.add_argument("--stream", action="store_true", help="streamed requests (20 chunks and usage) instead of plain")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (with callgrind_control) is needed: apt install valgrind")
    targets = [t.strip() for t in args.targets.split(",") if t.strip() in ("gateway", "full")]
    tmp = Path(tempfile.mkdtemp(prefix="modelway-instructions-"))
    secret = "mw-bench-" + secrets.token_hex(16)
    upstream_port = free_port()
    upstream = spawn("upstream", [sys.executable, "-m", "bench.fake_upstream", "--port", str(upstream_port)], tmp)
    try:
        with ThreadPoolExecutor(len(targets)) as pool:
            counts = dict(zip(targets, pool.map(
                lambda t: measure(t, upstream_port, tmp, args.requests, secret, args.otel,
                                  STREAM if args.stream else PLAIN), targets)))
    finally:
        stop(upstream)
        if args.keep:
            print(f"callgrind dumps and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, (total, loop) in counts.items():
        print(f"{name:8} {total / 1000:8.1f} k instructions/request ({loop / 1000:.1f} k in the event-loop thread,"
              f" {(total - loop) / 1000:.1f} k in the others)")
    if len(counts) == 2:
        (full, full_loop), (gateway, gateway_loop) = counts["full"], counts["gateway"]
        print(f"full ÷ gateway: {full / gateway:.3f}× (event-loop thread alone: {full_loop / gateway_loop:.3f}×)")


if __name__ == "__main__":
    main()
