"""Stored responses (`store: true` on POST /v1/responses): the response object and its input
items, owned by the API key that made it, kept for `responses.retention_days`.

`ResponseStore` is the interface the endpoint uses; `SQLiteResponses` keeps them in the
embedded database (its own table, through the database thread); `PostgresResponses`
(proxy/state/pg_responses.py) is the shared one, picked by proxy/state/stores.py.
"""
from __future__ import annotations

import sqlite3
import time

import orjson

from proxy.store.db import Database, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    previous_id TEXT,
    response BLOB NOT NULL,
    input BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)
"""
PURGE_EVERY = 3600.0        # seconds between deletions of expired rows (done by a write)
MAX_CHAIN = 10_000          # previous_response_id links followed at most


class ResponseStore:
    """What the Responses endpoint needs from storage. `owner` is the key id ("" without auth);
    a response of another owner, or past its retention, does not exist."""

    async def start(self) -> None: ...

    async def put(self, owner: str, response: dict, items: list[dict], ttl: float) -> None:
        raise NotImplementedError

    async def get(self, owner: str, response_id: str) -> dict | None:
        raise NotImplementedError

    async def delete(self, owner: str, response_id: str) -> bool:
        raise NotImplementedError

    async def input_items(self, owner: str, response_id: str) -> list[dict] | None:
        raise NotImplementedError

    async def conversation(self, owner: str, response_id: str) -> list[dict] | None:
        """Every item of the chain ending at `response_id`, oldest first: each response's input
        items then its output items. None when the response does not exist (for this owner)."""
        raise NotImplementedError


class SQLiteResponses(ResponseStore):
    @classmethod
    def build(cls, ctx) -> "SQLiteResponses":
        return cls(ctx.db)

    def __init__(self, db: Database):
        self.db = db
        self._purged = 0.0

    async def start(self) -> None:
        await self.db.run(_create)

    async def put(self, owner: str, response: dict, items: list[dict], ttl: float) -> None:
        now = time.time()
        purge = now - self._purged > PURGE_EVERY
        if purge:
            self._purged = now
        await self.db.run(_put, owner, response, items, now, now + ttl, purge)

    async def get(self, owner: str, response_id: str) -> dict | None:
        row = await self.db.run(_row, owner, response_id, time.time())
        return orjson.loads(row[1]) if row else None

    async def delete(self, owner: str, response_id: str) -> bool:
        return await self.db.run(_delete, owner, response_id, time.time())

    async def input_items(self, owner: str, response_id: str) -> list[dict] | None:
        row = await self.db.run(_row, owner, response_id, time.time())
        return orjson.loads(row[2]) if row else None

    async def conversation(self, owner: str, response_id: str) -> list[dict] | None:
        return await self.db.run(_conversation, owner, response_id, time.time())


def _create(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            conn.execute(statement)


def _put(conn: sqlite3.Connection, owner: str, response: dict, items: list[dict], now: float,
         expires: float, purge: bool) -> None:
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (response["id"], owner, now, expires, response.get("previous_response_id"),
                      orjson.dumps(response), orjson.dumps(items)))
        if purge:
            conn.execute("DELETE FROM responses WHERE expires_at < ?", (now,))


def _row(conn: sqlite3.Connection, owner: str, response_id: str, now: float):
    return conn.execute("SELECT previous_id, response, input FROM responses WHERE id = ? AND owner = ? "
                        "AND expires_at > ?", (response_id, owner, now)).fetchone()


def _delete(conn: sqlite3.Connection, owner: str, response_id: str, now: float) -> bool:
    with transaction(conn):
        cur = conn.execute("DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
                           (response_id, owner, now))
    return cur.rowcount > 0


def _conversation(conn: sqlite3.Connection, owner: str, response_id: str, now: float) -> list[dict] | None:
    turns: list[list[dict]] = []
    current: str | None = response_id
    while current is not None and len(turns) < MAX_CHAIN:
        row = _row(conn, owner, current, now)
        if row is None:
            if not turns:
                return None
            break               # an older link expired or was deleted: the rest of the chain is kept
        previous, response, items = row
        turns.append(orjson.loads(items) + (orjson.loads(response).get("output") or []))
        current = previous
    return [item for turn in reversed(turns) for item in turn]
