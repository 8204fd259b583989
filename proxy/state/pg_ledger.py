"""The shared ledger in PostgreSQL (the `Ledger` interface of proxy/store/base.py): every node
writes its rows there in batches, and the account API and `modelway usage` read every node's.

Batching, queue bounds, health and metrics are LedgerWriter's (proxy/store/ledger.py); only
where a batch goes differs. Each row gets a `uid` (this process's random prefix + a counter)
before its first write; one statement inserts the batch (`unnest` of one array per column,
`ON CONFLICT (uid) DO NOTHING`) and returns the rows actually inserted, and in the same
transaction those rows' costs are taken from their managed keys' balances (`balance IS NULL`:
unlimited) and `last_used_at` moves forward, keys locked in id order (no deadlock between
nodes). A batch written twice is therefore stored and charged once. The id a client may send
(X-Request-Id) is not the idempotency key: two requests sharing it are two rows.

PostgreSQL unreachable (down, refused, timed out): the batch goes to `ledger_spool` in the
node's own SQLite file (data_dir/modelway.db, with its uids), and is replayed in order, in
batches of REPLAY_BATCH, once the database answers again; a replayed batch leaves the spool
only after its transaction committed, so a crash in between replays it again, which the uids
make harmless. Only if the spool cannot be written either is the batch kept in memory
(LedgerWriter's retry and `max_pending`). Reads need PostgreSQL: while it is down they answer
503 `state_unavailable`, and spooled rows are counted once replayed.
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import sqlite3
from operator import itemgetter

import asyncpg
import structlog

from proxy.errors import StateUnavailable, Unavailable
from proxy.state import pg_usage
from proxy.state.engines import EngineDown, PostgresEngine
from proxy.store.db import LEDGER_COLUMNS, Database, stop_task, transaction
from proxy.store.ledger import LedgerWriter, _converted, _plain_numbers
from proxy.store.usage import query_activity, query_analytics, query_balance, query_latency, query_spend

log = structlog.get_logger(__name__)

REPLAY_BATCH = 1000          # spooled rows per replayed transaction
REPLAY_CHECK_SECONDS = 1.0   # how often the spool is looked at while it may hold rows
SPOOL_CHECK_SECONDS = 10.0   # ... and otherwise (another worker of this node may have spooled)

_INT4 = {"status", "stream", "cache_hit", "partial", "attempts"}
_INT8 = {"prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens"}
_FLOAT8 = {"created_at", "cost", "latency_ms", "ttft_ms"}
_NULLABLE_NUMBERS = {"status", "latency_ms", "ttft_ms"}     # -1 (NONE_NUMBER) there means NULL


def _pg_type(c: str) -> str:
    return "int4" if c in _INT4 else "int8" if c in _INT8 else "float8" if c in _FLOAT8 else "text"


def _value(c: str) -> str:
    """A column's value from the unnest, the missing-value markers of ledger.py turned into NULL."""
    if _pg_type(c) == "text":
        return f"nullif({c}, '')"
    return f"nullif({c}, -1)" if c in _NULLABLE_NUMBERS else c


_COLUMNS = ("uid", *LEDGER_COLUMNS)
_INSERT = f"""
INSERT INTO ledger ({', '.join(_COLUMNS)})
SELECT uid, {', '.join(map(_value, LEDGER_COLUMNS))}
FROM unnest({', '.join(f'${i + 1}::{"text" if c == "uid" else _pg_type(c)}[]' for i, c in enumerate(_COLUMNS))})
    AS t ({', '.join(_COLUMNS)})
ON CONFLICT (uid) DO NOTHING
RETURNING key_id, cost, created_at
"""
_CHARGE = """
UPDATE api_keys SET balance = balance - c.cost, last_used_at = greatest(coalesce(last_used_at, 0), c.at)
FROM unnest($1::text[], $2::float8[], $3::float8[]) AS c (id, cost, at) WHERE api_keys.id = c.id
"""


