"""The per-key limit algorithms, written once over one record per key; a storage (the mmap'd
`counters.bin` of proxy.store.counters today, a Redis hash run by one Lua script tomorrow) only
has to run `admit`/`settle` atomically on the key's record.

A key's record is a list of int fields (indices below, all money in micro-USD, times in µs):

    HASH      the storage's tag for the key (0: an empty record)
    TAT       GCRA's theoretical arrival time of the minute limit
    SEEN      unix seconds of the last admission (idle records may be reclaimed)
    INFLIGHT  requests in flight (max_concurrent)
    DAY       UTC day number of SPENT
    SPENT     settled spend on DAY
    RESERVED  reservations of the requests in flight (upper bounds of their cost)
    STAMP     which balance LEFT was seeded from (0: none; > 0 a managed key's `updated_at`
              in µs, newer wins; < 0 a static key's, seeded at config load)
    LEFT      remaining balance

Minute limit: GCRA (the generic cell rate algorithm of redis-cell, Stripe's and Envoy's
limiters). One request every T = 60 s / limit, bursts up to `limit`: a request is allowed if
TAT, pushed on by T, stays within 60 s of now. Exact, one timestamp, and a refused request
leaves it as it was (it does not count). Retry-After = the time until the request would fit
(at most T <= 60 s); Reset = until the whole limit is free again (<= 60 s).

Money: a request reserves an upper bound of its cost before it is sent and settles at its
actual cost when it is over. Admission needs SPENT + RESERVED + reservation <= daily limit and
LEFT - RESERVED - reservation >= 0, so settled spend can only pass a limit by what a request
costs beyond its reservation. Every check passes or nothing changes.
"""
from __future__ import annotations

HASH, TAT, SEEN, INFLIGHT, DAY, SPENT, RESERVED, STAMP, LEFT = range(9)
FIELDS = 9
MINUTE_US = 60_000_000
DAY_US = 86_400 * 1_000_000

# refusal codes (the error `code` of the 429)
MINUTE = "minute_limit_exceeded"
CONCURRENCY = "concurrency_limit_exceeded"
DAILY = "daily_limit_exceeded"
DAILY_SHORT = "daily_limit_insufficient"
BALANCE = "balance_exhausted"
BALANCE_SHORT = "balance_insufficient"


def interval_us(limit: int) -> int:
    """GCRA's emission interval; rounded down so that exactly `limit` fit in a burst."""
    return max(1, MINUTE_US // limit)


def admit(f: list, now_us: int, minute_limit: int | None, max_concurrent: int | None, reserve: int,
          daily: int | None, stamp: int, balance: int) -> tuple[str | None, int, int]:
    """Admit one request, all or nothing: (refusal code or None, requests left this minute,
    µs until the minute limit is wholly free — or, refused by it, until one more fits)."""
    day = now_us // DAY_US
    if f[DAY] != day:
        f[DAY], f[SPENT] = day, 0
    if not stamp:
        f[STAMP] = 0                              # the key has no balance (any more)
    elif f[STAMP] == 0 or 0 < f[STAMP] < stamp:
        f[STAMP], f[LEFT] = stamp, balance
    f[SEEN] = now_us // 1_000_000
    remaining = wait = 0
    if minute_limit is not None:
        step = interval_us(minute_limit)
        tat = f[TAT] if f[TAT] > now_us else now_us
        wait = tat + step - now_us
        if wait > MINUTE_US:                      # does not fit: TAT stays, nothing counted
            return MINUTE, 0, wait - MINUTE_US
        remaining = (MINUTE_US - wait) // step
    code = None
    if max_concurrent is not None and f[INFLIGHT] >= max_concurrent:
        code = CONCURRENCY
    elif daily is not None and f[SPENT] >= daily:
        code = DAILY
    elif daily is not None and f[SPENT] + f[RESERVED] + reserve > daily:
        code = DAILY_SHORT
    elif f[STAMP] and f[LEFT] <= 0:
        code = BALANCE
    elif f[STAMP] and f[LEFT] - f[RESERVED] - reserve < 0:
        code = BALANCE_SHORT
    if code is not None:                          # refused: the minute is left as it was
        return (code, remaining + 1, wait - step) if minute_limit is not None else (code, 0, 0)
    if minute_limit is not None:
        f[TAT] = now_us + wait
    if max_concurrent is not None:
        f[INFLIGHT] += 1
    f[RESERVED] += reserve
    return None, remaining, wait


def settle(f: list, day: int, reserve: int, cost: int, concurrency: bool) -> None:
    """A request admitted on `day` is over: give back its reservation (and in-flight slot),
    count its actual cost in the day's spend and take it from the balance."""
    if concurrency and f[INFLIGHT] > 0:
        f[INFLIGHT] -= 1
    f[RESERVED] = max(0, f[RESERVED] - reserve)
    if f[DAY] < day:
        f[DAY], f[SPENT] = day, 0
    if f[DAY] == day:                 # spend of a day that is already over is dropped
        f[SPENT] += cost
    if f[STAMP]:
        f[LEFT] -= cost


def seed(f: list, stamp: int, balance: int) -> None:
    """Set the balance a static key starts from (at config load, when its stamp changed)."""
    if f[STAMP] != stamp:
        f[STAMP], f[LEFT] = stamp, balance


def add_spend(f: list, day: int, cost: int) -> None:
    """Spend of a key with no money limit (nothing reserved), for a daily limit set later."""
    if f[DAY] < day:
        f[DAY], f[SPENT] = day, 0
    if f[DAY] == day:
        f[SPENT] += cost


def idle(f: list, now_us: int, idle_seconds: int) -> bool:
    """The record holds nothing that would be lost: no request in flight or reserved, the
    minute limit wholly free, no spend today, no static balance, unused for idle_seconds. A
    managed key's balance is re-seeded from the key store when it comes back."""
    return (f[INFLIGHT] == 0 and f[RESERVED] == 0 and f[TAT] <= now_us and f[STAMP] >= 0
            and (f[SPENT] == 0 or f[DAY] < now_us // DAY_US) and f[SEEN] + idle_seconds <= now_us // 1_000_000)
