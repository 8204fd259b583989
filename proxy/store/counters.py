"""Per-key counters shared by every worker process of one machine, without touching SQLite.

`data_dir/counters.bin` is a fixed table of 64-byte slots, mmap'd by every process. A key's slot
is found by a 64-bit hash of its id with linear probing; the hash is stored in the slot, and a
slot once claimed is never freed (the table holds `slots` distinct keys; a key that finds the
table full is let through and logged once). Each slot holds:

    key hash | minute number, requests this minute, requests last minute |
    UTC day number, spend today in micro-USD | requests in flight

Every read-modify-write holds an exclusive `fcntl.lockf` byte-range lock on that slot, so
processes never lose updates. Those locks do not exclude threads of one process: a process
uses its counters from one thread, the event loop's. Spend of a key without a daily limit
(nothing reads it until a limit is set) may be deferred: the process keeps it in memory and
moves it into the file every SPEND_FLUSH_SECONDS (`flush_spend`), one lock per key instead of
one per request.

Requests per minute use a sliding-window estimate, `prev * (1 - elapsed_fraction) + cur`: a
burst cannot pass the limit twice across a minute boundary. A key far from its limit (at least
LEASE_FROM requests left in the window) is counted in leases: one locked update counts LEASE
requests at once, and this process lets that many through without touching the file (within
the same minute; a new minute or another limit ends the lease). Every worker counts its leases
at once, so together they can never pass the limit; below LEASE_FROM every request is counted
on its own, exactly. What a lease leaves unused when its minute ends stays counted (at most
LEASE - 1 per process and key).

Concurrency trade-off: a worker killed while requests are in flight leaves its count in the
file. `close()` releases what this process still holds (graceful shutdown leaks nothing), and
the supervisor that starts the workers calls `reset_concurrency()` once before forking them, so
a crash leaks at most until the next restart of the gateway. The minute and spend counters
survive restarts (the file stays).
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from pathlib import Path
from typing import Callable, TypeVar

import structlog

from proxy.store.files import open_private, private_dir

log = structlog.get_logger(__name__)

COUNTERS_FILENAME = "counters.bin"
MAGIC = b"MWCNTR01"
HEADER = struct.Struct("<8sI")          # magic, number of slots
HEADER_SIZE = 64
SLOT = struct.Struct("<QqIIqqi")        # hash, minute, cur, prev, day, spend_micro, inflight
SLOT_SIZE = 64
DEFAULT_SLOTS = 4096
SPEND_FLUSH_SECONDS = 0.25
LEASE = 32           # requests a process counts at once against a key's minute window...
LEASE_FROM = 64 * LEASE   # ...while this many or more are left in it; below, one by one

T = TypeVar("T")


def key_hash(key_id: str) -> int:
    """64-bit, never 0 (0 marks an empty slot)."""
    h = int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little")
    return h or 1


def _retry_after(limit: int, cur: int, prev: int, now: float) -> int:
    """Seconds until the sliding estimate leaves room for one more request."""
    elapsed = now % 60
    if cur + 1 <= limit and prev > 0:    # wait for the previous minute's weight to decay
        frac = 1 - (limit - 1 - cur) / prev
        return max(1, math.ceil(frac * 60 - elapsed))
    to_next = 60 - elapsed               # next minute: prev becomes cur, cur becomes 0
    if cur + 1 <= limit or cur == 0:
        return max(1, math.ceil(to_next))
    frac = max(0.0, 1 - (limit - 1) / cur)
    return max(1, math.ceil(to_next + frac * 60))


class SharedCounters:
    """Cross-process per-key counters in an mmap'd file. All methods are sync and cheap (two
    fcntl calls and a struct pack, or none); call them from the event loop directly."""

    def __init__(self, path: str | Path, slots: int = DEFAULT_SLOTS) -> None:
        self.path = Path(path)
        self._fd = open_private(private_dir(self.path.parent) / self.path.name)
        self._spend: dict[tuple[str, int], int] = {}   # (key id, UTC day) -> micro-USD not yet in the file
        self._leases: dict[str, list] = {}   # key id -> [minute's start, its end (unix s), limit,
                                             #   hits left, remaining to report]
        self._index: dict[str, int] = {}     # key_id -> byte offset of its slot
        self._held: dict[str, int] = {}      # in-flight counts this process acquired
        self._full_warned = False
        self.slots = self._init_file(slots)
        self._mm = mmap.mmap(self._fd, HEADER_SIZE + self.slots * SLOT_SIZE)

    @classmethod
    def in_dir(cls, data_dir: str | Path, slots: int = DEFAULT_SLOTS) -> "SharedCounters":
        return cls(Path(data_dir) / COUNTERS_FILENAME, slots)

    def _init_file(self, slots: int) -> int:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, HEADER_SIZE, 0)
        try:
            head = os.pread(self._fd, HEADER.size, 0)
            if len(head) == HEADER.size and head[:8] == MAGIC:
                return HEADER.unpack(head)[1]
            os.ftruncate(self._fd, HEADER_SIZE + slots * SLOT_SIZE)
            os.pwrite(self._fd, HEADER.pack(MAGIC, slots), 0)
            return slots
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, HEADER_SIZE, 0)

    # --- slot access -----------------------------------------------------------------------
    def _lock(self, off: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, SLOT_SIZE, off)

    def _unlock(self, off: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, SLOT_SIZE, off)

    def _find(self, key_id: str) -> int | None:
        """Byte offset of the key's slot, claiming an empty one; None if the table is full."""
        off = self._index.get(key_id)
        if off is not None:
            return off
        h = key_hash(key_id)
        start = h % self.slots
        for i in range(self.slots):
            off = HEADER_SIZE + ((start + i) % self.slots) * SLOT_SIZE
            self._lock(off)
            try:
                found = struct.unpack_from("<Q", self._mm, off)[0]
                if found == 0:
                    SLOT.pack_into(self._mm, off, h, 0, 0, 0, 0, 0, 0)
                    found = h
            finally:
                self._unlock(off)
            if found == h:
                self._index[key_id] = off
                return off
        if not self._full_warned:
            self._full_warned = True
            log.error("counters_table_full", path=str(self.path), slots=self.slots)
        return None

    def _update(self, key_id: str, fn: Callable[[list], T]) -> T | None:
        """Run fn(slot fields as a list) under the slot lock and write the list back.
        Returns fn's result, or None when the table is full."""
        off = self._find(key_id)
        if off is None:
            return None
        self._lock(off)
        try:
            fields = list(SLOT.unpack_from(self._mm, off))
            result = fn(fields)
            SLOT.pack_into(self._mm, off, *fields)
            return result
        finally:
            self._unlock(off)

    # --- requests per minute ---------------------------------------------------------------
    def hit(self, key_id: str, limit: int, now: float | None = None) -> tuple[bool, int, int]:
        """Count one request if the sliding minute window allows it.
        Returns (allowed, remaining requests, seconds until reset/retry)."""
        if now is None:
            now = time.time()
        lease = self._leases.get(key_id)
        if lease is not None:
            start, end, leased_for, left, remaining = lease
            if left and start <= now < end and leased_for == limit:
                lease[3] = left - 1
                lease[4] = remaining = remaining - 1
                # seconds to the minute's end, rounded up: 60 - int(now % 60), as below
                return True, remaining if remaining > 0 else 0, math.ceil(end - now)
        minute = int(now // 60)
        reset = 60 - int(now % 60)      # ceil(60 - seconds into the minute): 1..60
        off = self._find(key_id)
        if off is None:
            return True, limit, 60
        self._lock(off)
        try:
            h, last, cur, prev, day, spend, inflight = SLOT.unpack_from(self._mm, off)
            if last != minute:
                prev, cur = (cur if last == minute - 1 else 0), 0
            estimate = prev * (1 - (now % 60) / 60) + cur
            allowed = estimate + 1 <= limit
            take = (LEASE if limit - estimate >= LEASE_FROM else 1) if allowed else 0
            SLOT.pack_into(self._mm, off, h, minute, cur + take, prev, day, spend, inflight)
        finally:
            self._unlock(off)
        if not allowed:
            self._leases.pop(key_id, None)
            return False, 0, _retry_after(limit, cur, prev, now)
        remaining = math.floor(limit - estimate - 1)
        if take > 1:
            self._leases[key_id] = [minute * 60, minute * 60 + 60, limit, take - 1, remaining]
        else:
            self._leases.pop(key_id, None)
        return True, max(0, remaining), reset

    # --- spend per UTC day -----------------------------------------------------------------
    def add_spend(self, key_id: str, usd: float, now: float | None = None) -> None:
        """Add to the key's spend today, in the shared slot at once."""
        now = time.time() if now is None else now
        self._add_spend(key_id, int(now // 86400), round(usd * 1_000_000))

    def defer_spend(self, key_id: str, usd: float, now: float) -> None:
        """Add to the key's spend on the UTC day of `now` in this process's memory: counted
        here at once (`spend_today`), moved into the file by the next `flush_spend()` (the
        gateway calls it every SPEND_FLUSH_SECONDS, and `close()` does)."""
        slot = key_id, int(now // 86400)
        self._spend[slot] = self._spend.get(slot, 0) + round(usd * 1_000_000)

    def _add_spend(self, key_id: str, day: int, micro: int) -> None:
        def step(f: list) -> None:
            if f[4] < day:
                f[4], f[5] = day, 0
            if f[4] == day:        # spend of a day that is already over is dropped
                f[5] += micro

        self._update(key_id, step)

    def flush_spend(self) -> None:
        """Move this process's pending spend into the shared slots."""
        pending, self._spend = self._spend, {}
        for (key_id, day), micro in pending.items():
            self._add_spend(key_id, day, micro)

    def spend_today(self, key_id: str, now: float | None = None) -> float:
        """USD spent today (UTC) by the key in every process; 0.0 for an unknown key."""
        day = int((time.time() if now is None else now) // 86400)
        micro = self._update(key_id, lambda f: f[5] if f[4] == day else 0) or 0
        micro += self._spend.get((key_id, day), 0)
        return micro / 1_000_000

    # --- requests in flight ----------------------------------------------------------------
    def acquire(self, key_id: str, max_concurrent: int) -> bool:
        """Take one in-flight slot if fewer than max_concurrent are taken; pair with release()."""
        def step(f: list) -> bool:
            if f[6] >= max_concurrent:
                return False
            f[6] += 1
            return True

        ok = self._update(key_id, step)
        if ok:
            self._held[key_id] = self._held.get(key_id, 0) + 1
        return ok is not False

    def release(self, key_id: str) -> None:
        held = self._held.get(key_id, 0)
        if held <= 0:
            return
        if held == 1:
            del self._held[key_id]
        else:
            self._held[key_id] = held - 1

        def step(f: list) -> None:
            f[6] = max(0, f[6] - 1)

        self._update(key_id, step)

    def in_flight(self, key_id: str) -> int:
        return self._update(key_id, lambda f: f[6]) or 0

    def reset_concurrency(self) -> None:
        """Zero every in-flight count. Only for the supervisor, before workers start."""
        self._held.clear()
        for i in range(self.slots):
            off = HEADER_SIZE + i * SLOT_SIZE
            self._lock(off)
            try:
                fields = list(SLOT.unpack_from(self._mm, off))
                if fields[6]:
                    fields[6] = 0
                    SLOT.pack_into(self._mm, off, *fields)
            finally:
                self._unlock(off)

    def close(self) -> None:
        """Release in-flight counts this process still holds, then unmap. Idempotent."""
        if self._fd < 0:
            return
        self.flush_spend()
        for key_id, n in list(self._held.items()):
            for _ in range(n):
                self.release(key_id)
        self._mm.close()
        os.close(self._fd)
        self._fd = -1
