"""Managed API keys: created over HTTP or by `modelway keys create`, stored hashed in SQLite.

The secret (`mw-` + 43 url-safe characters) is shown once by `create()` and stored only as its
sha256 hex digest plus a masked hint (`mw-abc...wxyz`) in `prefix`. Every record dict handed out
is masked: it never holds the secret or the hash.

Auth looks keys up in memory (`lookup(sha256_hex)`, a dict read). `start()` loads that dict and
polls `meta` every 0.5 s in the database thread; when another process created, changed or
deleted a key (`keys_version`) or the ledger charged a balance (`balance_version`), the dict is
rebuilt. A revoked or changed key therefore takes effect on every worker within ~0.5 s; a
balance within ~0.75 s (ledger flush + poll).

A key this process does not know yet (created a moment ago by another worker) is looked up in
the store before it is refused: `fetch(sha256_hex)` (async, one indexed query; concurrent
fetches of one key share the query). A key found is remembered only if the store's versions
were this process's when it was read, so a revocation that raced with the lookup cannot
linger; the next rebuild replaces it anyway. A key not found is remembered as missing for
MISSING_TTL seconds (at most MISSING_MAX keys, the oldest forgotten first) and the memory is
cleared whenever `keys_version` moves, so junk keys cost one query per 10 s each and a new
key is never refused for having been tried before.

Sync methods (`create`, `list`, `get`, `update`, `revoke`) block: they are for the CLI. HTTP
handlers use the `a`-prefixed async twins, which also refresh this process's dict at once.
Callers check what a user gives with `check_fields` first: the one set of rules for a key's
fields, shared by the HTTP API and the CLI. The store itself only refuses unknown field names.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import sqlite3
import time
from typing import Any

import orjson
import structlog

from proxy.errors import InvalidRequest
from proxy.store.base import ManagedKeys
from proxy.store.db import Database, bump_version, fetch_dicts, read_versions, stop_task, transaction
from proxy.store.usage import utc_day_start

log = structlog.get_logger(__name__)

SECRET_PREFIX = "mw-"
MONEY_DIGITS = 10           # USD amounts are shown rounded like a request's cost (1e-10 USD)
LABEL_MAX = 256
_INT_MAX = 2**31 - 1
_USD_MAX = 1e12
_EXPIRES_MAX = 253402300800.0   # 10000-01-01T00:00:00Z
MISSING_TTL = 10.0          # seconds an unknown key is refused without asking the store again
MISSING_MAX = 10_000        # unknown keys remembered at most
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _label(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip()) and len(v) <= LABEL_MAX and not _CONTROL.search(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _INT_MAX


def _number(v: Any, low: float, high: float) -> bool:
    """A JSON number (not a bool, not NaN) with low <= v <= high."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high


# field -> (what it must be, check); None clears a field except `label` and `disabled`
RULES = {
    "label": (f"a non-empty string of at most {LABEL_MAX} characters without control characters",
              _label),
    "allowed_models": ("a list of model names or globs, or null for all models",
                       lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v)),
    "minute_limit": (f"an integer from 1 to {_INT_MAX} (requests per minute), or null for no limit", _int),
    "daily_limit": ("a number from 0 to 1e12 (USD per UTC day), or null for no limit",
                    lambda v: _number(v, 0, _USD_MAX)),
    "balance": ("a number from 0 to 1e12 (USD), or null for no balance", lambda v: _number(v, 0, _USD_MAX)),
    "max_concurrent": (f"an integer from 1 to {_INT_MAX}, or null for no limit", _int),
    "expires_at": (("unix seconds after 1970 and before the year 10000, an ISO date or a span like 30d, "
                    "or null for never"), lambda v: _number(v, 1, _EXPIRES_MAX - 1)),
    "disabled": ("true or false", lambda v: isinstance(v, bool)),
}
UPDATABLE = frozenset(RULES)
_FLOATS = ("daily_limit", "balance", "expires_at")
_PUBLIC = ("id, label, prefix, allowed_models, minute_limit, daily_limit, balance, "
           "max_concurrent, expires_at, disabled, created_at, updated_at, last_used_at")


