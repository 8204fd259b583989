"""The embedded storage of the per-key limits (proxy.store.limits): `data_dir/counters.bin`,
mmap'd by every worker process of one machine.

Layout: a 64-byte header (magic, segment size N, segments) then segments of N 64-byte records
(limits.FIELDS packed by RECORD). A key's record is found by a 64-bit hash of its id, probing
linearly from `hash % N` in each segment in turn; the hash is stored in the record. Every
read-modify-write of a record holds an exclusive `fcntl.lockf` byte-range lock on it, so
processes never lose updates (those locks do not exclude threads: a process uses its counters
from one thread, the event loop's). Claiming, reclaiming and growing hold the header's lock.

Never fail open:
- When no record is free for a new key, records idle for IDLE_SECONDS (limits.idle: deleted,
  disabled and expired keys become idle) are reclaimed; if none is, the table grows by a
  segment, up to MAX_SEGMENTS. Past that `admit` raises CountersFull and the request is
  refused (503), never served unlimited.
- A file whose header or size does not match is moved aside (`counters.bin.damaged-<time>`,
  logged) and rebuilt zeroed; a static key's balance is re-seeded from the ledger, a managed
  key's from the key store.

Holdings: each process writes what it holds (in-flight counts and reserved micro-USD, per
record) into its own small file `counters.holds/<pid>.<random>`. The supervisor, seeing a worker die,
gives exactly that back (`release_dead`); `reset_holdings` clears everything before the
workers start. A graceful `close()` gives back what the process still holds.
"""
from __future__ import annotations

import fcntl
from fcntl import LOCK_EX, LOCK_UN, lockf
import hashlib
import mmap
import os
import secrets
import struct
import time
from pathlib import Path
from typing import Callable, TypeVar

import structlog

from proxy.errors import Unavailable
from proxy.store import limits
from proxy.store.files import open_private, private_dir
from proxy.store.holdings import Holdings
from proxy.store.limitstore import LimitStore
from proxy.store.limits import DAY_US, HASH, INFLIGHT, RESERVED, SPENT, DAY, STAMP

log = structlog.get_logger(__name__)

COUNTERS_FILENAME = "counters.bin"
HOLDS_DIRNAME = "counters.holds"
MAGIC = b"MWCNTR02"
HEADER = struct.Struct("<8sII")          # magic, records per segment, segments
HEADER_SIZE = 64
RECORD = struct.Struct("<QqIiiqqqq")     # limits.FIELDS in order (60 bytes)
RECORD_SIZE = 64
DEFAULT_SLOTS = 4096                     # records per segment
MAX_SEGMENTS = 64                        # 262,144 keys with the default segment
IDLE_SECONDS = 3600                      # an unused record is reclaimable after this
SPEND_FLUSH_SECONDS = 0.25
TOMB = 1                                 # a reclaimed record: probing goes on past it
_EMPTY = (0,) * limits.FIELDS

T = TypeVar("T")


class CountersFull(Unavailable):
    """A limited key cannot be counted: refused rather than served without its limits."""
    code = "limits_unavailable"


def key_hash(key_id: str) -> int:
    """64-bit, never 0 (empty) nor 1 (reclaimed)."""
    h = int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little")
    return h if h > TOMB else h + 2


