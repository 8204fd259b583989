"""Managed keys in PostgreSQL (the `ManagedKeys` interface of proxy/store/base.py): the
database is the source of truth, every node keeps a copy in memory that auth reads.

Changes reach every node through LISTEN/NOTIFY: a trigger on `api_keys` (schema version 2)
notifies channel `modelway_keys` with the changed key's sha256 when a transaction that
created, changed, charged or deleted it commits. Each node holds one connection of its own
that listens; a notification marks that hash dirty and the sync task re-reads the dirty keys
in one query (a key gone is dropped from the copy, and from the negative cache). A revocation
on any node therefore takes effect everywhere within a round trip or two. A full reload runs
when the listener (re)connects (what changed while it was not listening) and every
FULL_REFRESH_SECONDS as a safety net.

A key the copy does not know is read from the database before it is refused (`fetch`, one
indexed query; concurrent fetches of one key share it); an unknown one is remembered in the
negative cache (proxy.store.keys.MissingKeys), unless a notification about that hash came
while the query ran. While PostgreSQL is down, auth uses the copy as it was; an unknown key is
refused with 503 (the caller's), never let in unchecked; listing or changing keys answers 503
`state_unavailable`.
"""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import asyncpg
import structlog

from proxy.errors import StateUnavailable
from proxy.state.engines import CONNECT_SECONDS, EngineDown, PostgresEngine
from proxy.store.base import ManagedKeys
from proxy.store.db import stop_task
from proxy.store.keys import (SECRET_PREFIX, UPDATABLE, MissingKeys, _decode, _encode, _PUBLIC, hash_secret,
                              mask_secret, usd)
from proxy.store.usage import utc_day_start

log = structlog.get_logger(__name__)

CHANNEL = "modelway_keys"
FULL_REFRESH_SECONDS = 30.0     # a full reload of the copy, besides the notifications
LISTEN_CHECK_SECONDS = 10.0     # the listening connection is checked this often (a silent peer)
RETRY_SECONDS = 1.0             # after a failed reload or a lost listener


def _records(rows) -> dict[str, dict]:
    out = {}
    for row in rows:
        record = dict(row)
        out[record.pop("sha256")] = _decode(record)
    return out


async def _load(conn) -> dict[str, dict]:
    return _records(await conn.fetch(f"SELECT sha256, {_PUBLIC} FROM api_keys"))


async def _find(conn, digests: list[str]) -> dict[str, dict]:
    return _records(await conn.fetch(f"SELECT sha256, {_PUBLIC} FROM api_keys WHERE sha256 = ANY($1::text[])",
                                     digests))


async def _select(conn, where: str = "", *params) -> list[dict]:
    """Masked records (oldest first) with `usage_today` and their USD amounts rounded."""
    rows = [_decode(dict(r)) for r in await conn.fetch(
        f"SELECT {_PUBLIC} FROM api_keys{where} ORDER BY created_at, id", *params)]
    if rows:
        spent = dict(await conn.fetch(
            "SELECT key_id, sum(cost) FROM ledger WHERE created_at >= $1 AND key_id = ANY($2::text[]) "
            "GROUP BY key_id", utc_day_start(), [r["id"] for r in rows]))
        for r in rows:
            r["usage_today"] = usd(spent.get(r["id"]) or 0.0)
            r["balance"], r["daily_limit"] = usd(r["balance"]), usd(r["daily_limit"])
    return rows


async def _get(conn, key_id: str) -> dict | None:
    rows = await _select(conn, " WHERE id = $1", key_id)
    return rows[0] if rows else None


def _pg(field: str, value: Any) -> Any:
    return bool(value) if field == "disabled" else _encode(field, value)