def hash_secret(secret: str) -> str:
    """sha256 hex of a key secret: what `routes.yaml` and the database store."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mask_secret(secret: str) -> str:
    return f"{secret[:6]}...{secret[-4:]}"


def usd(value: float | None) -> float | None:
    """A USD amount rounded to MONEY_DIGITS: sums of costs without float noise."""
    return round(value, MONEY_DIGITS) if value is not None else None


def check_fields(fields: dict, *, partial: bool) -> dict:
    """A key's fields as a user gives them (HTTP body or CLI options; expires_at already unix
    seconds), checked by RULES: those of a new key (`label` required) or, with partial, of a
    change. Returns them with USD amounts and expires_at as floats. Raises InvalidRequest
    naming the field and what it must be."""
    if not partial and fields.get("label") is None:
        raise InvalidRequest("Missing required parameter: 'label'.", param="label")
    out = {}
    for name, value in fields.items():
        rule = RULES.get(name)
        if rule is None:
            raise InvalidRequest(f"Unknown key field '{name}'; known: {', '.join(RULES)}.", param=name)
        if value is None and name not in ("label", "disabled"):
            out[name] = None
        elif not rule[1](value):
            raise InvalidRequest(f"'{name}' must be {rule[0]}.", param=name)
        else:
            out[name] = float(value) if name in _FLOATS else value
    return out


def _decode(row: dict) -> dict:
    allowed = row["allowed_models"]
    row["allowed_models"] = orjson.loads(allowed) if allowed is not None else None
    row["disabled"] = bool(row["disabled"])
    return row


def _encode(field: str, value: Any) -> Any:
    if field == "allowed_models":
        return orjson.dumps(list(value)).decode() if value is not None else None
    if field == "disabled":
        return int(bool(value))
    return value


def _select(conn: sqlite3.Connection, where: str = "", params: tuple = ()) -> list[dict]:
    return [_decode(r) for r in fetch_dicts(
        conn, f"SELECT {_PUBLIC} FROM api_keys{where} ORDER BY created_at, id", params)]


def _with_usage(conn: sqlite3.Connection, rows: list[dict]) -> list[dict]:
    """Fill `usage_today` (USD in the ledger since 00:00 UTC) on masked records, and round
    their USD amounts (`balance` is decremented by each cost)."""
    if rows:
        spent = dict(conn.execute(
            "SELECT key_id, sum(cost) FROM ledger WHERE created_at >= ? GROUP BY key_id",
            (utc_day_start(),)).fetchall())
        for r in rows:
            r["usage_today"] = usd(spent.get(r["id"]) or 0.0)
            r["balance"], r["daily_limit"] = usd(r["balance"]), usd(r["daily_limit"])
    return rows


def _list(conn: sqlite3.Connection) -> list[dict]:
    return _with_usage(conn, _select(conn))


def _get(conn: sqlite3.Connection, key_id: str) -> dict | None:
    rows = _select(conn, " WHERE id = ?", (key_id,))
    return _with_usage(conn, rows)[0] if rows else None


def _create(conn: sqlite3.Connection, fields: dict) -> tuple[dict, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    now = time.time()
    values = {name: _encode(name, fields.get(name)) for name in UPDATABLE}
    values.update(id=key_id, sha256=hash_secret(secret), prefix=mask_secret(secret),
                  created_at=now, updated_at=now)
    names = list(values)
    with transaction(conn):
        conn.execute(f"INSERT INTO api_keys ({', '.join(names)}) "
                     f"VALUES ({', '.join('?' * len(names))})", [values[n] for n in names])
        bump_version(conn, "keys_version")
    return _get(conn, key_id), secret


def _update(conn: sqlite3.Connection, key_id: str, fields: dict) -> dict | None:
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}; "
                         f"updatable fields: {', '.join(sorted(UPDATABLE))}")
    sets = [f"{name} = ?" for name in fields] + ["updated_at = ?"]
    params = [_encode(n, v) for n, v in fields.items()] + [time.time(), key_id]
    with transaction(conn):
        cur = conn.execute(f"UPDATE api_keys SET {', '.join(sets)} WHERE id = ?", params)
        if cur.rowcount:
            bump_version(conn, "keys_version")
    return _get(conn, key_id) if cur.rowcount else None


def _revoke(conn: sqlite3.Connection, key_id: str) -> bool:
    with transaction(conn):
        cur = conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
        if cur.rowcount:
            bump_version(conn, "keys_version")
    return bool(cur.rowcount)


def _load(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, dict]]:
    """Versions and {sha256: masked record} read in one snapshot."""
    conn.execute("BEGIN")
    try:
        versions = read_versions(conn)
        rows = fetch_dicts(conn, f"SELECT sha256, {_PUBLIC} FROM api_keys")
    finally:
        conn.execute("COMMIT")
    return versions, {r.pop("sha256"): _decode(r) for r in rows}


def _find(conn: sqlite3.Connection, sha256_hex: str) -> tuple[dict[str, int], dict | None]:
    """Versions and the masked record of one key (None if there is none), in one snapshot."""
    conn.execute("BEGIN")
    try:
        versions = read_versions(conn)
        rows = fetch_dicts(conn, f"SELECT {_PUBLIC} FROM api_keys WHERE sha256 = ?", (sha256_hex,))
    finally:
        conn.execute("COMMIT")
    return versions, (_decode(rows[0]) if rows else None)


class MissingKeys:
    """The negative cache: hashes the store said lately it does not know, each for MISSING_TTL
    seconds, at most MISSING_MAX (the oldest forgotten first)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}      # sha256 -> monotonic time until which it is unknown

    def __contains__(self, sha256_hex: str) -> bool:
        until = self._until.get(sha256_hex)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._until[sha256_hex]
        return False

    def add(self, sha256_hex: str) -> None:
        if len(self._until) >= MISSING_MAX:
            del self._until[next(iter(self._until))]
        self._until[sha256_hex] = time.monotonic() + MISSING_TTL

    def discard(self, sha256_hex: str) -> None:
        self._until.pop(sha256_hex, None)

    def clear(self) -> None:
        self._until.clear()


