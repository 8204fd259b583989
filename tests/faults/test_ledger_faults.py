"""The ledger on a full disk and with a corrupt page, through a real gateway: chat keeps
answering, /readyz turns 503 with the reason after a few seconds of failed writes, the failures
and the queue are in /metrics, the queued rows are written once the disk has room again, and
/v1/account/activity answers a 503 envelope, never a 500, when the ledger cannot be read."""
from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import time

import orjson
import pytest

from tests.faults.conftest import assert_envelope, chat
from tests.middlewares.helpers import metric, parse_prometheus


async def get(h, path: str, headers: dict | None = None):
    async with h.http.get(h.url + path, headers=headers or {}) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, orjson.loads(raw) if resp.content_type == "application/json" else raw


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs at tmp_path/var (the harness's data_dir): a disk that can really fill up."""
    mount = tmp_path / "var"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path) -> None:
    """Write zeros until the file system is full (ENOSPC)."""
    with open(path, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:     # the last partial block
            try:
                fh.write(b"\0" * 512)
            except OSError:
                return


async def test_full_disk_readyz_reports_it_rows_wait_and_land_once_there_is_room(small_disk, make_harness):
    h = await make_harness()
    await h.baseline()
    status, _, ready = await get(h, "/readyz")
    assert status == 200 and ready["ledger"] == {"writable": True, "queued": 0, "error": None}
    filler = small_disk / "filler"
    await asyncio.to_thread(fill, filler)

    ids: list[str] = []

    async def refused_as_not_ready():
        for _ in range(5):       # traffic goes on, answered: writes stay off the request path
            status, headers, body = await h.post(chat())
            assert status == 200, body
            ids.append(headers["x-request-id"])
        status, _, ready = await get(h, "/readyz")
        return ready if status == 503 else None
    first_failure = time.monotonic()
    ready = await until(refused_as_not_ready, 15, "/readyz to report the ledger")
    assert time.monotonic() - first_failure >= 2.5      # a few seconds of failures, not one hiccup
    assert ready["status"] == "not_ready" and ready["reason"].startswith("ledger cannot write: ")
    assert "full" in ready["reason"]
    assert ready["ledger"]["writable"] is False and ready["ledger"]["queued"] > 0
    m = parse_prometheus((await get(h, "/metrics"))[2].decode())
    assert metric(m, "modelway_ledger_write_failures_total") >= 2
    assert metric(m, "modelway_ledger_queue_depth") > 0
    assert metric(m, "modelway_ledger_rows_dropped_total") == 0

    os.unlink(filler)                                   # room again: the queued rows land

    async def ready_again():
        status, _, ready = await get(h, "/readyz")
        return status == 200 and ready["ledger"]["queued"] == 0
    await until(ready_again, 10, "/readyz to be ready again")
    rows = await h.rows(ids)
    assert {r["status"] for r in rows.values()} == {200}


def corrupt_ledger_pages(db_path: str) -> None:
    """Checkpoint, overwrite the ledger table's root page with garbage, then commit a change
    through another connection, as another worker would, so every reader rereads the file."""
    conn = sqlite3.connect(db_path, timeout=5)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ledger'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with open(db_path, "r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(b"\xa5" * size)
    conn = sqlite3.connect(db_path, timeout=5, isolation_level=None)
    try:
        conn.execute("UPDATE meta SET v = v + 1 WHERE k = 'keys_version'")
    finally:
        conn.close()


async def test_corrupt_ledger_page_activity_is_a_503_envelope_and_readyz_says_why(make_harness):
    h = await make_harness(extra="auth: {mode: none}")     # the account API then shows every key
    await h.baseline()
    assert (await get(h, "/v1/account/activity"))[0] == 200
    await asyncio.to_thread(corrupt_ledger_pages, h.db_path)

    status, headers, body = await get(h, "/v1/account/activity")
    err = assert_envelope(status, headers, body, 503, "api_error", "ledger_unavailable")
    assert "ledger" in err["message"]
    for path in ("/v1/account/analytics", "/v1/account/balance"):
        status, headers, body = await get(h, path)
        assert_envelope(status, headers, body, 503, "api_error", "ledger_unavailable")

    async def not_ready():
        status, _, body = await h.post(chat())
        assert status == 200, body
        status, _, ready = await get(h, "/readyz")
        return ready if status == 503 else None
    ready = await until(not_ready, 15, "/readyz to report the corrupt ledger")
    assert ready["reason"].startswith("ledger cannot write: ") and "malformed" in ready["reason"]
