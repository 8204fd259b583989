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
        self.writing: dict[str, bytes] = {}   # stored but not yet on disk: read-your-writes

    async def get(self, key: str) -> bytes | None:
        value = self.writing.get(key)
        if value is not None:
            return value
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.store.get, key)

    def put_later(self, key: str, value: bytes, ttl: float) -> None:
        self.writing[key] = value
        fut = asyncio.get_running_loop().run_in_executor(self.executor, self._put, key, value, ttl)
        self.pending.add(fut)

        def done(f: asyncio.Future) -> None:
            self.pending.discard(f)
            if self.writing.get(key) is value:
                del self.writing[key]
        fut.add_done_callback(done)

    def _put(self, key: str, value: bytes, ttl: float) -> None:
        self.store.set(key, value, expire=ttl)

    async def close(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        self.executor.shutdown(wait=True)
        self.store.close()
