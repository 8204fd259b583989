"""The interface the ratelimit middleware counts a key's limits through (the algorithms are
proxy.store.limits): the embedded storage (proxy.store.counters, an mmap'd file per machine)
and the shared one (proxy.state.limits, Redis) implement it; the middleware does not know which
is behind it.

`acquire` answers at once (a tuple) or, when the storage needs a round trip, with an awaitable
of the same tuple; the caller awaits it only then (the embedded path stays a plain call). What
an admitted request holds comes back as an opaque `hold`, handed to `release` when it is over.
"""
from __future__ import annotations

from typing import Awaitable, Callable

# (refusal code or None, requests left this minute, µs until the minute limit is free or one
# more fits, hold: what the admitted request holds, for `release`; None if nothing)
Verdict = tuple


class LimitStore:
    def acquire(self, key_id: str, now: float, minute_limit: int | None, max_concurrent: int | None,
                reserve: int = 0, daily: int | None = None, stamp: int = 0,
                balance: int = 0) -> "Verdict | Awaitable[Verdict]":
        """limits.admit on the key's record. Raises CountersFull (proxy.store.counters) when a
        limited key cannot be counted at all."""
        raise NotImplementedError

    def release(self, key_id: str, now: float, hold, cost: int) -> None:
        """The request admitted at `now` with `hold` is over at `cost` micro-USD (limits.settle);
        may finish in the background."""
        raise NotImplementedError

    def defer_spend(self, key_id: str, usd: float, now: float) -> None:
        """Spend of a key with no money limit, counted by the next `flush_spend()`."""
        raise NotImplementedError

    def flush_spend(self) -> "Awaitable[None] | None":
        raise NotImplementedError

    def seed_static(self, key_id: str, stamp: int, left: Callable[[], int]) -> None:
        """A static key's balance: when the record's stamp is not `stamp`, seed it with
        `left()` (routes.yaml's balance minus the ledger's spend; called only then). May finish
        in the background."""
        raise NotImplementedError

    def reserved(self, key_id: str) -> int:
        """Micro-USD reserved by the key's requests in flight (as last seen: a Retry-After hint)."""
        raise NotImplementedError
