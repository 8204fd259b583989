"""Third-party clients as they ship, against the gateway of tests/responses (the mock provider,
the fake OpenAI upstream as `up/<model>`, the fake Anthropic upstream as `claude`), all on
127.0.0.1. The fixtures are that directory's, imported so pytest registers them here too."""
from __future__ import annotations

import pytest

from tests.responses.conftest import KEY_A, WEATHER, anthropic_fake, client, gw  # noqa: F401  (fixtures)

MODELS = ["mock-echo", "up/smart-4o", "claude"]


@pytest.fixture
async def sdk(gw):
    """An AsyncOpenAI client of the gateway for key A, closed before the loop ends."""
    client = gw.client(api_key=KEY_A)
    yield client
    await client.close()
