"""Managed keys: stored hashed, shown masked, and changes reach every process within a second."""
import asyncio
import sqlite3
import time

import pytest

from proxy.store.db import Database, db_path
from proxy.store.keys import KeyStore, hash_secret


@pytest.fixture
async def store(tmp_path):
    db = Database(tmp_path)
    keys = KeyStore(db)
    await keys.start()
    yield keys
    await keys.close()
    await db.aclose()


async def test_create_lookup_update_revoke(tmp_path, store):
    record, secret = await store.acreate("ci", allowed_models=["gpt-4o*", "claude-*"],
                                         minute_limit=60, daily_limit=5.0, balance=20.0)
    assert secret.startswith("mw-") and len(secret) > 40
    assert record["id"].startswith("key_")
    assert record["prefix"] == f"{secret[:6]}...{secret[-4:]}"
    assert record["allowed_models"] == ["gpt-4o*", "claude-*"]
    assert record["disabled"] is False and record["usage_today"] == 0.0
    assert "sha256" not in record and secret not in repr(record)

    found = store.lookup(hash_secret(secret))
    assert found["id"] == record["id"] and found["minute_limit"] == 60
    assert store.lookup(hash_secret(secret + "x")) is None

    updated = await store.aupdate(record["id"], minute_limit=10, disabled=True,
                                  allowed_models=None)
    assert updated["minute_limit"] == 10 and updated["disabled"] is True
    assert updated["allowed_models"] is None
    assert updated["updated_at"] >= record["updated_at"]
    assert store.lookup(hash_secret(secret))["disabled"] is True
    with pytest.raises(ValueError):
        await store.aupdate(record["id"], sha256="0" * 64)
    assert await store.aupdate("key_missing", label="x") is None

    assert [k["id"] for k in await store.alist()] == [record["id"]]
    assert await store.arevoke(record["id"]) is True
    assert await store.arevoke(record["id"]) is False
    assert store.lookup(hash_secret(secret)) is None
    assert await store.aget(record["id"]) is None

    with sqlite3.connect(db_path(tmp_path)) as conn:
        stored = conn.execute("SELECT count(*) FROM api_keys").fetchone()
    assert stored == (0,)


async def test_only_the_hash_is_stored(tmp_path, store):
    record, secret = await store.acreate("ops")
    with sqlite3.connect(db_path(tmp_path)) as conn:
        row = conn.execute("SELECT * FROM api_keys").fetchone()
    assert secret not in row and hash_secret(secret) in row


async def test_another_process_sees_a_revocation_within_a_second(tmp_path, store):
    other_db = Database(tmp_path)                   # a second connection, like another worker
    other = KeyStore(other_db)
    record, secret = await store.acreate("shared", minute_limit=5)
    await other.start()
    digest = hash_secret(secret)
    assert other.lookup(digest)["minute_limit"] == 5

    await store.aupdate(record["id"], minute_limit=7)
    assert await _within(1.0, lambda: other.lookup(digest)["minute_limit"] == 7)
    await store.arevoke(record["id"])
    assert await _within(1.0, lambda: other.lookup(digest) is None)

    await other.close()
    await other_db.aclose()


async def _within(seconds: float, check) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


def test_sync_methods_for_the_cli(tmp_path):
    db = Database(tmp_path)
    keys = KeyStore(db)
    record, secret = keys.create("cli", daily_limit=1.5, expires_at=2_000_000_000.0)
    assert keys.get(record["id"])["daily_limit"] == 1.5
    assert keys.update(record["id"], label="renamed")["label"] == "renamed"
    assert [k["label"] for k in keys.list()] == ["renamed"]
    keys.load()
    assert keys.lookup(hash_secret(secret))["expires_at"] == 2_000_000_000.0
    assert keys.revoke(record["id"]) is True
    assert keys.list() == []
    db.close()


async def test_balance_charged_by_another_worker_reaches_the_index(tmp_path, store):
    from proxy.store.ledger import LedgerWriter, row_values

    record, secret = await store.acreate("prepaid", balance=2.0)
    worker_db = Database(tmp_path)
    ledger = LedgerWriter(worker_db, interval=0.05)
    await ledger.start()
    ledger.record(row_values({"key_id": record["id"], "model": "m", "cost": 0.5}))
    digest = hash_secret(secret)
    assert await _within(1.0, lambda: store.lookup(digest)["balance"] == pytest.approx(1.5))
    assert store.lookup(digest)["last_used_at"] is not None
    await ledger.close()
    await worker_db.aclose()
