"""`--workers N`: N worker processes sharing one port (SO_REUSEPORT). The supervisor restarts
a worker that dies, forwards SIGHUP and SIGTERM, and speaks sd_notify for all of them."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import structlog

from proxy.server import sd_notify

log = structlog.get_logger("modelway")


def _wait_listening(host: str, port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def supervise(argv: list[str], workers: int, host: str, port: int, drain_seconds: float,
              data_dir: str) -> int:
    from proxy.store.counters import SharedCounters
    os.makedirs(data_dir, exist_ok=True)
    counters = SharedCounters.in_dir(data_dir)
    counters.reset_concurrency()     # in-flight counts left by workers that crashed earlier
    counters.close()
    cmd = [sys.executable, "-m", "proxy.cli", *argv, "--workers", "1", "--reuse-port", "--no-notify"]
    children: dict[int, subprocess.Popen] = {}
    stopping = False

    def spawn() -> None:
        p = subprocess.Popen(cmd)
        children[p.pid] = p
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
    if _wait_listening(host, port):
        sd_notify(f"READY=1\nMAINPID={os.getpid()}")
    deadline = None
    while children:
        time.sleep(0.2)
        for pid, p in list(children.items()):
            code = p.poll()
            if code is None:
                continue
            del children[pid]
            if not stopping:
                log.error("worker_died", pid=pid, exit_code=code)
                time.sleep(0.5)
                spawn()
        if stopping:
            deadline = deadline or time.monotonic() + drain_seconds + 10
            if time.monotonic() > deadline:
                for p in children.values():
                    p.kill()
    return 0
