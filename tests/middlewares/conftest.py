"""Fixtures of the middleware tests (helpers in tests/middlewares/helpers.py)."""
from __future__ import annotations

import pytest

from tests.fakes.openai_upstream import start
from tests.middlewares.helpers import MeteredUpstream, routes


@pytest.fixture
async def upstream():
    """The fake OpenAI upstream (with the `metered` model) on 127.0.0.1."""
    fake = MeteredUpstream()
    runner, url = await start(fake)
    fake.url = url
    yield fake
    await runner.cleanup()


@pytest.fixture
def data_dir(tmp_path):
    """Where make_gateway puts SQLite, diskcache, counters and metrics (server.data_dir)."""
    return tmp_path / "var"




@pytest.fixture
async def gw(upstream, make_gateway):
    """The default chain (access_log, auth, ratelimit, presets, cache, accounting) over the fake
    upstream and the mock provider, keys APP/OTHER and management key OPS."""
    return await make_gateway(routes(upstream.url))
