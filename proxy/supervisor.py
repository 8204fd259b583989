"""`--workers N`: N worker processes sharing one port (SO_REUSEPORT). The supervisor restarts
a worker that dies (first giving back the limits it held: in-flight counts and reservations in
the shared counters), forwards SIGHUP and SIGTERM, and speaks sd_notify for all of them."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import structlog

from proxy.server import sd_notify
from proxy.store.counters import SharedCounters
from proxy.store.files import private_dir

log = structlog.get_logger("modelway")
CRASH_WINDOW = 5.0       # seconds: a worker dying sooner than this after its start counts as a crash
CRASH_LOOP_LIMIT = 5     # that many in a row and the supervisor gives up (exit 1) instead of spinning


def _wait_listening(host: str, port: int, give_up, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def supervise(argv: list[str], workers: int, host: str, port: int, drain_seconds: float,
              data_dir: str) -> int:
    private_dir(data_dir)
    counters = SharedCounters.in_dir(data_dir)   # checked (rebuilt if damaged) before any worker opens it
    counters.reset_holdings()     # in-flight counts and reservations left by workers that crashed earlier
    cmd = [sys.executable, "-m", "proxy.cli", *argv, "--workers", "1", "--reuse-port", "--no-notify"]
    children: dict[int, subprocess.Popen] = {}
    started: dict[int, float] = {}
    stopping = False
    quick_deaths = 0      # workers that died right after starting, in a row: a crash loop

    def spawn() -> None:
        p = subprocess.Popen(cmd)
        children[p.pid] = p
        started[p.pid] = time.monotonic()
        log.info("worker_started", pid=p.pid)

    def forward(signum, _frame) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            sd_notify("STOPPING=1")
        elif signum == signal.SIGHUP:
            sd_notify(f"RELOADING=1\nMONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        for p in list(children.values()):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
        if signum == signal.SIGHUP:
            sd_notify("READY=1")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for _ in range(workers):
        spawn()
    if _wait_listening(host, port, give_up=lambda: stopping):
        sd_notify(f"READY=1\nMAINPID={os.getpid()}")
    deadline = None
    exit_code = 0
    while children:
        time.sleep(0.2)
        for pid, p in list(children.items()):
            code = p.poll()
            if code is None:
                continue
            del children[pid]
            counters.release_dead(pid)   # its in-flight counts and reservations (none if it exited cleanly)
            if not stopping:
                log.error("worker_died", pid=pid, exit_code=code)
                quick_deaths = quick_deaths + 1 if time.monotonic() - started.pop(pid) < CRASH_WINDOW else 0
                if quick_deaths >= CRASH_LOOP_LIMIT:
                    log.error("workers_crash_looping", deaths=quick_deaths)
                    forward(signal.SIGTERM, None)
                    exit_code = 1
                    continue
                time.sleep(0.5)
                spawn()
        if stopping:
            deadline = deadline or time.monotonic() + drain_seconds + 10
            if time.monotonic() > deadline:
                for p in children.values():
                    p.kill()
    counters.close()
    return exit_code
