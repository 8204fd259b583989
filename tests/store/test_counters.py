"""Shared counters: limits hold across worker processes, exactly, and never switch off."""
import multiprocessing
import os

import pytest

from proxy.store import limits
from proxy.store.counters import MAGIC, CountersFull, SharedCounters
from proxy.store.holdings import Holdings

NOW = 1_700_000_000.0 - 1_700_000_000.0 % 60 + 10     # 10 s into a minute
CTX = multiprocessing.get_context("fork")


def _hammer(path, key, limit, now, attempts, start, allowed_total, lock):
    counters = SharedCounters(path)
    start.wait()
    allowed = sum(counters.admit(key, now, limit, None)[0] is None for _ in range(attempts))
    counters.close()
    with lock:
        allowed_total.value += allowed


def _spend(path, key, start, n, reserve, budget, settled_total, lock):
    """Reserve `reserve`, settle half of it, n times, against a daily limit of `budget`."""
    counters = SharedCounters(path)
    start.wait()
    settled = 0
    for _ in range(n):
        if counters.admit(key, NOW, None, None, reserve, budget)[0] is None:
            counters.settle(key, NOW, reserve, reserve // 2, False)
            settled += reserve // 2
    counters.close()
    with lock:
        settled_total.value += settled


def _run(target, args_for, procs=4):
    start = CTX.Event()
    workers = [CTX.Process(target=target, args=args_for(start)) for _ in range(procs)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0


def test_minute_limit_holds_exactly_across_processes(tmp_path):
    path = tmp_path / "counters.bin"
    total, lock = CTX.Value("i", 0), CTX.Lock()
    _run(_hammer, lambda start: (path, "key_a", 50, NOW, 100, start, total, lock))
    assert total.value == 50
    counters = SharedCounters(path)
    code, remaining, retry_us = counters.admit("key_a", NOW + 0.5, 50, None)
    assert (code, remaining) == (limits.MINUTE, 0) and 0 < retry_us <= 1_200_000   # one every 1.2 s
    assert counters.admit("key_b", NOW, 50, None)[0] is None             # other keys unaffected
    counters.close()


def test_gcra_refusals_do_not_count_and_waits_stay_within_a_minute(tmp_path):
    counters = SharedCounters(tmp_path / "c.bin")
    got = [counters.admit("k", NOW, 3, None) for _ in range(3)]
    assert [(c, r) for c, r, _ in got] == [(None, 2), (None, 1), (None, 0)]
    assert got[-1][2] == 60_000_000                   # the whole limit is free again in 60 s
    for t in range(0, 20):                            # a client retrying every second for 20 s
        code, _, retry_us = counters.admit("k", NOW + t, 3, None)
        assert code == limits.MINUTE and 0 < retry_us <= 60_000_000
        assert abs((NOW + t) * 1e6 + retry_us - (NOW + 20) * 1e6) < 2   # always "at NOW + 20 s"
    assert counters.admit("k", NOW + 20, 3, None)[0] is None     # refusals did not push it back
    assert counters.admit("k", NOW + 20, 3, None)[0] == limits.MINUTE
    assert counters.admit("k", NOW + 200, 3, None)[:2] == (None, 2)   # idle: the whole burst again
    counters.close()


def test_reservations_keep_settled_spend_within_the_daily_limit_across_processes(tmp_path):
    path = tmp_path / "counters.bin"
    budget, reserve = 10_000, 300                     # micro-USD
    total, lock = CTX.Value("l", 0), CTX.Lock()
    _run(_spend, lambda start: (path, "key_s", start, 100, reserve, budget, total, lock))
    counters = SharedCounters(path)
    assert counters.spend_today("key_s", now=NOW) * 1e6 == pytest.approx(total.value)
    assert budget - reserve < total.value <= budget   # as much as fits, never more
    assert counters.reserved("key_s") == 0
    assert counters.admit("key_s", NOW, None, None, reserve, budget)[0] == limits.DAILY_SHORT
    assert counters.admit("key_s", NOW + 86400, None, None, reserve, budget)[0] is None   # a new UTC day
    counters.close()


def test_balance_is_seeded_by_its_stamp_and_refusals_change_nothing(tmp_path):
    counters = SharedCounters(tmp_path / "c.bin")
    assert counters.admit("k", NOW, None, None, 600, None, stamp=5, balance=1000)[0] is None
    assert counters.admit("k", NOW, None, None, 600, None, stamp=5, balance=1000)[0] == limits.BALANCE_SHORT
    counters.settle("k", NOW, 600, 400, False)       # 600 left
    assert counters.admit("k", NOW, None, None, 700, None, stamp=4, balance=9999)[0] == limits.BALANCE_SHORT
    assert counters.admit("k", NOW, None, None, 600, None, stamp=5, balance=1000)[0] is None
    counters.settle("k", NOW, 600, 600, False)       # 0 left
    assert counters.admit("k", NOW, None, None, 0, None, stamp=5, balance=1000)[0] == limits.BALANCE
    # a newer stamp (the key was topped up) re-seeds it
    assert counters.admit("k", NOW, None, None, 600, None, stamp=6, balance=700)[0] is None
    counters.close()


def test_concurrency_is_held_per_process_and_given_back(tmp_path):
    path = tmp_path / "c.bin"
    one, two = SharedCounters(path), SharedCounters(path)      # two workers
    assert one.admit("k", NOW, None, 2)[0] is None and two.admit("k", NOW, None, 2)[0] is None
    assert one.admit("k", NOW, None, 2)[0] == limits.CONCURRENCY
    two.settle("k", NOW, 0, 0, True)
    assert one.admit("k", NOW, None, 2)[0] is None
    one.close()                                        # graceful exit gives its slots back
    assert two.in_flight("k") == 0
    two.close()


def _hold_and_die(path, ready):
    counters = SharedCounters(path)
    for _ in range(3):
        assert counters.admit("k", NOW, None, 6, 250, 10_000)[0] is None
    ready.set()
    os.kill(os.getpid(), 9)


def test_a_dead_process_holdings_are_released_exactly(tmp_path):
    path = tmp_path / "c.bin"
    survivor = SharedCounters(path)
    assert survivor.admit("k", NOW, None, 6, 100, 10_000)[0] is None
    ready = CTX.Event()
    proc = CTX.Process(target=_hold_and_die, args=(path, ready))
    proc.start()
    proc.join(10)
    assert ready.is_set() and proc.exitcode == -9
    assert (survivor.in_flight("k"), survivor.reserved("k")) == (4, 850)
    supervisor = SharedCounters(path)
    assert supervisor.release_dead(proc.pid) == 1
    assert (survivor.in_flight("k"), survivor.reserved("k")) == (1, 100)   # the survivor's own stay
    assert not list((tmp_path / "counters.holds").glob(f"{proc.pid}.*"))
    supervisor.reset_holdings()
    assert (survivor.in_flight("k"), survivor.reserved("k")) == (0, 0)
    survivor.close()
    supervisor.close()


def test_a_full_table_reclaims_idle_records_then_grows_and_never_fails_open(tmp_path):
    path = tmp_path / "c.bin"
    small = SharedCounters(path, slots=4, max_segments=2, idle_seconds=60)
    for i in range(4):
        assert small.admit(f"k{i}", NOW, 1, None)[0] is None
    other = SharedCounters(path, slots=4, max_segments=2, idle_seconds=60)   # maps the one segment
    for i in range(4, 8):                            # nothing idle yet: a second segment
        assert small.admit(f"k{i}", NOW, 1, None)[0] is None
    assert small.segments == 2 and path.stat().st_size == 64 + 8 * 64
    assert other.admit("k6", NOW, 1, None)[0] == limits.MINUTE    # sees the grown table: still limited
    with pytest.raises(CountersFull):               # cannot grow further, nothing idle: refused
        small.admit("k8", NOW, 1, None)
    assert small.admit("k8", NOW + 120, 1, None)[0] is None      # 2 min later all are idle: one reclaimed
    assert other.admit("k0", NOW + 120, 1, None)[0] is None      # its record was reused: found again
    for key in ("k0", "k8"):
        assert other.admit(key, NOW + 121, 1, None)[0] == limits.MINUTE
        assert small.admit(key, NOW + 121, 1, None)[0] == limits.MINUTE
    small.close()
    other.close()


@pytest.mark.parametrize("damage", ["bad header", "truncated", "old format"])
def test_a_damaged_file_is_moved_aside_and_rebuilt(tmp_path, damage, capsys):
    path = tmp_path / "counters.bin"
    counters = SharedCounters(path)
    counters.admit("k", NOW, 1, None)
    counters.close()
    data = bytearray(path.read_bytes())
    if damage == "bad header":
        data[:8] = b"garbage!"
    elif damage == "truncated":
        data = data[:1000]
    else:
        data[:8] = b"MWCNTR01"
    path.write_bytes(bytes(data))
    rebuilt = SharedCounters(path)
    assert path.read_bytes()[:8] == MAGIC
    aside = list(tmp_path.glob("counters.bin.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)
    assert "counters_rebuilt" in capsys.readouterr().out
    assert rebuilt.admit("k", NOW, 1, None)[0] is None            # zeroed, and counting again
    assert rebuilt.admit("k", NOW, 1, None)[0] == limits.MINUTE
    rebuilt.close()


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


def test_holdings_file_lists_only_what_is_held(tmp_path):
    holds = Holdings(tmp_path / "h")
    holds.add(3, 77, 1, 500)
    holds.add(3, 0, -1, -500)
    holds.add(5000, 78, 2, 0)                      # past the first size: the file grows
    holds.close()
    assert Holdings.read(tmp_path / "h") == [(5000, 78, 2, 0)]
