"""`modelway keys` and `modelway usage` on a node configured with `state.database`: they work on
the shared PostgreSQL store (a running node's copy hears of a change at once), and a database
that cannot be reached is named without its password."""
from __future__ import annotations

import asyncio

import orjson

from proxy.state.pg_keys import PostgresKeyStore
from proxy.state.pg_ledger import write_rows
from proxy.store.keys import hash_secret
from tests.cli.procs import modelway
from tests.shared.pgdb import engines, pg_url, postgres_server, within  # noqa: F401  (fixtures)
from tests.shared.test_pg_ledger import request_row

BASE = "providers: {mock: {type: mock}}\nmodels: {mock-echo: {targets: [{provider: mock}]}}\n"


def _config(tmp_path, url: str):
    path = tmp_path / "routes.yaml"
    path.write_text(BASE + f'server: {{data_dir: "{tmp_path / "var"}"}}\nstate: {{database: "{url}"}}\n')
    return str(path)


async def _cli(*args: str):
    return await asyncio.to_thread(modelway, *args)


async def test_keys_and_usage_commands_use_the_shared_database(tmp_path, engines, pg_url):  # noqa: F811
    config = _config(tmp_path, pg_url)
    node = PostgresKeyStore(await engines())
    await node.start()
    try:
        await asyncio.wait_for(node.listening.wait(), 5)
        r = await _cli("keys", "create", "--label", "ci", "--balance", "2", "--config", config)
        assert r.returncode == 0, r.stderr
        created = orjson.loads(r.stdout)
        digest = hash_secret(created["key"])
        await within(1.0, lambda: node.lookup(digest) is not None)      # the running node's copy
        r = await _cli("keys", "update", created["id"], "--disable", "--config", config)
        assert r.returncode == 0 and orjson.loads(r.stdout)["disabled"] is True
        await within(1.0, lambda: node.lookup(digest)["disabled"] is True)
        r = await _cli("keys", "list", "--config", config)
        assert created["id"] in r.stdout and "disabled=True" in r.stdout

        await node.engine.call(write_rows, ["u1", "u2"], [request_row(1, created["id"], cost=0.5),
                                                          request_row(2, created["id"], cost=0.25)])
        r = await _cli("usage", "--by", "key", "--format", "json", "--config", config)
        assert r.returncode == 0, r.stderr
        (row,) = orjson.loads(r.stdout)
        assert row["key_id"] == created["id"] and row["requests"] == 2 and row["cost"] == 0.75

        r = await _cli("keys", "revoke", created["id"], "--config", config)
        assert r.returncode == 0
        await within(1.0, lambda: node.lookup(digest) is None)
        r = await _cli("keys", "revoke", created["id"], "--config", config)
        assert r.returncode == 1 and "no key" in r.stderr
    finally:
        await node.close()


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    config = _config(tmp_path, "postgresql://u:hunter2@127.0.0.1:1/db")
    for args in (("keys", "list"), ("usage",)):
        r = modelway(*args, "--config", config)
        assert r.returncode == 1
        assert "postgresql://u:***@127.0.0.1:1/db" in r.stderr and "hunter2" not in r.stderr + r.stdout
        assert "Traceback" not in r.stderr
