"""systemd `Type=notify`: READY=1 once listening, RELOADING=1 (with MONOTONIC_USEC) then READY=1
around a SIGHUP reload, STOPPING=1 on SIGTERM — datagrams on the unix socket named by
NOTIFY_SOCKET, which the test binds as systemd would."""
from __future__ import annotations

import signal
import socket
import tempfile

import pytest

from tests.ops.conftest import clean_env, eventually, wait_exit

CONFIG = """\
server: {data_dir: ./var}
middlewares: [access_log]
providers:
  mock: {type: mock}
models:
  mock-echo: {targets: [{provider: mock}]}
"""


@pytest.fixture
def notify_socket():
    with tempfile.TemporaryDirectory(prefix="mw-") as d:      # short: sun_path holds 108 bytes
        path = f"{d}/notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        messages: list[str] = []

        def received() -> list[str]:
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except BlockingIOError:
                    return messages

        received.path = path
        yield received
        sock.close()


def has(messages: list[str], field: str, after: int = 0) -> int | None:
    """Index of the first message at or after `after` that carries the line `field`."""
    for i, m in enumerate(messages[after:], after):
        if field in m.split("\n"):
            return i
    return None


async def wait_message(received, field: str, after: int, server) -> int:
    found = await eventually(lambda: [i for i in [has(received(), field, after)] if i is not None], 15, field, server)
    return found[0]


@pytest.mark.parametrize("workers", [1, 2])
async def test_ready_reloading_and_stopping_reach_notify_socket(start_server, notify_socket, workers):
    server = await start_server(CONFIG, "--workers", str(workers), env=clean_env(NOTIFY_SOCKET=notify_socket.path),
                                workers=workers)
    ready = await wait_message(notify_socket, "READY=1", 0, server)
    if workers > 1:      # the supervisor speaks for its workers and names itself as the main pid
        assert f"MAINPID={server.proc.pid}" in notify_socket()[ready].split("\n")
    server.proc.send_signal(signal.SIGHUP)
    reloading = await wait_message(notify_socket, "RELOADING=1", ready + 1, server)
    assert any(line.startswith("MONOTONIC_USEC=") for line in notify_socket()[reloading].split("\n"))
    await wait_message(notify_socket, "READY=1", reloading + 1, server)
    server.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(server, 15) == 0
    assert has(notify_socket(), "STOPPING=1", reloading + 1) is not None, notify_socket()
    server.close()
