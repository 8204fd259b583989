"""`state:` in routes.yaml: checked strictly by `modelway check` (file:line, no password echoed),
which also says what a node shares; `modelway migrate` creates and upgrades the schema."""
from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from proxy.state.schema import VERSION
from tests.cli.procs import clean_env, modelway
from tests.engines import postgres_server  # noqa: F401  (session fixture)

BASE = """providers: {mock: {type: mock}}
models: {mock-echo: {targets: [{provider: mock}]}}
"""


def check(tmp_path, state: str, **env: str):
    path = tmp_path / "routes.yaml"
    path.write_text(BASE + state)
    return path, modelway("check", "--config", str(path), env=clean_env(**env))


def test_without_state_a_node_keeps_everything_embedded(tmp_path):
    _, r = check(tmp_path, "")
    assert r.returncode == 0, r.stderr
    assert "embedded (this node's data_dir): limits, spend, concurrency, cooldowns, response cache, keys, " \
           "ledger, stored responses" in r.stdout
    assert "shared:" not in r.stdout


def test_check_says_what_is_shared_and_masks_the_password(tmp_path):
    _, r = check(tmp_path, 'state:\n  redis: "rediss://:${REDIS_PW}@10.0.0.5:6380/2"\n'
                           '  database: "postgresql://modelway:${PGPASSWORD}@10.0.0.6:5432/modelway?sslmode=verify-full"\n',
                 PGPASSWORD="pg-s3cret", REDIS_PW="redis-s3cret")
    assert r.returncode == 0, r.stderr
    assert "shared: limits, spend, concurrency, cooldowns, response cache, change events via Redis " \
           "(rediss://:***@10.0.0.5:6380/2)" in r.stdout
    assert "shared: keys, ledger, stored responses via PostgreSQL " \
           "(postgresql://modelway:***@10.0.0.6:5432/modelway?sslmode=verify-full)" in r.stdout
    assert "embedded (this node's data_dir)" not in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


def test_each_engine_is_optional(tmp_path):
    _, r = check(tmp_path, 'state: {database: "postgresql://u@db/modelway"}\n')
    assert r.returncode == 0, r.stderr
    assert "via Redis" not in r.stdout and "shared: keys, ledger, stored responses via PostgreSQL" in r.stdout
    assert "cooldowns" in r.stdout.split("embedded")[1]
    _, r = check(tmp_path, 'state: {redis: "${REDIS_URL:-}", database: "${DATABASE_URL:-}"}\n')
    assert r.returncode == 0 and "shared:" not in r.stdout       # empty values leave an engine off


@pytest.mark.parametrize("state, problem", [
    ('state: {redis: "http://127.0.0.1:6379"}', "state.redis: must start with redis:// or rediss://, got http://"),
    ('state: {redis: "redis://127.0.0.1:6379/zero"}', "state.redis: the path must be a database number"),
    ('state: {redis: "redis://:6379/0"}', "state.redis: needs a host"),
    ('state: {redis: "redis://h:99999/0"}', "state.redis: is not a valid URL"),
    ('state: {redis: "redis://h/0?ssl_cert_reqs=none"}', "state.redis: URL parameter 'ssl_cert_reqs' needs a rediss:// (TLS) URL"),
    ('state: {database: "mysql://u:pw@h/db"}', "state.database: must start with postgresql:// or postgres://"),
    ('state: {database: "postgresql://u@h"}', "state.database: needs the database name as its path"),
    ('state: {database: "postgresql://u@h/db?sslmode=sometimes"}', "state.database: sslmode must be one of disable, allow"),
    ('state: {database: "postgresql://u@h/db?pool=9"}', "state.database: unknown URL parameter 'pool'"),
    ('state: {database: "postgresql://u:${NOPE_PW}@h/db"}', "state.database: environment variable NOPE_PW is not set"),
    ('state: {redis_timeout_ms: 0}', "state.redis_timeout_ms: must be a number > 0"),
    ('state: {lease_seconds: -1}', "state.lease_seconds: must be a number > 0"),
    ('state: {databse: "postgresql://u@h/db"}', "state.databse: unknown field 'databse' (did you mean 'database'?)"),
])
def test_a_bad_state_section_is_named_with_its_line(tmp_path, state, problem):
    path, r = check(tmp_path, "\n" + state.replace("pw@", "hunter2@") + "\n")
    assert r.returncode == 1
    assert f"{path}:4: {problem}" in r.stderr, r.stderr
    assert "hunter2" not in r.stderr


def test_migrate_without_a_database_says_so(tmp_path):
    path, _ = check(tmp_path, "")
    r = modelway("migrate", "--config", str(path))
    assert r.returncode == 2 and "no state.database" in r.stderr


async def test_migrate_creates_the_schema_once_and_copies_stored_responses(tmp_path, postgres_server):  # noqa: F811
    db = "migrate_test"
    postgres_server.create_db(db)
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + db
    path, _ = check(tmp_path, f'state: {{database: "{url}"}}\n')
    r = modelway("migrate", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert f"schema at version {VERSION} (upgraded from version 0)" in r.stdout
    r = modelway("migrate", "--config", str(path))
    assert f"schema at version {VERSION} (already current)" in r.stdout
    # a one-VM data_dir's stored responses move over (run twice: nothing doubles)
    data = tmp_path / "var"
    data.mkdir()
    lite = sqlite3.connect(data / "modelway.db")
    lite.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL, "
                 "expires_at REAL NOT NULL, previous_id TEXT, response BLOB NOT NULL, input BLOB NOT NULL)")
    lite.execute("INSERT INTO responses VALUES ('resp_1', 'static:a', 1, 4e9, NULL, ?, ?)",
                 (b'{"id": "resp_1"}', b"[]"))
    lite.commit()
    lite.close()
    for expected in ("copied 1 of 1 stored responses", "copied 0 of 1 stored responses (1 already there)"):
        r = modelway("migrate", "--config", str(path), "--from-sqlite", str(data))
        assert r.returncode == 0, r.stderr
        assert expected in r.stdout
        assert "copied 0 of 0 keys" in r.stdout          # this file has none
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT max(version) FROM modelway_schema") == VERSION
        assert await conn.fetchval("SELECT owner FROM responses WHERE id = 'resp_1'") == "static:a"
    finally:
        await conn.close()


def test_migrate_names_an_unreachable_database_without_its_password(tmp_path):
    path, _ = check(tmp_path, 'state: {database: "postgresql://u:hunter2@127.0.0.1:1/db"}\n')
    r = modelway("migrate", "--config", str(path))
    assert r.returncode == 1
    assert "postgresql://u:***@127.0.0.1:1/db" in r.stderr and "hunter2" not in r.stderr