class KeyStore(ManagedKeys):
    """Managed keys in `api_keys`, with an in-memory index by sha256 for auth."""

    @classmethod
    def build(cls, ctx) -> "KeyStore":
        return cls(ctx.db)

    def __init__(self, db: Database, *, poll_interval: float = 0.5) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self._by_hash: dict[str, dict] = {}
        self._versions: dict[str, int] = {}
        self._missing = MissingKeys()
        self._fetching: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    # --- auth path -----------------------------------------------------------------------
    def lookup(self, sha256_hex: str) -> dict | None:
        """The masked record of the key with this hash, or None. Reads memory only; the caller
        checks `disabled` and `expires_at`. Do not mutate the returned dict."""
        return self._by_hash.get(sha256_hex)

    def known_missing(self, sha256_hex: str) -> bool:
        """True if the store said lately (MISSING_TTL) that there is no such key."""
        return sha256_hex in self._missing

    async def fetch(self, sha256_hex: str) -> dict | None:
        """The masked record of a key `lookup` did not know, read from the store (None: no such
        key, remembered as missing). Cancelling the caller does not cancel the shared query."""
        pending = self._fetching.get(sha256_hex)
        if pending is None:
            pending = self._fetching[sha256_hex] = asyncio.ensure_future(self._fetch(sha256_hex))
            pending.add_done_callback(lambda _: self._fetching.pop(sha256_hex, None))
        return await asyncio.shield(pending)

    async def _fetch(self, sha256_hex: str) -> dict | None:
        versions, record = await self.db.run(_find, sha256_hex)
        if record is not None:
            if versions == self._versions:     # else a rebuild is due: it will bring the key
                self._by_hash[sha256_hex] = record
        elif versions.get("keys_version") == self._versions.get("keys_version"):
            self._missing.add(sha256_hex)
        return record

    # --- sync, for the CLI ---------------------------------------------------------------
    def create(self, label: str | None = None, allowed_models: list[str] | None = None,
               minute_limit: int | None = None, daily_limit: float | None = None,
               balance: float | None = None, max_concurrent: int | None = None,
               expires_at: float | None = None) -> tuple[dict, str]:
        """Create a key; returns (masked record, full secret). The secret is not stored."""
        return self.db.call(_create, dict(
            label=label, allowed_models=allowed_models, minute_limit=minute_limit,
            daily_limit=daily_limit, balance=balance, max_concurrent=max_concurrent,
            expires_at=expires_at))

    def list(self) -> list[dict]:
        """Masked records, oldest first, each with `usage_today`."""
        return self.db.call(_list)

    def get(self, key_id: str) -> dict | None:
        return self.db.call(_get, key_id)

    def update(self, key_id: str, **fields: Any) -> dict | None:
        """Change fields in UPDATABLE; returns the new masked record, None if no such key.
        Raises ValueError for unknown fields."""
        return self.db.call(_update, key_id, fields)

    def revoke(self, key_id: str) -> bool:
        """Delete the key; False if it did not exist."""
        return self.db.call(_revoke, key_id)

    def load(self) -> None:
        """Fill the in-memory index now (blocking)."""
        self._replace(*self.db.call(_load))

    def _replace(self, versions: dict[str, int], by_hash: dict[str, dict]) -> None:
        if versions.get("keys_version") != self._versions.get("keys_version"):
            self._missing.clear()
        self._versions, self._by_hash = versions, by_hash

    # --- async, for HTTP handlers --------------------------------------------------------
    async def acreate(self, label: str | None = None, **fields: Any) -> tuple[dict, str]:
        fields["label"] = label
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"unknown key fields: {', '.join(sorted(unknown))}")
        result = await self.db.run(_create, fields)
        await self.reload()
        return result

    async def alist(self) -> list[dict]:
        return await self.db.run(_list)

    async def aget(self, key_id: str) -> dict | None:
        return await self.db.run(_get, key_id)

    async def aupdate(self, key_id: str, **fields: Any) -> dict | None:
        result = await self.db.run(_update, key_id, fields)
        await self.reload()
        return result

    async def arevoke(self, key_id: str) -> bool:
        result = await self.db.run(_revoke, key_id)
        await self.reload()
        return result

    async def reload(self) -> None:
        self._replace(*await self.db.run(_load))

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the index and start polling for changes made by other processes."""
        await self.reload()
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="keys-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if await self.db.run(read_versions) != self._versions:
                    await self.reload()
            except Exception:
                log.exception("keys_reload_failed")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
