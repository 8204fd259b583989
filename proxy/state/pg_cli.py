"""`modelway keys ...` and `modelway usage` on a node whose routes.yaml names `state.database`:
the same commands on the shared PostgreSQL store, through one short-lived connection per
command (the schema is created or upgraded first, as a node does at start). A node's copy of
the keys hears of a change by the database's notification, as for one made over HTTP."""
from __future__ import annotations

import asyncio
import sys
from typing import Any

import asyncpg

from proxy.state import pg_keys, pg_usage, schema
from proxy.state.urls import masked
from proxy.store.keys import UPDATABLE

CONNECT_SECONDS = 10.0


def run(url: str, fn, *args):
    """`await fn(conn, *args)` on a fresh connection; exits with a message naming the database
    (password masked) when it cannot be reached."""
    try:
        return asyncio.run(_run(url, fn, args))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, schema.SchemaTooNew) as exc:
        print(f"modelway: {masked(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


async def _run(url: str, fn, args: tuple):
    conn = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    try:
        await schema.upgrade(conn)
        return await fn(conn, *args)
    finally:
        await conn.close()


class PostgresCliKeys:
    """KeyStore's blocking CLI methods, on PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def create(self, **fields: Any) -> tuple[dict, str]:
        record, secret, _ = run(self.url, pg_keys._create, fields)
        return record, secret

    def list(self) -> list[dict]:
        return run(self.url, pg_keys._select)

    def get(self, key_id: str) -> dict | None:
        return run(self.url, pg_keys._get, key_id)

    def update(self, key_id: str, **fields: Any) -> dict | None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        return run(self.url, pg_keys._update, key_id, fields)[0]

    def revoke(self, key_id: str) -> bool:
        return run(self.url, pg_keys._revoke, key_id) is not None

    def close(self) -> None:
        """Nothing stays open between commands."""


def usage_report(url: str, by: str = "model", since: float | None = None, until: float | None = None,
                 key_id: str | None = None) -> list[dict]:
    return run(url, pg_usage.analytics, key_id, by, since, until)