async def write_rows(conn, uids: list[str], rows: list[tuple], charge: bool = True) -> int:
    """Insert the rows not stored yet and (`charge`) charge their managed keys, in one
    transaction. Returns how many were inserted."""
    async with conn.transaction():
        inserted = await conn.fetch(_INSERT, uids, *map(list, zip(*rows)))
        if not charge:
            return len(inserted)
        charges: dict[str, list[float]] = {}
        for key_id, cost, at in inserted:
            if key_id is not None:
                total = charges.setdefault(key_id, [0.0, at])
                total[0] += cost
                total[1] = max(total[1], at)
        if charges:
            ids = sorted(charges)
            await conn.execute("SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids)
            await conn.execute(_CHARGE, ids, [charges[i][0] for i in ids], [charges[i][1] for i in ids])
    return len(inserted)


# --- the spool, in the node's SQLite file (database thread) ---------------------------------
_SPOOL = (f"CREATE TABLE IF NOT EXISTS ledger_spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, "
          f"{', '.join(LEDGER_COLUMNS)})")


def spool(conn: sqlite3.Connection, uids: list[str], rows: list[tuple]) -> None:
    conn.execute(_SPOOL)
    with transaction(conn):
        conn.executemany(f"INSERT INTO ledger_spool (uid, {', '.join(LEDGER_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_COLUMNS))})", [(u, *r) for u, r in zip(uids, rows)])


def spooled(conn: sqlite3.Connection, limit: int) -> list[tuple]:
    """The oldest spooled rows: (seq, uid, *values)."""
    conn.execute(_SPOOL)
    return conn.execute(f"SELECT seq, uid, {', '.join(LEDGER_COLUMNS)} FROM ledger_spool ORDER BY seq LIMIT ?",
                        (limit,)).fetchall()


def unspool(conn: sqlite3.Connection, seqs: list[int]) -> None:
    with transaction(conn):
        conn.executemany("DELETE FROM ledger_spool WHERE seq = ?", [(s,) for s in seqs])


# the embedded read of each LedgerWriter read method -> the same read in PostgreSQL
_READS = {query_activity: pg_usage.activity, query_analytics: pg_usage.analytics,
          query_balance: pg_usage.balance, query_latency: pg_usage.latency, query_spend: pg_usage.spend}
_SEQ, _UID = itemgetter(0), itemgetter(1)


class PostgresLedger(LedgerWriter):
    def __init__(self, engine: PostgresEngine, db: Database, **options) -> None:
        super().__init__(db, **options)
        self.engine = engine
        self.pruner = pg_usage.PostgresPruner(engine, options.get("retention_days"))
        self._prefix = secrets.token_hex(8) + ":"
        self._counter = itertools.count()
        self._spooled = True          # the spool may hold rows (from an earlier run, too)
        self._replay_lock = asyncio.Lock()
        self._replay_task: asyncio.Task | None = None

    @classmethod
    def build(cls, ctx) -> "PostgresLedger":
        return cls(ctx.engines.database, ctx.db, metrics=ctx.metrics, retention_days=ctx.config.ledger.retention_days)

    async def _write(self, batch: list[tuple]) -> None:
        rows = batch if _plain_numbers(batch) else _converted(batch)
        if not rows:
            return
        uids = [self._prefix + format(n, "x") for n in itertools.islice(self._counter, len(rows))]
        try:
            try:
                await self.engine.call(write_rows, uids, rows)
            except (asyncpg.DataError, TypeError, ValueError, OverflowError):
                rows = _converted(rows)     # a value of a type its column does not take: convert, once
                await self.engine.call(write_rows, uids, rows)
            return
        except EngineDown as exc:
            reason = str(exc)
        except Exception as exc:    # not the engine's fault; keep the rows all the same
            reason = f"{type(exc).__name__}: {exc}"
            log.error("ledger_write_failed", rows=len(rows), error=reason[:300])
        await self.db.run(spool, uids, rows)
        if not self._spooled:
            log.warning("ledger_spooling", rows=len(rows), reason=reason[:300], to=str(self.db.path))
        self._spooled = True

    async def replay(self) -> int:
        """Move spooled rows into PostgreSQL, oldest first; returns how many left the spool.
        Raises EngineDown (rows stay spooled) when the database is down."""
        async with self._replay_lock:
            moved = 0
            while batch := await self.db.run(spooled, REPLAY_BATCH):
                await self.engine.call(write_rows, list(map(_UID, batch)), [r[2:] for r in batch])
                await self.db.run(unspool, list(map(_SEQ, batch)))
                moved += len(batch)
            self._spooled = False
            if moved:
                log.info("ledger_replayed", rows=moved)
            return moved

    async def _replaying(self) -> None:
        waited = 0.0
        while True:
            await asyncio.sleep(REPLAY_CHECK_SECONDS)
            waited += REPLAY_CHECK_SECONDS
            if not self.engine.up or (not self._spooled and waited < SPOOL_CHECK_SECONDS):
                continue
            waited = 0.0
            try:
                await self.replay()
            except Exception as exc:   # down again, or the spool cannot be read: next time
                log.warning("ledger_replay_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def start(self) -> None:
        await super().start()
        if self._replay_task is None:
            self._replay_task = asyncio.create_task(self._replaying(), name="ledger-replay")

    async def close(self) -> None:
        await stop_task(self._replay_task)
        self._replay_task = None
        await super().close()      # what is left goes to PostgreSQL or the spool

    async def _read(self, query, *args):
        try:
            await self.flush()
        except Exception as exc:
            raise Unavailable("The ledger cannot be written right now; try again later (the gateway's /readyz "
                              "and logs say why).", code="ledger_unavailable") from exc
        try:
            return await self.engine.call(_READS[query], *args)
        except EngineDown as exc:
            raise StateUnavailable("The ledger is unavailable: the gateway's database cannot be reached. "
                                   "Try again shortly.", code="state_unavailable") from exc
