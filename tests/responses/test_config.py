"""`responses:` in routes.yaml: validated like every other section."""
from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config


def test_retention_days_default_and_value():
    assert parse_config("providers: {}\nmodels: {}\n").responses.retention_days == 30
    assert parse_config("responses: {retention_days: 2.5}\n").responses.retention_days == 2.5


@pytest.mark.parametrize("text,problem", [
    ("responses: {retention_days: 0}\n", "responses.retention_days"),
    ("responses: {retention_dayz: 3}\n", "unknown field 'retention_dayz'"),
])
def test_bad_values_name_the_line(text, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "routes.yaml")
    assert "routes.yaml:1" in str(err.value) and problem in str(err.value)
