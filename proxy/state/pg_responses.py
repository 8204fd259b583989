"""Stored responses in PostgreSQL (the `ResponseStore` interface of proxy/store/responses.py):
every node reads what any node stored, `previous_response_id` chains included.

While PostgreSQL is down, reads (GET / DELETE / input_items, `previous_response_id`) answer 503
`state_unavailable`; keeping them in a node-local table instead would answer 404 on the other
nodes for what this one stored. `put` raises the same error; the endpoint then still answers
the response, with `store: false` (the upstream's answer was paid for; it is not lost).
"""
from __future__ import annotations

import time

import orjson

from proxy.errors import StateUnavailable
from proxy.state.engines import EngineDown, PostgresEngine
from proxy.store.responses import MAX_CHAIN, PURGE_EVERY, ResponseStore

_ROW = "SELECT previous_id, response, input FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3"
_CHAIN = f"""
WITH RECURSIVE chain (previous_id, response, input, depth) AS (
    SELECT previous_id, response, input, 1 FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3
  UNION ALL
    SELECT r.previous_id, r.response, r.input, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.previous_id
    WHERE r.owner = $2 AND r.expires_at > $3 AND c.depth < {MAX_CHAIN}
)
SELECT response, input FROM chain ORDER BY depth DESC
"""
_PUT = """
INSERT INTO responses (id, owner, created_at, expires_at, previous_id, response, input)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, created_at = EXCLUDED.created_at,
    expires_at = EXCLUDED.expires_at, previous_id = EXCLUDED.previous_id, response = EXCLUDED.response,
    input = EXCLUDED.input
"""


class PostgresResponses(ResponseStore):
    def __init__(self, engine: PostgresEngine):
        self.engine = engine
        self._purged = 0.0

    @classmethod
    def build(cls, ctx) -> "PostgresResponses":
        return cls(ctx.engines.database)

    async def _call(self, fn, *args):
        try:
            return await self.engine.call(fn, *args)
        except EngineDown as exc:
            raise StateUnavailable("Stored responses are unavailable: the gateway's database cannot be "
                                   "reached. Try again shortly.", code="state_unavailable") from exc

    async def put(self, owner: str, response: dict, items: list[dict], ttl: float) -> None:
        now = time.time()
        purge = now - self._purged > PURGE_EVERY
        await self._call(_put, owner, response, items, now, now + ttl, purge)
        if purge:
            self._purged = now

    async def get(self, owner: str, response_id: str) -> dict | None:
        row = await self._call(_row, owner, response_id)
        return orjson.loads(row["response"]) if row else None

    async def delete(self, owner: str, response_id: str) -> bool:
        return await self._call(_delete, owner, response_id)

    async def input_items(self, owner: str, response_id: str) -> list[dict] | None:
        row = await self._call(_row, owner, response_id)
        return orjson.loads(row["input"]) if row else None

    async def conversation(self, owner: str, response_id: str) -> list[dict] | None:
        rows = await self._call(_chain, owner, response_id)
        if not rows:
            return None
        return [item for r in rows for item in orjson.loads(r["input"]) + (orjson.loads(r["response"]).get("output") or [])]


async def _put(conn, owner, response, items, now, expires, purge) -> None:
    async with conn.transaction():
        await conn.execute(_PUT, response["id"], owner, now, expires, response.get("previous_response_id"),
                           orjson.dumps(response), orjson.dumps(items))
        if purge:
            await conn.execute("DELETE FROM responses WHERE expires_at < $1", now)


async def _row(conn, owner, response_id):
    return await conn.fetchrow(_ROW, response_id, owner, time.time())


async def _delete(conn, owner, response_id) -> bool:
    status = await conn.execute("DELETE FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3",
                                response_id, owner, time.time())
    return status != "DELETE 0"


async def _chain(conn, owner, response_id):
    return await conn.fetch(_CHAIN, response_id, owner, time.time())