async def _create(conn, fields: dict) -> tuple[dict, str, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    now = time.time()
    values = {name: _pg(name, fields.get(name)) for name in UPDATABLE}
    values.update(id=key_id, sha256=hash_secret(secret), prefix=mask_secret(secret), created_at=now, updated_at=now)
    names = list(values)
    await conn.execute(f"INSERT INTO api_keys ({', '.join(names)}) "
                       f"VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})", *values.values())
    return await _get(conn, key_id), secret, values["sha256"]


async def _update(conn, key_id: str, fields: dict) -> tuple[dict | None, str | None]:
    sets = [f"{name} = ${i + 1}" for i, name in enumerate(fields)]
    n = len(fields)
    digest = await conn.fetchval(
        f"UPDATE api_keys SET {', '.join(sets + [f'updated_at = ${n + 1}'])} WHERE id = ${n + 2} RETURNING sha256",
        *(_pg(k, v) for k, v in fields.items()), time.time(), key_id)
    return (await _get(conn, key_id) if digest else None), digest


async def _revoke(conn, key_id: str) -> str | None:
    return await conn.fetchval("DELETE FROM api_keys WHERE id = $1 RETURNING sha256", key_id)


class PostgresKeyStore(ManagedKeys):
    def __init__(self, engine: PostgresEngine, *, full_refresh: float = FULL_REFRESH_SECONDS) -> None:
        self.engine = engine
        self.full_refresh = full_refresh
        self.listening = asyncio.Event()     # set while the change listener is connected
        self._by_hash: dict[str, dict] = {}
        self._missing = MissingKeys()
        self._fetching: dict[str, asyncio.Future] = {}
        self._reading: dict[str, int] = {}   # hash -> reads of it in flight
        self._raced: set[str] = set()        # hashes notified while a read of them was in flight
        self._dirty: set[str] = set()        # hashes notified, not re-read yet
        self._full = True                    # a full reload is due
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @classmethod
    def build(cls, ctx) -> "PostgresKeyStore":
        return cls(ctx.engines.database)

    # --- auth path -----------------------------------------------------------------------
    def lookup(self, sha256_hex: str) -> dict | None:
        return self._by_hash.get(sha256_hex)

    def known_missing(self, sha256_hex: str) -> bool:
        return sha256_hex in self._missing

    async def fetch(self, sha256_hex: str) -> dict | None:
        pending = self._fetching.get(sha256_hex)
        if pending is None:
            pending = self._fetching[sha256_hex] = asyncio.ensure_future(self._fetch(sha256_hex))
            pending.add_done_callback(lambda _: self._fetching.pop(sha256_hex, None))
        return await asyncio.shield(pending)

    async def _fetch(self, sha256_hex: str) -> dict | None:
        found, stale = await self._read([sha256_hex])
        record = found.get(sha256_hex)
        if not stale:                  # else the sync task re-reads it
            if record is not None:
                self._by_hash[sha256_hex] = record
            else:
                self._missing.add(sha256_hex)
        return record

    async def _read(self, digests: list[str]) -> tuple[dict[str, dict], set[str]]:
        """The records of these keys, and those whose answer may be older than a notification
        that came while the query ran (not to be kept: the sync task reads them again)."""
        for digest in digests:
            self._reading[digest] = self._reading.get(digest, 0) + 1
        try:
            found = await self.engine.call(_find, digests)
        finally:
            stale = {digest for digest in digests if digest in self._raced}
            for digest in digests:
                left = self._reading.pop(digest) - 1
                if left:
                    self._reading[digest] = left
                else:
                    self._raced.discard(digest)
        return found, stale

    # --- changes ---------------------------------------------------------------------------
    async def _call(self, fn, *args):
        try:
            return await self.engine.call(fn, *args)
        except EngineDown as exc:
            raise StateUnavailable("Managed keys are unavailable: the gateway's database cannot be reached. "
                                   "Try again shortly.", code="state_unavailable") from exc

    async def acreate(self, label: str | None = None, **fields: Any) -> tuple[dict, str]:
        fields["label"] = label
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"unknown key fields: {', '.join(sorted(unknown))}")
        record, secret, digest = await self._call(_create, fields)
        await self._reread([digest])
        return record, secret

    async def alist(self) -> list[dict]:
        return await self._call(_select)

    async def aget(self, key_id: str) -> dict | None:
        return await self._call(_get, key_id)

    async def aupdate(self, key_id: str, **fields: Any) -> dict | None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}; "
                             f"updatable fields: {', '.join(sorted(UPDATABLE))}")
        record, digest = await self._call(_update, key_id, fields)
        if digest:
            await self._reread([digest])
        return record

    async def arevoke(self, key_id: str) -> bool:
        digest = await self._call(_revoke, key_id)
        if digest:
            self._by_hash.pop(digest, None)
        return digest is not None

    # --- the copy --------------------------------------------------------------------------
    def _notified(self, conn, pid, channel, payload: str) -> None:
        self._missing.discard(payload)
        if payload in self._reading:
            self._raced.add(payload)
        self._dirty.add(payload)
        self._wake.set()

    async def _reread(self, digests: list[str]) -> None:
        """Re-read these keys into the copy: a key gone is dropped."""
        found, stale = await self._read(digests)
        for digest in digests:
            if digest in stale:
                continue
            record = found.get(digest)
            if record is None:
                self._by_hash.pop(digest, None)
            else:
                self._by_hash[digest] = record
                self._missing.discard(digest)

    async def reload(self) -> None:
        """Replace the copy with the database's keys (raises EngineDown when it is down)."""
        self._full = False
        self._dirty.clear()
        try:
            self._by_hash = await self.engine.call(_load)
        except BaseException:
            self._full = True
            raise
        self._missing.clear()

    async def _sync_once(self) -> None:
        if self._full:
            await self.reload()
        elif self._dirty:
            digests, self._dirty = list(self._dirty), set()
            try:
                await self._reread(digests)
            except BaseException:
                self._dirty.update(digests)
                raise

    async def _sync(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.full_refresh)
            except TimeoutError:
                self._full = True
            self._wake.clear()
            try:
                await self._sync_once()
            except Exception as exc:     # keep the copy, retry
                if not isinstance(exc, EngineDown):    # the engine logs its own outage, once
                    log.warning("keys_sync_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()

    async def _listen(self) -> None:
        """Hold a connection listening on CHANNEL; reconnect when it is lost."""
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.engine.url, timeout=CONNECT_SECONDS)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self._full = True            # whatever changed while nobody listened
                self._wake.set()
                self.listening.set()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_SECONDS)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), CONNECT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:     # refused, reset, timed out: listen again shortly
                log.debug("keys_listener_lost", error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(RETRY_SECONDS)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the copy (if the database answers) and start listening and syncing."""
        with contextlib.suppress(EngineDown):
            await self.reload()
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(), name="keys-listen"),
                           asyncio.create_task(self._sync(), name="keys-sync")]

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
