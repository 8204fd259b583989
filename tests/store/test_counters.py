"""Shared counters: limits hold across worker processes, not per process."""
import multiprocessing

import pytest

from proxy.store.counters import LEASE, LEASE_FROM, SharedCounters

NOW = 1_700_000_000.0 - 1_700_000_000.0 % 60 + 10     # 10 s into a minute
CTX = multiprocessing.get_context("fork")


def _hammer(path, key, limit, now, attempts, start, allowed_total, lock):
    counters = SharedCounters(path)
    start.wait()
    allowed = sum(counters.hit(key, limit, now=now)[0] for _ in range(attempts))
    counters.close()
    with lock:
        allowed_total.value += allowed


def _spend(path, key, start, n):
    counters = SharedCounters(path)
    start.wait()
    for _ in range(n):
        counters.add_spend(key, 0.001, now=NOW)
    counters.close()


def _run(target, args_for, procs=4):
    start = CTX.Event()
    workers = [CTX.Process(target=target, args=args_for(start)) for _ in range(procs)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0


def test_minute_limit_holds_across_processes(tmp_path):
    path = tmp_path / "counters.bin"
    total, lock = CTX.Value("i", 0), CTX.Lock()
    _run(_hammer, lambda start: (path, "key_a", 50, NOW, 100, start, total, lock))
    assert total.value == 50

    counters = SharedCounters(path)
    # full until the last minute decays enough: 49 s to the boundary + 1.2 s of decay
    assert counters.hit("key_a", 50, now=NOW + 1) == (False, 0, 51)
    assert counters.hit("key_b", 50, now=NOW)[0] is True              # other keys unaffected
    counters.close()


def test_spend_adds_up_across_processes(tmp_path):
    path = tmp_path / "counters.bin"
    _run(_spend, lambda start: (path, "key_s", start, 250))
    counters = SharedCounters(path)
    assert counters.spend_today("key_s", now=NOW) == pytest.approx(1.0)
    assert counters.spend_today("key_s", now=NOW + 86400) == 0.0       # a new UTC day
    counters.add_spend("key_s", 0.25, now=NOW + 86400)
    assert counters.spend_today("key_s", now=NOW + 86400) == pytest.approx(0.25)
    assert counters.spend_today("unknown") == 0.0
    counters.close()


def test_sliding_window_and_reset(tmp_path):
    counters = SharedCounters(tmp_path / "c.bin")
    results = [counters.hit("k", 3, now=NOW) for _ in range(4)]
    assert [r[:2] for r in results] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    assert results[0][2] == 50                        # seconds to the end of this minute
    # 30 s into the next minute the 3 old requests weigh 1.5: one more fits, not two
    assert counters.hit("k", 3, now=NOW + 80)[0] is True
    allowed, _, retry = counters.hit("k", 3, now=NOW + 80)
    assert not allowed and 1 <= retry <= 20
    assert counters.hit("k", 3, now=NOW + 80 + retry)[0] is True
    # two idle minutes later the window is empty
    assert counters.hit("k", 3, now=NOW + 300)[:2] == (True, 2)
    counters.close()


def test_concurrency_acquire_release(tmp_path):
    path = tmp_path / "c.bin"
    one, two = SharedCounters(path), SharedCounters(path)      # two workers
    assert one.acquire("k", 2) and two.acquire("k", 2)
    assert not one.acquire("k", 2)
    assert one.in_flight("k") == 2
    two.release("k")
    assert one.acquire("k", 2)
    one.close()                                        # graceful exit gives its slots back
    assert two.in_flight("k") == 0
    two.release("k")                                   # releasing more than held is a no-op
    assert two.in_flight("k") == 0
    assert two.acquire("k", 1)
    two.reset_concurrency()
    assert two.in_flight("k") == 0
    two.close()


def test_slots_persist_and_full_table_fails_open(tmp_path):
    path = tmp_path / "c.bin"
    small = SharedCounters(path, slots=4)
    for i in range(4):
        assert small.hit(f"k{i}", 1, now=NOW)[0]
    assert small.hit("k5", 1, now=NOW) == (True, 1, 60)
    small.close()
    reopened = SharedCounters(path, slots=4096)        # the file's size wins
    assert reopened.slots == 4
    assert reopened.hit("k0", 1, now=NOW)[0] is False
    reopened.close()


def test_deferred_spend_counts_here_at_once_and_elsewhere_after_a_flush(tmp_path):
    here, there = SharedCounters(tmp_path / "c.bin"), SharedCounters(tmp_path / "c.bin")
    here.defer_spend("key_d", 0.5, NOW)
    assert here.spend_today("key_d", now=NOW) == pytest.approx(0.5)
    assert there.spend_today("key_d", now=NOW) == 0.0
    here.flush_spend()
    assert there.spend_today("key_d", now=NOW) == pytest.approx(0.5)
    here.defer_spend("key_d", 0.25, NOW)
    here.close()                                   # close flushes what is pending
    assert there.spend_today("key_d", now=NOW) == pytest.approx(0.75)
    there.close()


def test_a_key_far_from_its_limit_is_counted_in_leases(tmp_path):
    """One locked update counts LEASE requests at once; the other process sees them all."""
    here, there = SharedCounters(tmp_path / "c.bin"), SharedCounters(tmp_path / "c.bin")
    limit = 1_000_000
    assert here.hit("key_l", limit, now=NOW) == (True, limit - 1, 50)
    for i in range(2, LEASE + 1):                 # served from the lease
        assert here.hit("key_l", limit, now=NOW) == (True, limit - i, 50)
    assert there.hit("key_l", limit, now=NOW) == (True, limit - LEASE - 1, 50)
    assert here.hit("key_l", limit, now=NOW)[1] == limit - 2 * LEASE - 1   # a new lease
    here.close()
    there.close()


def test_leases_never_let_workers_pass_the_limit_together(tmp_path):
    path = tmp_path / "counters.bin"
    limit = LEASE_FROM + 512        # leases at the start, one by one for the last 2,048
    total, lock = CTX.Value("i", 0), CTX.Lock()
    _run(_hammer, lambda start: (path, "key_m", limit, NOW, limit, start, total, lock))
    assert limit - 4 * LEASE <= total.value <= limit     # unused lease ends count, never extra
