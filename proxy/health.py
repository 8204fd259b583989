"""Per-target cooldowns: a target that keeps failing is skipped for a while, then probed.
A target is keyed by (provider, upstream model), so each model behind a wildcard route
cools down on its own."""
from __future__ import annotations

import time

FAILURES_BEFORE_COOLDOWN = 3


class Health:
    def __init__(self) -> None:
        self._failures: dict[tuple, int] = {}
        self._until: dict[tuple, float] = {}

    def cooling(self, target) -> bool:
        until = self._until.get(target)
        return until is not None and time.monotonic() < until

    def remaining(self, target) -> float:
        until = self._until.get(target)
        return max(0.0, until - time.monotonic()) if until else 0.0

    def failure(self, target, cooldown: float) -> bool:
        """Count a failure; True when the target starts cooling down."""
        key = target
        if key in self._until:          # it has cooled down before and not answered since:
            self._until[key] = time.monotonic() + cooldown     # the failed probe decides
            return True
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n >= FAILURES_BEFORE_COOLDOWN:
            self._until[key] = time.monotonic() + cooldown
            self._failures[key] = 0
            return True
        return False

    def success(self, target) -> bool:
        """Forget failures; True when the target had been cooling down."""
        if target in self._failures or target in self._until:
            self._failures.pop(target, None)
            return self._until.pop(target, None) is not None
        return False

    def snapshot(self) -> dict[tuple, float]:
        """Seconds of cooldown left per (provider, model), for `modelway routes` and /metrics."""
        now = time.monotonic()
        return {k: round(u - now, 1) for k, u in self._until.items() if u > now}
