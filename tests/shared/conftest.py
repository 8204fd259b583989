"""Several nodes ("VMs") sharing state: three `modelway serve` processes, each with its own
directory, routes.yaml and data_dir, sharing one Redis and one PostgreSQL (tests/engines.py)."""
from __future__ import annotations

import hashlib
import pathlib

import pytest
import redis

from tests.cli.procs import Server, clean_env
from tests.engines import postgres_server, redis_server  # noqa: F401  (session fixtures)
from tests.ops.conftest import eventually, http, readyz, write_config  # noqa: F401  (fixtures, helpers)

# redis_timeout_ms: 250, not the default 50: the test machine runs several suites at once
KEY_A, KEY_B = "sk-shared-test-a", "sk-shared-test-b"
BROKEN = "always-error"            # the mock provider fails every call to a model named like this

CONFIG = """
server: {{data_dir: ./var, drain_seconds: 2}}
providers: {{mock: {{type: mock}}}}
models:
  mock-echo: {{targets: [{{provider: mock}}]}}
  flaky:
    retries: 0
    cooldown_after: 1
    cooldown_seconds: 300
    targets: [{{provider: mock, model: {broken}}}, {{provider: mock, model: echo}}]
  flaky2:
    retries: 0
    cooldown_after: 1
    cooldown_seconds: 300
    targets: [{{provider: mock, model: {broken}-2}}, {{provider: mock, model: echo}}]
keys:
  - {{label: a, sha256: "{a}"}}
  - {{label: b, sha256: "{b}"}}
state: {{redis: "{redis}", database: "{database}", redis_timeout_ms: 250{extra}}}
"""


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def headers(key: str = KEY_A) -> dict:
    return {"Authorization": f"Bearer {key}"}


def config_text(redis_url: str, database_url: str, broken: str = BROKEN, extra: str = "") -> str:
    return CONFIG.format(redis=redis_url, database=database_url, broken=broken, a=sha(KEY_A), b=sha(KEY_B),
                         extra=extra)


class Cluster:
    def __init__(self, root: pathlib.Path, redis_url: str, database_url: str):
        self.root = root
        self.redis_url, self.database_url = redis_url, database_url
        self.nodes: list[Server] = []

    async def start(self, n: int = 3, **config) -> list[Server]:
        text = config_text(self.redis_url, self.database_url, **config)
        for i in range(n):
            home = self.root / f"vm{len(self.nodes) + 1}"
            home.mkdir()
            write_config(home / "routes.yaml", text)
            self.nodes.append(Server(home, "--config", str(home / "routes.yaml"), env=clean_env()))
        for node in self.nodes[-n:]:
            await eventually(lambda: node.events("listening"), 30, "listening", node)
        return self.nodes[-n:]

    def stop(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
async def cluster(tmp_path, redis_server, postgres_server):  # noqa: F811
    """Start nodes with `await cluster.start(3)`; Redis is emptied first (each test its own state)."""
    if redis_server.proc is None:        # a test that stopped it failed before starting it again
        redis_server.start()
    if postgres_server.proc is None:
        postgres_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    group = Cluster(tmp_path, redis_server.url, postgres_server.url)
    yield group
    group.stop()
