"""Per-target cooldowns (outlier ejection, as Envoy's consecutive-errors detection and LiteLLM's
cooldowns): a target that failed `cooldown_after` requests in a row is skipped for
`cooldown_seconds`, then probed; an upstream 429 skips it for its Retry-After only.

A target is keyed by (provider, upstream model), so each model behind a wildcard route cools
down on its own; a name over NAME_MAX characters (a client's, on a wildcard route) by a digest
of it, so the targets kept cost the same whatever names clients send. The outcome of a
*request* counts, not each attempt: the dispatcher reports one failure or success per request
and target, after its retries. Whether a cooling target is still tried (a route's last one) is
the dispatcher's decision, not this store's.

`Health` is the interface; `LocalHealth` keeps the state in this process (kept across reloads
on the gateway's State). Reads are on every request's path, so they are synchronous: the shared
implementation (proxy/state/cooldowns.py) keeps a LocalHealth as its copy, fed by change
events, and publishes its writes in the background.
"""
from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod


class Health(ABC):
    async def start(self) -> None:
        """Open what the implementation needs (nothing for the embedded one)."""

    async def close(self) -> None:
        """Release it."""

    @abstractmethod
    def remaining(self, target) -> float:
        """Seconds until the target may be used again; 0.0 when it is not cooling down."""

    @abstractmethod
    def failure(self, target, after: int, seconds: float) -> bool:
        """Count one failed request; True when the target starts (or restarts) cooling down."""

    @abstractmethod
    def rate_limited(self, target, seconds: float) -> bool:
        """The upstream asked for a pause (429 + Retry-After); True when the target starts cooling."""

    @abstractmethod
    def success(self, target) -> bool:
        """An answered request: forget its failures; True when the target had been cooling down."""

    @abstractmethod
    def snapshot(self) -> dict[tuple, float]:
        """Seconds of cooldown left per (provider, model), for operators."""


MAX_TARGETS = 10_000    # targets a process keeps failure counts or cooldowns for
NAME_MAX = 256          # characters of an upstream model name kept as they are in a target's key


def _key(target: tuple) -> tuple:
    """A target with a model name over NAME_MAX characters, as this store keys it: the name's
    start and a 128-bit digest of all of it (10,000 names of 100 KB would be 1 GB)."""
    provider, name = target
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return provider, f"{name[:64]}...({len(name)} characters, blake2b {digest})"


class LocalHealth(Health):
    """One process's view: consecutive failures, cooldown deadlines (time.monotonic()) and the
    targets ejected for failures that have not answered since (their next failure re-cools them
    at once: a failed probe)."""

    @classmethod
    def build(cls, ctx) -> "LocalHealth":
        return cls()

    def __init__(self, max_targets: int = MAX_TARGETS) -> None:
        self._failures: dict[tuple, int] = {}
        self._until: dict[tuple, float] = {}
        self._ejected: set[tuple] = set()
        self.max_targets = max_targets

    def _make_room(self) -> None:
        """Bound the memory a wildcard route's client-chosen model names can take: forget
        ended cooldowns, then the oldest failure counts, then the oldest cooldowns."""
        if len(self._failures) + len(self._until) < self.max_targets:
            return
        now = time.monotonic()
        for target in [t for t, u in self._until.items() if u <= now]:
            del self._until[target]
        for table in (self._failures, self._until):
            while table and len(self._failures) + len(self._until) >= self.max_targets:
                target = next(iter(table))
                del table[target]
                self._ejected.discard(target)

    def remaining(self, target) -> float:
        if len(target[1]) > NAME_MAX:
            target = _key(target)
        until = self._until.get(target)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        return left if left > 0.0 else 0.0

    def failure(self, target, after: int, seconds: float) -> bool:
        if len(target[1]) > NAME_MAX:
            target = _key(target)
        n = after if target in self._ejected else self._failures.get(target, 0) + 1
        if n < after:
            if target not in self._failures:
                self._make_room()
            self._failures[target] = n
            return False
        self._failures.pop(target, None)
        self._ejected.add(target)
        return self._cool(target, seconds)

    def rate_limited(self, target, seconds: float) -> bool:
        return self._cool(_key(target) if len(target[1]) > NAME_MAX else target, seconds)

    def _cool(self, target, seconds: float) -> bool:
        if seconds <= 0.0:                      # cooldown_seconds: 0 turns cooldowns off
            return False
        started = not self.remaining(target)
        until = time.monotonic() + seconds
        if target not in self._until:
            self._make_room()
        if until > self._until.get(target, 0.0):
            self._until[target] = until
        return started

    def success(self, target) -> bool:
        if len(target[1]) > NAME_MAX:
            target = _key(target)
        if target not in self._failures and target not in self._until:
            return False                        # the usual case: nothing to forget
        self._failures.pop(target, None)
        self._ejected.discard(target)
        return self._until.pop(target, None) is not None

    def hold(self, target, seconds: float) -> None:
        """Apply a cooldown decided elsewhere (another node): skip the target for `seconds`."""
        self._cool(target, seconds)

    def snapshot(self) -> dict[tuple, float]:
        now = time.monotonic()
        return {k: round(u - now, 1) for k, u in self._until.items() if u > now}
