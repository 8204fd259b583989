"""Throwaway Redis and PostgreSQL servers on loopback ports, for the shared-state tests.

Each is a real server from Debian's packages (`redis-server`, `postgresql`; `.ci/run` installs
them), started in a temp dir on a free 127.0.0.1 port and removed afterwards. A test that needs
an engine to die and come back calls `stop()` and `start()`: the data directory and port stay.
Without the binaries the fixtures skip locally, but fail under CI (`CI=true`): nothing that
needs an engine is skipped in CI.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; .ci/run installs it from Debian's packages")
    pytest.skip(f"{what} is not installed (apt-get install {what})")


class RedisServer:
    def __init__(self, root: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.dir = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self, kill: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class PostgresServer:
    """One cluster owned by the `postgres` system user when run as root (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        versions = sorted(PG_BIN.glob("*/bin/postgres")) if PG_BIN.exists() else []
        self.bin = versions[-1].parent if versions else None
        self.dir = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://modelway@127.0.0.1:{self.port}/modelway"
        self.proc: subprocess.Popen | None = None
        self.user = "postgres" if os.geteuid() == 0 else None
        root.chmod(0o755)
        if self.user:
            os.chown(root, pwd.getpwnam(self.user).pw_uid, -1)

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.user, "--"] if self.user else []) + list(args)

    def init(self) -> None:
        subprocess.run(self._cmd(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "modelway",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._cmd(str(self.bin / "postgres"), "-D", str(self.dir), "-p", str(self.port),
                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                      "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        for _ in range(100):   # the port opens before the cluster accepts queries
            ok = subprocess.run(self._cmd(str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)),
                                capture_output=True).returncode == 0
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready")

    def create_db(self, name: str = "modelway") -> None:
        subprocess.run(self._cmd(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", "modelway", name), check=True, capture_output=True)

    def stop(self, kill: bool = True) -> None:
        """kill: an immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next
        start), as when the server dies; else a fast clean one (SIGINT)."""
        if self.proc and self.proc.poll() is None:
            pid = int((self.dir / "postmaster.pid").read_text().split()[0])   # not runuser's pid
            os.kill(pid, signal.SIGQUIT if kill else signal.SIGINT)
            self.proc.wait(20)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server():
    if not shutil.which("redis-server"):
        missing("redis-server")
    with tempfile.TemporaryDirectory(prefix="mw-redis-") as root:
        server = RedisServer(Path(root))
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="mw-pg-")))
    if server.bin is None:
        missing("postgresql")
    try:
        server.init()
        server.start()
        server.create_db()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir.parent, ignore_errors=True)
