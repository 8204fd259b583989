"""A response-cache hit (and miss) in Redis against the embedded diskcache, measured in isolation:

    python -m bench.redis_cache [--redis redis://127.0.0.1:6379/15] [--lookups 5000] [--size 1200]

- hit / miss: wall µs per `await cache.get(key)` one after another, and the process's CPU µs
  for it (all threads: diskcache's reads run in its thread), for `ResponseCache` (data_dir on
  this machine's disk) and `RedisResponseCache` (a throwaway redis-server on 127.0.0.1 unless
  --redis names one; its database is flushed);
- concurrent: the same hits, 64 at a time (a busy node), wall µs per hit;
- codec: zlib level 1 on answers of several sizes (µs to compress and decompress, ratio), which
  sets COMPRESS_OVER.

Results in bench/README.md ("Response cache in Redis").
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import string
import tempfile
import time
import zlib
from pathlib import Path

import orjson
from redis import asyncio as aioredis

from proxy.response_cache import ResponseCache
from proxy.state.response_cache import RedisResponseCache


def answer(size: int) -> bytes:
    """A stored entry of about `size` bytes: a chat completion whose text is words drawn from a
    vocabulary of 3000 (zlib shrinks it about as much as English prose: to 50-60 %)."""
    rng = random.Random(size)
    vocabulary = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                  for _ in range(3000)]
    text, n = [], 0
    while n < size - 400:
        w = rng.choice(vocabulary)
        text.append(w)
        n += len(w) + 1
    completion = {"id": "chatcmpl-0123456789", "object": "chat.completion", "created": 1733000000,
                  "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": " ".join(text)}}],
                  "usage": {"prompt_tokens": 120, "completion_tokens": len(text), "total_tokens": 120 + len(text)}}
    return orjson.dumps({"completion": completion, "provider": "openai", "upstream_model": "gpt-4o-mini"})


async def sequential(cache, keys: list[str], want_hit: bool) -> tuple[float, float]:
    """(wall µs, CPU µs) per lookup."""
    c0, w0 = time.process_time(), time.perf_counter()
    for key in keys:
        value = await cache.get(key) if cache.might_have(key) else None
        assert (value is not None) == want_hit
    n = len(keys)
    return (time.perf_counter() - w0) / n * 1e6, (time.process_time() - c0) / n * 1e6


async def concurrent(cache, keys: list[str], width: int = 64) -> tuple[float, int]:
    """(wall µs per hit, lookups that missed: timed out)."""
    missed = 0
    w0 = time.perf_counter()
    for i in range(0, len(keys), width):
        values = await asyncio.gather(*(cache.get(k) for k in keys[i:i + width]))
        missed += sum(v is None for v in values)
    return (time.perf_counter() - w0) / len(keys) * 1e6, missed


async def measure(cache, value: bytes, lookups: int) -> dict:
    keys = [f"{n:032x}" for n in range(lookups)]
    for key in keys:
        cache.put_later(key, value, 3600.0)
    await cache.flush()
    if isinstance(cache, ResponseCache):
        await cache.get("warm-up")           # starts its feed poller, lists the keys
    await sequential(cache, keys[:200], True)
    await concurrent(cache, keys[:640])       # the connection pool grows to 64
    hit = await sequential(cache, keys, True)
    miss = await sequential(cache, [f"miss{n:028x}" for n in range(lookups)], False)
    return {"hit": hit, "miss": miss, "concurrent": await concurrent(cache, keys)}


def codec(sizes=(1200, 2048, 4096, 16384, 65536), rounds: int = 2000) -> list[tuple]:
    """(size, compressed size, CPU µs to compress, CPU µs to decompress) per answer size."""
    rows = []
    for size in sizes:
        value = answer(size)
        t0 = time.thread_time()
        for _ in range(rounds):
            packed = zlib.compress(value, 1)
        enc = (time.thread_time() - t0) / rounds * 1e6
        t0 = time.thread_time()
        for _ in range(rounds):
            zlib.decompress(packed)
        dec = (time.thread_time() - t0) / rounds * 1e6
        rows.append((len(value), len(packed), enc, dec))
    return rows


async def run(args, url: str) -> None:
    value = answer(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        embedded = ResponseCache(os.path.join(tmp, "cache"), 1024)
        results = {"embedded (diskcache)": await measure(embedded, value, args.lookups)}
        await embedded.close()
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    shared = RedisResponseCache(client)
    results["Redis (loopback)"] = await measure(shared, value, args.lookups)
    await shared.close()
    await client.flushdb()
    await client.aclose()
    print(f"{args.lookups} lookups of {len(value)} B entries, one after another (wall µs / CPU µs "
          "per lookup) and 64 at a time (wall µs per hit)")
    print("| backend | hit | miss | hit, 64 concurrent (timed out) |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['hit'][0]:.0f} / {r['hit'][1]:.0f} | {r['miss'][0]:.1f} / {r['miss'][1]:.1f} "
              f"| {r['concurrent'][0]:.0f} ({r['concurrent'][1]}) |")
    print("\n| answer | zlib -1 | compress, CPU µs | decompress, CPU µs |\n|---|---|---|---|")
    for size, packed, enc, dec in codec():
        print(f"| {size} B | {packed} B ({packed / size:.0%}) | {enc:.1f} | {dec:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", help="a Redis URL whose database may be flushed; default: a throwaway server")
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1200)
    args = parser.parse_args()
    if args.redis:
        asyncio.run(run(args, args.redis))
        return
    from tests.engines import RedisServer     # only for a throwaway server (needs redis-server)
    with tempfile.TemporaryDirectory() as root:
        server = RedisServer(Path(root))
        server.start()
        try:
            asyncio.run(run(args, server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
