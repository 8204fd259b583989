"""A fresh PostgreSQL database per test on the session's throwaway server (tests/engines.py),
and the "nodes" of the key store and ledger tests: PostgresEngine instances on it, each as a
gateway process would hold one (schema created or upgraded by the engine's first probe)."""
from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest

from proxy.state.engines import PostgresEngine
from tests.engines import postgres_server  # noqa: F401  (session fixture)


async def _admin(server):
    return await asyncpg.connect(server.url, timeout=10)


@pytest.fixture
async def pg_url(postgres_server):  # noqa: F811
    """The URL of a database created for this test and dropped after it."""
    if postgres_server.proc is None:         # a test that stopped it failed before starting it again
        postgres_server.start()
    name = "t_" + secrets.token_hex(6)
    admin = await _admin(postgres_server)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    if postgres_server.proc is None:
        postgres_server.start()
    admin = await _admin(postgres_server)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def engines(pg_url):
    """`await engines()`: a started PostgresEngine on this test's database (a node's); all closed after."""
    opened: list[PostgresEngine] = []

    async def make(timeout_ms: float = 1000.0) -> PostgresEngine:
        engine = PostgresEngine(pg_url, timeout_ms)
        await engine.start()
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        await engine.close()


async def within(seconds: float, check) -> float:
    """Poll `check()` (sync or async) until true; the seconds it took. Fails after `seconds`."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"not true within {seconds} s"
        await asyncio.sleep(0.01)
