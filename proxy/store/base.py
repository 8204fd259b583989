"""The interfaces of the managed-key store and the ledger: what auth, accounting, the account
API and the gateway use, whichever implementation is behind (proxy/state/stores.py picks one).

    interface     embedded (one VM, SQLite in data_dir)   shared (PostgreSQL)
    ManagedKeys   proxy.store.keys.KeyStore                proxy.state.pg_keys.PostgresKeyStore
    Ledger        proxy.store.ledger.LedgerWriter          proxy.state.pg_ledger.PostgresLedger

Records handed out are masked dicts (see proxy/store/keys.py): never the secret or its hash.
"""
from __future__ import annotations

from typing import Any


class ManagedKeys:
    """Managed API keys. Auth reads `lookup` (memory only) on every request; a key it does not
    know is refused at once if `known_missing`, else read from the store by `fetch`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def lookup(self, sha256_hex: str) -> dict | None:
        """The masked record of the key with this hash from this process's copy, or None."""
        raise NotImplementedError

    def known_missing(self, sha256_hex: str) -> bool:
        """True if the store said lately that there is no such key (the negative cache)."""
        raise NotImplementedError

    async def fetch(self, sha256_hex: str) -> dict | None:
        """A key `lookup` did not know, read from the store; None: no such key. Raises when the
        store cannot answer (auth then refuses with 503: never an unchecked key)."""
        raise NotImplementedError

    async def acreate(self, label: str | None = None, **fields: Any) -> tuple[dict, str]:
        """(masked record, secret shown once)."""
        raise NotImplementedError

    async def alist(self) -> list[dict]:
        """Masked records, oldest first, each with `usage_today`."""
        raise NotImplementedError

    async def aget(self, key_id: str) -> dict | None:
        raise NotImplementedError

    async def aupdate(self, key_id: str, **fields: Any) -> dict | None:
        """The new masked record; None if there is no such key."""
        raise NotImplementedError

    async def arevoke(self, key_id: str) -> bool:
        """Delete the key; False if it did not exist."""
        raise NotImplementedError


class Ledger:
    """One row per request, written in batches off the request path, and its reads.

    `pruner.retention_days` may be changed at runtime (config reload)."""

    pruner: Any

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop and write (or keep safe) every row recorded so far."""

    def record(self, values: tuple) -> None:
        """Queue one row (LEDGER_COLUMNS order). O(1); never blocks, never raises."""
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        raise NotImplementedError

    def health(self) -> dict:
        """{writable, queued, error} for /readyz."""
        raise NotImplementedError

    async def activity(self, key_id: str | None = None, limit: int = 50, offset: int = 0,
                       since: float | None = None, until: float | None = None, model: str | None = None,
                       status: str | int | None = None) -> list[dict]:
        raise NotImplementedError

    async def latency(self, key_id: str | None, since: float, limit: int = 20_000) -> dict:
        """{p50_ms, p99_ms, samples} over the newest `limit` rows since `since`."""
        raise NotImplementedError

    async def analytics(self, key_id: str | None = None, group_by: str = "day",
                        since: float | None = None, until: float | None = None) -> list[dict]:
        raise NotImplementedError

    async def balance(self, key_id: str | None = None, now: float | None = None) -> dict:
        raise NotImplementedError

    async def spend_today(self, key_id: str | None, now: float | None = None) -> float:
        raise NotImplementedError
