"""Run `modelway` as a user does: a separate process, on 127.0.0.1, no provider keys."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import orjson

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "routes.yaml"
KEY_VARS = ("OPENAI_API_KEY", "GROQ_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in KEY_VARS and k not in ("NOTIFY_SOCKET", "MODELWAY_CONFIG")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def modelway(*args: str, env: dict | None = None, cwd=None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True,
                          env=env or clean_env(), cwd=cwd or ROOT, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`modelway serve ...` in the background; its stdout (JSON log lines) goes to a file."""

    def __init__(self, tmp_path: pathlib.Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "stdout.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env or clean_env(),
                                     cwd=tmp_path)

    def lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
        return out

    def events(self, name: str) -> list[dict]:
        return [e for e in self.lines() if e.get("event") == name]

    def wait_for(self, predicate, timeout: float = 20, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"modelway exited with {self.proc.returncode} waiting for {what}:\n"
                                     + self.log_path.read_text(errors="replace"))
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + self.log_path.read_text(errors="replace"))

    def wait_listening(self, workers: int = 1) -> None:
        self.wait_for(lambda: len(self.events("listening")) >= workers, what=f"{workers} listening line(s)")

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:       # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False
    return True
