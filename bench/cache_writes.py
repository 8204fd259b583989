"""The response cache's disk work per entry, measured in isolation:

    python -m bench.cache_writes [--entries 20000] [--batch 32] [--size 1200]

- write: CPU time (of the writing thread) and wall time per entry of `ResponseCache._write`,
  the batch job its writer thread runs every 0.25 s, on batches of `--batch` answers of
  `--size` bytes (a typical chat answer with its JSON envelope);
- scan: the other workers' side, the time to pick up one batch's keys (`_new_keys`);
- miss by lookup: what a miss would cost if it asked diskcache (`Cache.get` in a thread)
  instead of the in-memory key set: the alternative to the scan.

Run it on two checkouts to compare implementations; results in bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from proxy.response_cache import ResponseCache


def measure_writes(cache: ResponseCache, entries: int, batch: int, size: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per entry, median over batches."""
    value = os.urandom(size // 2).hex().encode()
    cpu, wall = [], []
    for start in range(0, entries, batch):
        items = {f"{n:032x}": (value, 3600.0) for n in range(start, start + batch)}
        c0, w0 = time.thread_time(), time.perf_counter()
        cache._write(items)
        cpu.append((time.thread_time() - c0) / batch * 1e6)
        wall.append((time.perf_counter() - w0) / batch * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def measure_scan(reader: ResponseCache, writer: ResponseCache, rounds: int, batch: int, size: int) -> float:
    """µs for a reader to pick up one new batch of the writer's keys."""
    value = os.urandom(size // 2).hex().encode()
    seen = reader._seen if hasattr(reader, "_seen") else reader._last_rowid
    seen, _ = reader._new_keys(seen)
    times = []
    for r in range(rounds):
        writer._write({f"scan{r:06d}{n:020x}": (value, 3600.0) for n in range(batch)})
        t0 = time.perf_counter()
        seen, keys = reader._new_keys(seen)
        times.append((time.perf_counter() - t0) * 1e6)
        assert len(keys) >= batch, (len(keys), batch)
    return statistics.median(times)


async def measure_miss_lookup(cache: ResponseCache, misses: int) -> tuple[float, float]:
    """(µs per miss asked of diskcache in a thread, µs per miss answered by the key set)."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    t0 = time.perf_counter()
    for n in range(misses):
        assert await loop.run_in_executor(executor, cache.store.get, f"miss{n:028x}") is None
    thread = (time.perf_counter() - t0) / misses * 1e6
    known = cache.known
    t0 = time.perf_counter()
    for n in range(misses):
        assert f"miss{n:028x}" not in known
    in_memory = (time.perf_counter() - t0) / misses * 1e6
    executor.shutdown()
    return thread, in_memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=1200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "cache")
        writer = ResponseCache(directory, 1024)
        reader = ResponseCache(directory, 1024)
        cpu, wall = measure_writes(writer, args.entries, args.batch, args.size)
        print(f"write: {cpu:.1f} µs CPU, {wall:.1f} µs wall per entry "
              f"(batches of {args.batch}, {args.size} B values, {args.entries} entries)")
        scan = measure_scan(reader, writer, 200, args.batch, args.size)
        print(f"scan: {scan:.0f} µs to pick up a batch of {args.batch} keys written by another worker")
        thread, in_memory = asyncio.run(measure_miss_lookup(reader, 5000))
        print(f"miss: {thread:.1f} µs asked of diskcache in a thread, {in_memory:.2f} µs by the key set")
        for cache in (writer, reader):
            cache.executor.shutdown()
            cache.store.close()


if __name__ == "__main__":
    main()
