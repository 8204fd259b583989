"""The response cache store: diskcache on disk, every call in a worker thread."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import diskcache


class ResponseCache:
    def __init__(self, directory: str, size_limit_mb: float):
        os.makedirs(directory, exist_ok=True)
        self.store = diskcache.Cache(directory, size_limit=int(size_limit_mb * 1024 * 1024),
                                     eviction_policy="least-recently-stored")
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache")
        self.pending: set[asyncio.Future] = set()

    async def get(self, key: str) -> bytes | None:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.store.get, key)

    def put_later(self, key: str, value: bytes, ttl: float) -> None:
        fut = asyncio.get_running_loop().run_in_executor(self.executor, self._put, key, value, ttl)
        self.pending.add(fut)
        fut.add_done_callback(self.pending.discard)

    def _put(self, key: str, value: bytes, ttl: float) -> None:
        self.store.set(key, value, expire=ttl)

    async def close(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        self.executor.shutdown(wait=True)
        self.store.close()
