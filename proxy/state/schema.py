"""The PostgreSQL schema, versioned: MIGRATIONS[i] takes the schema from version i to i + 1.

`upgrade` runs at start (each time a node's database comes up) and from `modelway migrate`. It
holds a transaction-scoped advisory lock, so nodes starting together upgrade once, and records
each applied version in `modelway_schema`. A database whose schema is newer than this code
knows is refused (SchemaTooNew): an older node must not write into tables it does not know.
A new kind of state in PostgreSQL (keys, ledger) is one more entry at the end; an entry is
never edited once released.
"""
from __future__ import annotations

LOCK_ID = 0x6D6F64656C776179 & 0x7FFFFFFFFFFFFFFF    # "modelway": pg_advisory_xact_lock's bigint

MIGRATIONS: tuple[str, ...] = (
    # 1: stored responses (POST /v1/responses with store), as in the embedded SQLite table
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        previous_id TEXT,
        response BYTEA NOT NULL,
        input BYTEA NOT NULL
    );
    CREATE INDEX responses_expiry ON responses (expires_at);
    """,
)
VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    def __init__(self, found: int):
        super().__init__(f"the database schema is at version {found}, newer than this Modelway knows "
                         f"({VERSION}); upgrade Modelway on this node")
        self.found = found


async def upgrade(conn) -> tuple[int, int]:
    """Bring the schema to VERSION; returns (version before, version after)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await conn.execute("CREATE TABLE IF NOT EXISTS modelway_schema (version INTEGER PRIMARY KEY, "
                           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        found = await conn.fetchval("SELECT coalesce(max(version), 0) FROM modelway_schema")
        if found > VERSION:
            raise SchemaTooNew(found)
        for version in range(found + 1, VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO modelway_schema (version) VALUES ($1)", version)
    return found, VERSION
