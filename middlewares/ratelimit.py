"""Rate limits and budgets per key, enforced before the upstream is called and exact across
every worker process of the machine — or, with `state.redis`, of every node: one atomic `admit`
(proxy.store.limits) on the key's record checks them all, and a refused request changes
nothing. The record is kept by a LimitStore (proxy.store.limitstore): the mmap'd counters of
the machine (proxy.store.counters) or Redis (proxy.state.limits, one round trip, awaited).

- `minute_limit`: requests per minute, GCRA (bursts up to the limit, then one every 60/limit s)
  on the inference endpoints (chat, messages, embeddings). Every inference response of a
  limited key carries X-RateLimit-Limit-Minute / -Remaining-Minute / -Reset-Minute (seconds
  until the whole limit is free again); a refusal's Retry-After is when one more fits (<= 60 s).
  /v1/models and /v1/account/* are neither counted nor refused.
- `daily_limit` (USD per UTC day) and `balance` (USD): a request reserves an upper bound of its
  cost (proxy.reservation) and settles at its actual cost when it is over. One that does not
  fit is refused (`daily_limit_insufficient`, `balance_insufficient`); once the money is used
  up, `daily_limit_exceeded` / `balance_exhausted`.
  The remaining balance is counted in the counters file: a managed key's is seeded from the
  key store (its `balance` when the record's `updated_at` is newer than the seed: at first use
  and after each change of the key), a static key's from routes.yaml minus its ledger spend
  (at config load, when the balance in routes.yaml changed). The ledger still charges the
  key store's balance, the durable record the next seed starts from.
- `max_concurrent`: requests in flight at once.
Over any of them: 429 rate_limit_error with Retry-After. A limited key whose record cannot be
kept (counters table full) gets 503 `limits_unavailable`, never unlimited service.
"""
from __future__ import annotations

import hashlib
import math
import time

from multidict import istr

from middlewares.auth import bearer_token
from proxy.context import INFERENCE_ENDPOINTS
from proxy.errors import RateLimited
from proxy.pipeline import Middleware
from proxy.reservation import reservation_micro
from proxy.store import limits
from proxy.store.counters import CountersFull
from proxy.store.ledger import query_balance

# header names as istr: aiohttp takes them without working out their case-insensitive form
LIMIT_MINUTE, REMAINING_MINUTE, RESET_MINUTE = map(istr, ("X-RateLimit-Limit-Minute", "X-RateLimit-Remaining-Minute",
                                                          "X-RateLimit-Reset-Minute"))
SECONDS = tuple(map(str, range(61)))   # header values of a reset or retry time (1..60 s)
UNCOUNTED = "modelway_limits_uncounted_total"
HELD = "limits_held"                   # ctx.extra: the admitted request's hold (LimitStore.release)


def seconds_to_utc_midnight(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, int(86400 - now % 86400))


def micro(usd: float) -> int:
    """A cost in micro-USD, rounded up: the counters never count less than the ledger."""
    return math.ceil(usd * 1_000_000 - 1e-6)


def micro_limit(usd: float) -> int:
    """A limit or balance in micro-USD, rounded down."""
    return math.floor(usd * 1_000_000 + 1e-6)


def static_stamp(balance: float) -> int:
    """The seed stamp of a static key's balance: negative, and new when the balance changes."""
    return -(round(balance * 1_000_000) + 2)


