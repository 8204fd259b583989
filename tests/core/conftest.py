"""Fixtures of the core gateway tests (helpers in tests/core/helpers.py)."""
from __future__ import annotations

import io

import pytest
import structlog

from proxy import logs
from tests.core.helpers import UPSTREAM_KEY, LogLines, gateway_config


@pytest.fixture
async def gw(fake_openai, make_gateway):
    """The standard gateway over the fake upstream, provider key set."""
    return await make_gateway(gateway_config(fake_openai.url), env={"UP_KEY": UPSTREAM_KEY})


@pytest.fixture
def log_lines(monkeypatch):
    """The gateway's log output during the test, through the real processor chain."""
    before = structlog.get_config()
    for name in list(vars(logs)):     # module state set by configure() (e.g. the access-line stream)
        if name.startswith("_") and not name.startswith("__"):
            monkeypatch.setattr(logs, name, getattr(logs, name))   # restored after the test
    buf = io.BytesIO()
    logs.configure("debug", stream=buf)
    # module-level loggers must not keep this buffer once the test is over
    structlog.configure(cache_logger_on_first_use=False)
    yield LogLines(buf)
    structlog.configure(**before)
