"""`modelway migrate --from-sqlite`: an embedded install's managed keys, ledger rows and daily
rollups copied from its SQLite file into PostgreSQL, idempotently (run it again: nothing is
copied twice).

Keys keep their id, hash and balance (a key already in PostgreSQL, by id or hash, is left as it
is there). Ledger rows get the uid `sqlite:` + a digest of their SQLite id and values, so the
same file (or a copy of it) adds each row once; they are not charged again (the SQLite balance
already has their cost taken). A rollup whose day, key and model PostgreSQL already has is left
as it is there.
"""
from __future__ import annotations

import hashlib
import sqlite3

import orjson

from proxy.state.pg_ledger import write_rows
from proxy.store.db import LEDGER_COLUMNS

BATCH = 1000
_KEY_COLUMNS = ("id", "label", "sha256", "prefix", "allowed_models", "minute_limit", "daily_limit", "balance",
                "max_concurrent", "expires_at", "disabled", "created_at", "updated_at", "last_used_at")
_ROLLUP_COLUMNS = ("day", "key_id", "model", "key_label", "requests", "prompt_tokens", "completion_tokens",
                   "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost", "cache_hits", "errors")


def _insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"


def _uid(row: tuple) -> str:
    return "sqlite:" + hashlib.sha256(orjson.dumps(row)).hexdigest()[:32]


def _has(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


async def _copy(conn, db, table: str, columns: tuple[str, ...], fix=None) -> tuple[int, int]:
    if not _has(db, table):
        return 0, 0
    cur = db.execute(f"SELECT {', '.join(columns)} FROM {table}")
    moved = total = 0
    while batch := cur.fetchmany(BATCH):
        total += len(batch)
        async with conn.transaction():
            for row in batch:
                status = await conn.execute(_insert(table, columns), *(fix(row) if fix else row))
                moved += status == "INSERT 0 1"
    return moved, total


async def migrate_from_sqlite(conn, sqlite_path: str) -> dict[str, tuple[int, int]]:
    """Copy keys, ledger rows and rollups; {what: (copied now, found in the file)}."""
    db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        disabled = _KEY_COLUMNS.index("disabled")
        out = {"keys": await _copy(conn, db, "api_keys", _KEY_COLUMNS,
                                   lambda r: (*r[:disabled], bool(r[disabled]), *r[disabled + 1:])),
               "ledger rows": (0, 0),
               "daily rollups": await _copy(conn, db, "ledger_daily", _ROLLUP_COLUMNS)}
        if _has(db, "ledger"):
            cur = db.execute(f"SELECT id, {', '.join(LEDGER_COLUMNS)} FROM ledger ORDER BY id")
            moved = total = 0
            while batch := cur.fetchmany(BATCH):
                total += len(batch)
                moved += await write_rows(conn, [_uid(r) for r in batch], [r[1:] for r in batch], charge=False)
            out["ledger rows"] = moved, total
        return out
    finally:
        db.close()