class RateLimit(Middleware):
    name = "ratelimit"

    def __init__(self, gateway, config):
        self.gateway = gateway
        self.counters = gateway.counters
        self.static_seeds: dict[str, tuple[int, int]] = {}   # key id -> (stamp, balance at seeding)
        self.digests: dict[str, str] = {}     # managed key id -> sha256 of its secret (key store index)
        self.limit_texts: dict[int, str] = {}   # minute_limit -> its header value
        for k in config.keys:
            if k.balance is not None:
                self._seed_static(f"static:{k.label}", k.balance)

    def _seed_static(self, key_id: str, balance: float) -> None:
        """Seed a static key's remaining balance: routes.yaml's minus its ledger spend. The
        ledger is read (blocking, at config load) only when the balance in routes.yaml changed."""
        stamp, full = static_stamp(balance), micro_limit(balance)

        def left() -> int:
            spent = self.gateway.db.call(query_balance, key_id, None).get("total_spent") or 0.0
            return full - micro(spent)
        self.counters.seed_static(key_id, stamp, left)
        self.static_seeds[key_id] = stamp, full

    def before(self, ctx):
        key = ctx.key
        if key is None or key.management or ctx.endpoint not in INFERENCE_ENDPOINTS:
            # /v1/models and /v1/account/* neither use up nor are refused by a key's limits:
            # a limited key can always check its balance and activity
            return None
        limit, concurrent, daily, balance = key.minute_limit, key.max_concurrent, key.daily_limit, key.balance
        money = daily is not None or balance is not None
        if limit is None and concurrent is None and not money:
            return None
        reserve = stamp = left = 0
        if money:
            reserve = reservation_micro(ctx)
            if balance is not None:
                stamp, left = self.static_seeds.get(key.id) or self._managed_seed(ctx, key)
        try:
            verdict = self.counters.acquire(key.id, ctx.created, limit, concurrent, reserve,
                                            None if daily is None else micro_limit(daily), stamp, left)
        except CountersFull:
            self.gateway.metrics.inc(UNCOUNTED, ())
            raise
        if type(verdict) is not tuple:      # the storage needs a round trip (shared limits)
            return self._verdict_later(ctx, key, verdict, reserve)
        self._verdict(ctx, key, verdict, reserve)
        return None

    async def _verdict_later(self, ctx, key, pending, reserve: int) -> None:
        try:
            verdict = await pending
        except CountersFull:
            self.gateway.metrics.inc(UNCOUNTED, ())
            raise
        self._verdict(ctx, key, verdict, reserve)

    def _verdict(self, ctx, key, verdict: tuple, reserve: int) -> None:
        """Headers of the minute limit; the hold to release when the request is over, or the 429."""
        code, remaining, wait, hold = verdict
        limit = key.minute_limit
        if limit is not None:
            reset = min(60, max(1, -(-wait // 1_000_000)))
            headers = ctx.response_headers
            headers[LIMIT_MINUTE] = self.limit_texts.get(limit) or self._limit_text(limit)
            headers[REMAINING_MINUTE] = str(remaining)
            headers[RESET_MINUTE] = SECONDS[reset]
        if code is None:
            if hold is not None:
                ctx.extra[HELD] = hold
            return
        raise self._refusal(code, key, wait, reserve)

    def _managed_seed(self, ctx, key) -> tuple[int, int]:
        """(stamp, balance) of a managed key from the key store's record: its `updated_at` in µs
        (newer than the record's seed: the key was changed) and its balance in micro-USD."""
        digest = self.digests.get(key.id)
        if digest is None:
            headers = ctx.request.headers
            secret = bearer_token(headers.get("Authorization")) or headers.get("x-api-key") or ""
            digest = self.digests[key.id] = hashlib.sha256(secret.encode()).hexdigest()
        record = self.gateway.keys.lookup(digest)
        if record is None:     # deleted since auth: count from the balance auth saw
            return 1, micro_limit(key.balance)
        return int(record["updated_at"] * 1_000_000), micro_limit(record["balance"] or 0.0)

    def _refusal(self, code: str, key, wait: int, reserve: int) -> RateLimited:
        if code == limits.MINUTE:
            retry = min(60, max(1, -(-wait // 1_000_000)))
            return RateLimited(f"Rate limit of {key.minute_limit} requests per minute exceeded.", code=code,
                               headers={"Retry-After": SECONDS[retry]},
                               tip=f"Retry after {retry} s or ask for a higher minute_limit.")
        if code == limits.CONCURRENCY:
            return RateLimited(f"Too many concurrent requests for this key (max {key.max_concurrent}).",
                               code=code, headers={"Retry-After": "1"})
        if code == limits.DAILY:
            return RateLimited(f"Daily budget of ${key.daily_limit:g} is used up.", code=code,
                               headers={"Retry-After": str(seconds_to_utc_midnight())},
                               tip="The budget resets at 00:00 UTC.")
        if code == limits.BALANCE:
            return RateLimited("This key's balance is used up.", code=code, headers={"Retry-After": "3600"},
                               tip="Ask an administrator to top up the key.")
        what = "daily budget" if code == limits.DAILY_SHORT else "balance"
        busy = self.counters.reserved(key.id) > 0     # requests in flight may settle for less
        retry = "1" if busy else (str(seconds_to_utc_midnight()) if code == limits.DAILY_SHORT else "3600")
        return RateLimited(f"This request could cost up to ${reserve / 1_000_000:.6f}, more than what is left "
                           f"of this key's {what}.", code=code, headers={"Retry-After": retry},
                           tip="Send a lower max_tokens (or a shorter prompt), or wait for requests in flight.")

    def _limit_text(self, limit: int) -> str:
        text = self.limit_texts[limit] = str(limit)
        return text

    def finish(self, ctx) -> None:
        key = ctx.key
        if key is None:
            return
        held = ctx.extra.get(HELD)
        if held is not None:
            self.counters.release(key.id, ctx.created, held, micro(ctx.cost) if ctx.cost else 0)
        elif ctx.cost:
            # a key without a money limit: nothing reads its spend before the next flush (a
            # daily limit set later still sees it)
            self.counters.defer_spend(key.id, ctx.cost, ctx.created)


def ratelimit(gateway, config) -> RateLimit:
    return RateLimit(gateway, config)
