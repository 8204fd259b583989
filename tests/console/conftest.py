"""Fixtures of the console tests: a gateway with the default chain (keys APP and OTHER, the
management key OPS, the mock provider) and a known set of requests already in its ledger."""
from __future__ import annotations

import pytest

from tests.console.helpers import Traffic, console_routes


@pytest.fixture
async def gw(make_gateway):
    return await make_gateway(console_routes())


@pytest.fixture
async def traffic(gw, http) -> Traffic:
    """APP: 3 answered requests and 1 failed (502 on `broken`); OTHER: 2 answered; a managed
    key with a hostile label: 1 answered. The ledger is flushed before the test reads it."""
    t = Traffic(gw, http)
    await t.run()
    return t