class SharedCounters(LimitStore):
    """Cross-process per-key limit records in an mmap'd file. All methods are sync and cheap
    (two fcntl calls and a struct pack); call them from the event loop directly."""

    @classmethod
    def build(cls, ctx) -> "SharedCounters":
        """The embedded `limits` store of proxy.state.stores."""
        return cls.in_dir(ctx.data_dir)

    def __init__(self, path: str | Path, slots: int = DEFAULT_SLOTS, *,
                 max_segments: int = MAX_SEGMENTS, idle_seconds: int = IDLE_SECONDS) -> None:
        self.path = private_dir(Path(path).parent) / Path(path).name
        self.holds_dir = self.path.parent / HOLDS_DIRNAME
        self.max_segments, self.idle_seconds = max_segments, idle_seconds
        self._spend: dict[tuple[str, int], int] = {}   # (key id, UTC day) -> micro-USD not yet in the file
        self._index: dict[str, tuple[int, int]] = {}   # key id -> (record offset, hash)
        self._full_logged = False
        self._fd = self._open(slots)
        self._mm = mmap.mmap(self._fd, HEADER_SIZE)
        self.slots = self.segments = 0
        self._remap()
        self._holds: Holdings | None = None

    @classmethod
    def in_dir(cls, data_dir: str | Path, slots: int = DEFAULT_SLOTS) -> "SharedCounters":
        return cls(Path(data_dir) / COUNTERS_FILENAME, slots)

    # --- the file ----------------------------------------------------------------------------
    def _open(self, slots: int) -> int:
        """Open the file, rebuilding it zeroed (the old one moved aside) if it is damaged."""
        guard = open_private(self.path.with_name(self.path.name + ".lock"))
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            fd = open_private(self.path)
            size = os.fstat(fd).st_size
            problem = _check(os.pread(fd, HEADER.size, 0), size)
            if problem is None:
                return fd
            if size:
                aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
                os.rename(self.path, aside)
                os.close(fd)
                log.error("counters_rebuilt", path=str(self.path), problem=problem, moved_to=str(aside))
                fd = open_private(self.path, os.O_RDWR | os.O_EXCL)
            os.ftruncate(fd, HEADER_SIZE + slots * RECORD_SIZE)
            os.pwrite(fd, HEADER.pack(MAGIC, slots, 1), 0)
            return fd
        finally:
            os.close(guard)       # and its flock with it

    def _remap(self) -> None:
        """Map the whole file as its header describes it now (another process may have grown it)."""
        _, slots, segments = HEADER.unpack_from(self._mm, 0)
        if (slots, segments) != (self.slots, self.segments):
            self._mm.close()
            self._mm = mmap.mmap(self._fd, HEADER_SIZE + slots * segments * RECORD_SIZE)
            self.slots, self.segments = slots, segments

    def _lock(self, off: int, size: int = RECORD_SIZE) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, size, off)

    def _unlock(self, off: int, size: int = RECORD_SIZE) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, size, off)

    # --- finding a key's record --------------------------------------------------------------
    def _find(self, key_id: str, now: float) -> tuple[int, int]:
        """(offset, hash) of the key's record, claiming one (reclaiming idle records, growing
        the table) if it has none. Raises CountersFull when the table cannot grow."""
        found = self._index.get(key_id)
        if found is not None:
            return found
        h = key_hash(key_id)
        self._lock(0, HEADER_SIZE)
        try:
            self._remap()
            off = self._probe(h)
            if off is None:
                off = self._free_record(h, now)
                self._full_logged = False
                self._lock(off)
                RECORD.pack_into(self._mm, off, h, *_EMPTY[1:])
                self._unlock(off)
        finally:
            self._unlock(0, HEADER_SIZE)
        found = self._index[key_id] = off, h
        return found

    def _probe(self, h: int, want: int | None = None) -> int | None:
        """The offset of the record tagged `want` (default h) on h's probe path, or None."""
        want = h if want is None else want
        n = self.slots
        for seg in range(self.segments):
            base = HEADER_SIZE + seg * n * RECORD_SIZE
            home = h % n
            for i in range(n):
                off = base + ((home + i) % n) * RECORD_SIZE
                tag = struct.unpack_from("<Q", self._mm, off)[0]
                if tag == want:
                    return off
                if tag == 0:
                    break
        return None

    def _free_record(self, h: int, now: float) -> int:
        """A free record on h's probe path (header lock held): an empty or reclaimed one, after
        reclaiming idle records, else in a new segment."""
        for want in (0, TOMB):
            off = self._probe(h, want)
            if off is not None:
                return off
        if self._reclaim(int(now * 1_000_000)):
            off = self._probe(h, TOMB)
            if off is not None:
                return off
        if self.segments >= self.max_segments:
            if not self._full_logged:     # once until a record is free again (refusals are metered)
                self._full_logged = True
                log.error("counters_full", path=str(self.path), records=self.slots * self.segments)
            raise CountersFull("This key's limits cannot be counted right now (the counters table is "
                               "full); the request was not served.", tip="Ask an administrator.")
        segments = self.segments + 1
        os.ftruncate(self._fd, HEADER_SIZE + self.slots * segments * RECORD_SIZE)
        struct.pack_into("<I", self._mm, 12, segments)
        self._remap()
        log.warning("counters_grown", path=str(self.path), records=self.slots * segments)
        return HEADER_SIZE + ((segments - 1) * self.slots + h % self.slots) * RECORD_SIZE

    def _reclaim(self, now_us: int) -> int:
        """Free every idle record (header lock held); returns how many."""
        freed = 0
        for i in range(self.slots * self.segments):
            off = HEADER_SIZE + i * RECORD_SIZE
            fields = list(RECORD.unpack_from(self._mm, off))
            if fields[HASH] <= TOMB or not limits.idle(fields, now_us, self.idle_seconds):
                continue
            self._lock(off)
            try:
                fields = list(RECORD.unpack_from(self._mm, off))
                if limits.idle(fields, now_us, self.idle_seconds):
                    RECORD.pack_into(self._mm, off, TOMB, *_EMPTY[1:])
                    freed += 1
            finally:
                self._unlock(off)
        if freed:
            log.info("counters_reclaimed", records=freed)
        return freed

    def _update(self, key_id: str, now: float, fn: Callable[[list], T],
                hold: Callable[[T, int, int], None] | None = None) -> tuple[T, int]:
        """Run fn(record fields) under the record's lock and write them back, then
        hold(result, offset, hash) under the same lock; returns (fn's result, offset)."""
        for _ in range(3):
            off, h = self._find(key_id, now)
            self._lock(off)
            try:
                fields = list(RECORD.unpack_from(self._mm, off))
                if fields[HASH] == h:
                    result = fn(fields)
                    RECORD.pack_into(self._mm, off, *fields)
                    if hold is not None:
                        hold(result, off, h)
                    return result, off
            finally:
                self._unlock(off)
            del self._index[key_id]          # reclaimed and reused meanwhile: find it again
        raise CountersFull("This key's limits cannot be counted right now.")

    # --- the limits --------------------------------------------------------------------------
    def acquire(self, key_id: str, now: float, minute_limit: int | None, max_concurrent: int | None,
                reserve: int = 0, daily: int | None = None, stamp: int = 0, balance: int = 0) -> tuple:
        """limits.admit on the key's record, plus the hold (reserve, holds an in-flight slot) of
        an admitted request with something to settle, noted in this process's holdings file.
        Raises CountersFull. (Once per request: `_update` inlined.)"""
        found = self._index.get(key_id)
        off, h = found if found is not None else self._find(key_id, now)
        fd = self._fd
        lockf(fd, LOCK_EX, RECORD_SIZE, off)
        try:
            fields = list(RECORD.unpack_from(self._mm, off))
            if fields[0] == h:
                code, remaining, wait = limits.admit(fields, int(now * 1_000_000), minute_limit, max_concurrent,
                                                     reserve, daily, stamp, balance)
                RECORD.pack_into(self._mm, off, *fields)
                if code is not None:
                    return code, remaining, wait, None
                concurrent = max_concurrent is not None
                if reserve or concurrent:
                    self._holdings().add((off - HEADER_SIZE) // RECORD_SIZE, h, int(concurrent), reserve)
                elif daily is None and not stamp:
                    return None, remaining, wait, None          # nothing to settle
                return None, remaining, wait, (reserve, concurrent)
        finally:
            lockf(fd, LOCK_UN, RECORD_SIZE, off)
        del self._index[key_id]          # reclaimed and reused meanwhile: find it again
        return self.acquire(key_id, now, minute_limit, max_concurrent, reserve, daily, stamp, balance)

    def admit(self, *args, **kwargs) -> tuple[str | None, int, int]:
        """`acquire` without the hold (tools, tests)."""
        return self.acquire(*args, **kwargs)[:3]

    def release(self, key_id: str, now: float, hold: tuple[int, bool], cost: int) -> None:
        self.settle(key_id, now, hold[0], cost, hold[1])

    def seed_static(self, key_id: str, stamp: int, left: Callable[[], int]) -> None:
        if self.stamp(key_id) != stamp:
            self.seed(key_id, stamp, left())

    def settle(self, key_id: str, now: float, reserve: int, cost: int, concurrency: bool) -> None:
        """limits.settle for a request admitted at `now` (its UTC day gets the cost)."""
        day = int(now * 1_000_000) // DAY_US
        def unhold(_result: None, off: int, h: int) -> None:
            self._holdings().add((off - HEADER_SIZE) // RECORD_SIZE, h, -1 if concurrency else 0, -reserve)

        self._update(key_id, now, lambda f: limits.settle(f, day, reserve, cost, concurrency),
                     unhold if concurrency or reserve else None)

    def seed(self, key_id: str, stamp: int, balance: int) -> int:
        """limits.seed: a static key's balance, if its stamp changed; returns the stamp found."""
        def step(f: list) -> int:
            found = f[STAMP]
            limits.seed(f, stamp, balance)
            return found
        return self._update(key_id, time.time(), step)[0]

    def stamp(self, key_id: str) -> int:
        return self._update(key_id, time.time(), lambda f: f[STAMP])[0]

    # --- spend of keys without money limits, per UTC day -------------------------------------
    def defer_spend(self, key_id: str, usd: float, now: float) -> None:
        """Add to the key's spend on the UTC day of `now` in this process's memory; moved into
        the file by the next `flush_spend()` (every SPEND_FLUSH_SECONDS, and at `close()`)."""
        slot = key_id, int(now // 86400)
        self._spend[slot] = self._spend.get(slot, 0) + round(usd * 1_000_000)

    def flush_spend(self) -> None:
        pending, self._spend = self._spend, {}
        for (key_id, day), micro in pending.items():
            try:
                self._update(key_id, time.time(), lambda f: limits.add_spend(f, day, micro))
            except CountersFull:
                pass      # logged by _free_record; no limit reads this key's spend

    def spend_today(self, key_id: str, now: float | None = None) -> float:
        """USD settled today (UTC) by the key in every process."""
        now = time.time() if now is None else now
        day = int(now // 86400)
        micro = self._update(key_id, now, lambda f: f[SPENT] if f[DAY] == day else 0)[0]
        return (micro + self._spend.get((key_id, day), 0)) / 1_000_000

    def in_flight(self, key_id: str) -> int:
        return self._update(key_id, time.time(), lambda f: f[INFLIGHT])[0]

    def reserved(self, key_id: str) -> int:
        return self._update(key_id, time.time(), lambda f: f[RESERVED])[0]

    # --- holdings ----------------------------------------------------------------------------
    def _holdings(self) -> "Holdings":
        if self._holds is None:
            # one file per SharedCounters (a process may open several, as tests do)
            self._holds = Holdings(self.holds_dir / f"{os.getpid()}.{secrets.token_hex(4)}")
        return self._holds

    def release_dead(self, pid: int) -> int:
        """Give back what the dead process `pid` held; returns how many records it touched."""
        return sum(self._release(path) for path in self.holds_dir.glob(f"{pid}.*"))

    def _release(self, path: Path) -> int:
        """Give back the holdings listed in one holdings file, then delete it."""
        try:
            held = Holdings.read(path)
        except FileNotFoundError:
            return 0
        self._lock(0, HEADER_SIZE)
        try:
            self._remap()
        finally:
            self._unlock(0, HEADER_SIZE)
        for index, h, inflight, reserve in held:
            off = HEADER_SIZE + index * RECORD_SIZE
            if off + RECORD_SIZE > len(self._mm):
                continue
            self._lock(off)
            try:
                f = list(RECORD.unpack_from(self._mm, off))
                if f[HASH] == h:
                    f[INFLIGHT] = max(0, f[INFLIGHT] - inflight)
                    f[RESERVED] = max(0, f[RESERVED] - reserve)
                    RECORD.pack_into(self._mm, off, *f)
            finally:
                self._unlock(off)
        path.unlink(missing_ok=True)
        if held:
            log.info("counters_released", holdings=path.name, records=len(held))
        return len(held)

    def reset_holdings(self) -> None:
        """Zero every in-flight count and reservation, drop every holdings file. Only before
        any worker serves (the supervisor, or the single process at start)."""
        for i in range(self.slots * self.segments):
            off = HEADER_SIZE + i * RECORD_SIZE
            self._lock(off)
            try:
                f = list(RECORD.unpack_from(self._mm, off))
                if f[INFLIGHT] or f[RESERVED]:
                    f[INFLIGHT] = f[RESERVED] = 0
                    RECORD.pack_into(self._mm, off, *f)
            finally:
                self._unlock(off)
        if self.holds_dir.is_dir():
            for path in self.holds_dir.iterdir():
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Flush pending spend, give back what this process still holds, unmap. Idempotent."""
        if self._fd < 0:
            return
        self.flush_spend()
        if self._holds is not None:
            self._holds.close()
            self._release(self._holds.path)
            self._holds = None
        self._mm.close()
        os.close(self._fd)
        self._fd = -1


def _check(head: bytes, size: int) -> str | None:
    """Why a counters file cannot be used as it is, or None."""
    if size == 0:
        return "empty"
    if len(head) < HEADER.size or head[:8] != MAGIC:
        return "bad header"
    _, slots, segments = HEADER.unpack(head)
    if not slots or not segments or size != HEADER_SIZE + slots * segments * RECORD_SIZE:
        return f"size {size} does not match the header"
    return None
