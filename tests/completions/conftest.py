from tests.inbound.conftest import fake_anthropic, trio  # noqa: F401  (the same three-target gateway)
