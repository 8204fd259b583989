"""The embedded SQLite database under `data_dir/modelway.db`: connection settings, schema, and
the one worker thread every query of a process runs in.

`Database` owns one connection and one single-thread executor. Async code awaits
`db.run(fn, *args)`; the CLI calls `db.call(fn, *args)` (blocking, never from the event loop).
`fn` receives the connection as its first argument and always runs in the worker thread, so the
connection is never used from two threads at once. Several worker processes share the file;
WAL mode plus a 5 s busy timeout lets their writers queue instead of failing.

Besides `ledger`, its daily rollups `ledger_daily` (rows older than the retention, folded per
UTC day, key and model; see retention.py) and `api_keys` the schema holds `meta (k, v)`: integer versions bumped in the
same transaction as the change they announce (`keys_version` on key create/update/delete,
`balance_version` when the ledger charges managed keys), so other processes notice a change
with one tiny query.
"""
from __future__ import annotations

import asyncio
import functools
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from proxy.store.files import private_db

T = TypeVar("T")

DB_FILENAME = "modelway.db"

LEDGER_COLUMNS: tuple[str, ...] = (
    "created_at", "request_id", "key_id", "key_label", "model", "preset", "provider",
    "upstream_model", "endpoint", "status", "error_type", "stream", "cache_hit",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost", "latency_ms", "ttft_ms", "partial", "attempts",
)
NONE_TEXT, NONE_NUMBER = "", -1   # a missing value in a ledger row, stored as NULL (see ledger.py)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
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
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    latency_ms REAL,
    ttft_ms REAL,
    partial INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ledger_key_time ON ledger (key_id, created_at);
CREATE INDEX IF NOT EXISTS ledger_time ON ledger (created_at);

CREATE TABLE IF NOT EXISTS ledger_daily (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    key_label TEXT,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    cache_hits INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, model)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    label TEXT,
    sha256 TEXT NOT NULL UNIQUE,
    prefix TEXT,
    allowed_models TEXT,
    minute_limit INTEGER,
    daily_limit REAL,
    balance REAL,
    max_concurrent INTEGER,
    expires_at REAL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_used_at REAL
);

CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (k, v) VALUES ('keys_version', 0), ('balance_version', 0);
"""


def db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_FILENAME


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the database with the gateway's settings and create the schema if missing.

    The connection is in autocommit mode; write through `transaction()`. It may be handed to
    another thread (check_same_thread=False) but must only be used by one at a time.
    """
    private_db(path)   # 0600, and so its -wal and -shm files
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front (no read-to-write upgrade that
    could fail with SQLITE_BUSY under WAL), roll back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def grouped(keys: list, values: Iterable) -> dict[Any, list]:
    """{key: [the values with that key, in order]}, keys in first-seen order. A batch whose keys
    are all equal (the usual one) is grouped without a Python loop."""
    if len(set(keys)) == 1:
        return {keys[0]: list(values)}
    out: dict[Any, list] = {}
    for key, value in zip(keys, values):
        group = out.get(key)
        if group is None:
            out[key] = [value]
        else:
            group.append(value)
    return out


STATEMENT_SIZES = (32, 16, 8, 4, 2, 1)   # rows per INSERT: each size is one statement text


def insert_rows(conn: sqlite3.Connection, insert: str, row: Callable[[int], str], rows: list[tuple], *,
                shared: tuple = (), suffix: str = "") -> None:
    """`insert` + the rows' texts + `suffix`: multi-row INSERTs of 32 rows, then 16, 8, 4, 2
    and 1 for the rest, so a batch of any size takes few statements, always the same texts
    (SQLite compiles each once per connection). `row(i)` is the text of the statement's i-th
    row with numbered parameters: ?1..?n for the n `shared` values, which are bound once per
    statement and which every row may use, then the row's own values in order (row i's first
    is ?(n + 1 + i * its width)). Binding a value costs about as much as SQLite's whole
    work on it: values the rows have in common go in `shared`."""
    done, left = 0, len(rows)
    for size in STATEMENT_SIZES:
        if left >= size:
            statement = _statement(insert, row, suffix, size)
            while left >= size:
                conn.execute(statement, [*shared, *chain.from_iterable(rows[done:done + size])])
                done += size
                left -= size


@functools.lru_cache(maxsize=32)
def _statement(insert: str, row: Callable[[int], str], suffix: str, size: int) -> str:
    """The INSERT text for `size` rows, built once (the same string object each time: its
    hash, which pysqlite's statement cache looks up, is computed once)."""
    return insert + ", ".join(map(row, range(size))) + suffix


def bump_version(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("UPDATE meta SET v = v + 1 WHERE k = ?", (name,))


def read_versions(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT k, v FROM meta").fetchall())


def fetch_dicts(conn: sqlite3.Connection, sql: str, params: tuple | list = ()) -> list[dict]:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _nothing(conn: sqlite3.Connection) -> None:
    return None


class Database:
    """One connection to `data_dir/modelway.db`, used only from one dedicated thread.

    Constructing it does no I/O; the connection (and schema) is opened by the first query, in
    the worker thread. Share one instance between the ledger and the key store of a process.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.path = db_path(data_dir)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelway-db")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _invoke(self, fn: Callable[..., T], args: tuple) -> T:
        if self._conn is None:
            self._conn = connect(self.path)
        return fn(self._conn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in the database thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._invoke, fn, args)

    async def open(self) -> None:
        """Open the connection and create the schema now, so that startup fails early."""
        await self.run(_nothing)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in the database thread and wait (CLI and tests only)."""
        return self._executor.submit(self._invoke, fn, args).result()

    def close(self) -> None:
        """Close the connection after queued work finishes. Idempotent."""
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """`close()` from async code (waits for queued queries in another thread)."""
        await asyncio.to_thread(self.close)


async def stop_task(task: "asyncio.Task | None") -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
