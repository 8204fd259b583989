"""`modelway migrate --from-sqlite DATA_DIR`: a one-VM install's managed keys, ledger rows and
daily rollups move into PostgreSQL, idempotently; afterwards the shared stores answer what the
embedded ones did (the same secret authenticates, the same balance, usage and analytics)."""
from __future__ import annotations

import time

import pytest

from proxy.state.pg_keys import PostgresKeyStore
from proxy.state.pg_ledger import PostgresLedger
from proxy.store.db import Database
from proxy.store.keys import KeyStore, hash_secret
from proxy.store.ledger import LedgerWriter
from tests.cli.procs import modelway
from tests.shared.pgdb import engines, pg_url, postgres_server  # noqa: F401  (fixtures)
from tests.shared.test_pg_ledger import _same, request_row

DAY = 86400.0


async def _populate(data_dir) -> tuple[dict, str, float]:
    """Keys and ledger rows written by the embedded stores, old ones folded into rollups."""
    db = Database(data_dir)
    keys, ledger = KeyStore(db), LedgerWriter(db, retention_days=2)
    try:
        await keys.start()
        record, secret = await keys.acreate("paid", balance=5.0, allowed_models=["m*"])
        await keys.acreate("revoked-later")
        now = time.time()
        for i in range(120):
            ledger.record(request_row(i, record["id"] if i % 3 else "key_static", cost=0.01,
                                      created_at=now - (i % 6) * DAY))
        await ledger.flush()
        assert await ledger.pruner.run_once(now) > 0
        return record, secret, now
    finally:
        await keys.close()
        await ledger.close()
        db.close()


async def test_migrate_from_sqlite_moves_keys_ledger_and_rollups_once(tmp_path, engines, pg_url):  # noqa: F811
    data = tmp_path / "var"
    data.mkdir()
    record, secret, now = await _populate(data)
    (tmp_path / "routes.yaml").write_text(
        "providers: {mock: {type: mock}}\nmodels: {mock-echo: {targets: [{provider: mock}]}}\n"
        f'state: {{database: "{pg_url}"}}\n')
    outputs = []
    for _ in range(2):
        r = modelway("migrate", "--config", str(tmp_path / "routes.yaml"), "--from-sqlite", str(data))
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout)
    assert "copied 2 of 2 keys" in outputs[0] and "copied 0 of 2 keys (2 already there)" in outputs[1]
    rows_line = [line for line in outputs[0].splitlines() if "ledger rows" in line][0]
    moved = int(rows_line.split("copied ")[1].split(" of")[0])
    assert 0 < moved < 120 and f"copied 0 of {moved} ledger rows" in outputs[1]
    assert "daily rollups" in outputs[0] and "copied 0 of" in outputs[1].split("daily rollups")[0].splitlines()[-1]

    engine = await engines()
    keys = PostgresKeyStore(engine)
    await keys.start()
    shared = PostgresLedger(engine, Database(tmp_path / "var"))
    db = Database(data)
    embedded = LedgerWriter(db)
    try:
        found = await keys.fetch(hash_secret(secret))      # the same secret works
        assert found["id"] == record["id"] and found["allowed_models"] == ["m*"]
        for key in (record["id"], "key_static", None):
            _same([await shared.balance(key, now)], [await embedded.balance(key, now)])
        same_balance = (await embedded.balance(record["id"], now))["balance"]
        assert (await shared.balance(record["id"], now))["balance"] == same_balance
        assert same_balance == pytest.approx(5.0 - 80 * 0.01)
        for group in ("day", "model", "key"):
            _same(await shared.analytics(None, group), await embedded.analytics(None, group))
    finally:
        await keys.close()
        await shared.close()
        await embedded.close()
        db.close()
