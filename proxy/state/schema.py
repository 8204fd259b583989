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
    # 2: managed keys (proxy/state/pg_keys.py). A change worth telling the nodes (not a mere
    # last_used_at move) notifies channel `modelway_keys` with the key's sha256, at commit.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        label TEXT,
        sha256 TEXT NOT NULL UNIQUE,
        prefix TEXT,
        allowed_models TEXT,
        minute_limit INTEGER,
        daily_limit DOUBLE PRECISION,
        balance DOUBLE PRECISION,
        max_concurrent INTEGER,
        expires_at DOUBLE PRECISION,
        disabled BOOLEAN NOT NULL DEFAULT false,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION
    );
    CREATE FUNCTION modelway_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('modelway_keys', CASE WHEN TG_OP = 'DELETE' THEN OLD.sha256 ELSE NEW.sha256 END);
        IF TG_OP = 'UPDATE' AND OLD.sha256 <> NEW.sha256 THEN
            PERFORM pg_notify('modelway_keys', OLD.sha256);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER api_keys_changed AFTER INSERT OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION modelway_key_changed();
    CREATE TRIGGER api_keys_updated AFTER UPDATE ON api_keys FOR EACH ROW
        WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
        EXECUTE FUNCTION modelway_key_changed();
    """,
    # 3: the ledger (proxy/state/pg_ledger.py): the SQLite columns plus `uid`, the row's own id
    # given by the node that wrote it (a replayed row is recognised by it), and the daily rollups
    """
    CREATE TABLE ledger (
        id BIGSERIAL PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        request_id TEXT,
        key_id TEXT,
        key_label TEXT,
        model TEXT,
        preset TEXT,
        provider TEXT,
        upstream_model TEXT,
        endpoint TEXT,
        status INTEGER,
        error_type TEXT,
        stream INTEGER NOT NULL DEFAULT 0,
        cache_hit INTEGER NOT NULL DEFAULT 0,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        cache_write_tokens BIGINT NOT NULL DEFAULT 0,
        reasoning_tokens BIGINT NOT NULL DEFAULT 0,
        cost DOUBLE PRECISION NOT NULL DEFAULT 0,
        latency_ms DOUBLE PRECISION,
        ttft_ms DOUBLE PRECISION,
        partial INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX ledger_key_time ON ledger (key_id, created_at);
    CREATE INDEX ledger_time ON ledger (created_at);
    CREATE TABLE ledger_daily (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        key_label TEXT,
        requests BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        cache_hits BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        PRIMARY KEY (day, key_id, model)
    );
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
