"""Rate limits and budgets per key, enforced before the upstream is called and shared by every
worker process (mmap'd counters, see proxy.store.counters):

- `minute_limit`: requests per minute (sliding window) on the inference endpoints (chat,
  messages, embeddings). Every inference response of a limited key carries
  X-RateLimit-Limit-Minute / -Remaining-Minute / -Reset-Minute. /v1/models and /v1/account/*
  are neither counted nor refused.
- `daily_limit`: USD per UTC day, from the cost of finished requests.
- `balance`: USD; managed keys are charged by the ledger, static keys against their total
  spend in the ledger (refreshed every second).
- `max_concurrent`: requests in flight at once.
Over any of them: 429 rate_limit_error with Retry-After.
"""
from __future__ import annotations

import asyncio
import time

from multidict import istr

from proxy.context import INFERENCE_ENDPOINTS
from proxy.errors import RateLimited
from proxy.pipeline import Middleware

# header names as istr: aiohttp takes them without working out their case-insensitive form
LIMIT_MINUTE, REMAINING_MINUTE, RESET_MINUTE = map(istr, ("X-RateLimit-Limit-Minute", "X-RateLimit-Remaining-Minute",
                                                          "X-RateLimit-Reset-Minute"))
SECONDS = tuple(map(str, range(121)))   # header values of a reset or retry time (1..120 s)


def seconds_to_utc_midnight(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, int(86400 - now % 86400))


class RateLimit(Middleware):
    name = "ratelimit"

    def __init__(self, gateway, config):
        self.gateway = gateway
        self.counters = gateway.counters
        self.static_balances = {f"static:{k.label}": k.balance for k in config.keys if k.balance is not None}
        self.static_spent: dict[str, float] = {}   # ledger total at the last refresh + local spend since
        self.static_local: dict[str, float] = {}   # this process's spend, ever (to bridge refreshes)
        self._refresher: asyncio.Task | None = None
        self.limit_texts: dict[int, str] = {}   # minute_limit -> its header value

    def before(self, ctx) -> None:
        key = ctx.key
        if key is None or key.management or ctx.endpoint not in INFERENCE_ENDPOINTS:
            # /v1/models and /v1/account/* neither use up nor are refused by a key's limits:
            # a limited key can always check its balance and activity
            return
        counters = self.counters
        limit = key.minute_limit
        if limit is not None:
            allowed, remaining, reset = counters.hit(key.id, limit, ctx.created)
            headers = ctx.response_headers
            headers[LIMIT_MINUTE] = self.limit_texts.get(limit) or self._limit_text(limit)
            headers[REMAINING_MINUTE] = str(remaining)
            headers[RESET_MINUTE] = SECONDS[reset] if reset < len(SECONDS) else str(reset)
            if not allowed:
                raise RateLimited(f"Rate limit of {key.minute_limit} requests per minute exceeded.",
                                  code="minute_limit_exceeded", headers={"Retry-After": str(max(reset, 1))},
                                  tip=f"Retry after {max(reset, 1)} s or ask for a higher minute_limit.")
        if key.daily_limit is not None or key.balance is not None:
            self._check_spend(key, counters)
        if key.max_concurrent is not None:
            if not counters.acquire(key.id, key.max_concurrent):
                raise RateLimited(f"Too many concurrent requests for this key (max {key.max_concurrent}).",
                                  code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
            ctx.extra["concurrency_held"] = True

    def _limit_text(self, limit: int) -> str:
        text = self.limit_texts[limit] = str(limit)
        return text

    def _check_spend(self, key, counters) -> None:
        if key.daily_limit is not None:
            spent = counters.spend_today(key.id)
            if spent >= key.daily_limit:
                wait = seconds_to_utc_midnight()
                raise RateLimited(f"Daily budget of ${key.daily_limit:g} is used up (spent ${spent:.4f} today).",
                                  code="daily_limit_exceeded", headers={"Retry-After": str(wait)},
                                  tip="The budget resets at 00:00 UTC.")
        balance = key.balance
        if key.source == "static" and balance is not None:
            self._ensure_refresher()
            balance -= self.static_spent.get(key.id, 0.0)
        if balance is not None and balance <= 0:
            raise RateLimited("This key's balance is used up.", code="balance_exhausted",
                              headers={"Retry-After": "3600"}, tip="Ask an administrator to top up the key.")

    def finish(self, ctx) -> None:
        key = ctx.key
        if key is None:
            return
        if ctx.extra.get("concurrency_held"):
            self.counters.release(key.id)
        cost = ctx.cost
        if cost:
            # a key with a daily limit has its spend in the shared counters at once; for the
            # others nothing reads it before the next flush (a limit set later still sees it)
            if key.daily_limit is None:
                self.counters.defer_spend(key.id, cost, ctx.created)
            else:
                self.counters.add_spend(key.id, cost, ctx.created)
            if key.id in self.static_balances:
                self.static_local[key.id] = self.static_local.get(key.id, 0.0) + cost
                self.static_spent[key.id] = self.static_spent.get(key.id, 0.0) + cost

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    def _ensure_refresher(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        """Static keys' total spend from the ledger (all workers), once a second. Spend this
        process adds while the query runs is not in its answer: it is carried over, so a
        request finishing meanwhile is never forgotten."""
        while True:
            for key_id in self.static_balances:
                try:
                    before = self.static_local.get(key_id, 0.0)   # balance() flushes these first
                    total = (await self.gateway.ledger.balance(key_id)).get("total_spent") or 0.0
                    self.static_spent[key_id] = total + self.static_local.get(key_id, 0.0) - before
                except Exception:
                    pass
            await asyncio.sleep(1.0)


def ratelimit(gateway, config) -> RateLimit:
    return RateLimit(gateway, config)
