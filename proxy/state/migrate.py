"""`modelway migrate`: create or upgrade the PostgreSQL schema of `state.database` (a node does
the same at start), and with `--from-sqlite PATH` copy a one-VM install's stored responses from
its SQLite file into it, and its managed keys, ledger rows and daily rollups (pg_import.py).
Run again, it copies nothing twice."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import sys

import asyncpg

from proxy.state import schema
from proxy.state.pg_import import migrate_from_sqlite
from proxy.state.urls import masked

CONNECT_SECONDS = 10.0
BATCH = 500


def cmd_migrate(args, config) -> int:
    url = config.state.database
    if not url:
        print(f"modelway: {args.config} has no state.database: nothing to migrate (the embedded "
              "SQLite schema is created by the gateway itself)", file=sys.stderr)
        return 2
    source = args.from_sqlite
    if source is not None:
        source = os.path.join(source, "modelway.db") if os.path.isdir(source) else source
        if not os.path.isfile(source):
            print(f"modelway: no SQLite database at {source}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_migrate(url, source))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        print(f"modelway: {masked(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except schema.SchemaTooNew as exc:
        print(f"modelway: {masked(url)}: {exc}", file=sys.stderr)
        return 1


async def _migrate(url: str, source: str | None) -> int:
    conn = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    try:
        before, after = await schema.upgrade(conn)
        change = f"upgraded from version {before}" if before != after else "already current"
        print(f"{masked(url)}: schema at version {after} ({change})")
        if source is not None:
            moved, total = await _copy_responses(conn, source)
            print(f"{source}: copied {moved} of {total} stored responses ({total - moved} already there)")
            for what, (moved, total) in (await migrate_from_sqlite(conn, source)).items():
                print(f"{source}: copied {moved} of {total} {what} ({total - moved} already there)")
    finally:
        await conn.close()
    return 0


async def _copy_responses(conn, source: str) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'responses'").fetchone()
        rows = db.execute("SELECT id, owner, created_at, expires_at, previous_id, response, input "
                          "FROM responses") if exists else []
        moved = total = 0
        while batch := (rows.fetchmany(BATCH) if exists else []):
            total += len(batch)
            async with conn.transaction():
                for row in batch:
                    status = await conn.execute(
                        "INSERT INTO responses (id, owner, created_at, expires_at, previous_id, response, input) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                        row[0], row[1], row[2], row[3], row[4], bytes(row[5]), bytes(row[6]))
                    moved += status == "INSERT 0 1"
        return moved, total
    finally:
        db.close()
