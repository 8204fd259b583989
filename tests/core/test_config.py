"""routes.yaml validation: each problem names its YAML path and line; ${VAR} interpolation."""
from __future__ import annotations

import pathlib
import textwrap

import pytest

from proxy.config import ConfigError, load_config, parse_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOOD = """\
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1", api_key: "${UP_KEY}"}
  mock: {type: mock}
models:
  gpt-4o-mini: {targets: [{provider: up}]}
  mock-echo: {targets: [{provider: mock}]}
"""


def problems(text: str, env: dict | None = None) -> list[tuple[str, int, str]]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(textwrap.dedent(text), "routes.yaml", env=env or {})
    return [(p.path, p.line, p.message) for p in exc_info.value.problems]


def only_problem(text: str, env: dict | None = None) -> tuple[str, int, str]:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


def test_good_config_parses_into_frozen_objects():
    cfg = parse_config(GOOD, env={"UP_KEY": "sk-x"})
    assert set(cfg.models) == {"gpt-4o-mini", "mock-echo"}
    assert cfg.providers["up"].api_key == "sk-x"
    with pytest.raises(Exception):
        cfg.models["gpt-4o-mini"].retries = 5          # frozen dataclass
    with pytest.raises(TypeError):
        cfg.models["new"] = cfg.models["gpt-4o-mini"]  # read-only mapping


def test_unknown_field_names_path_and_line_with_a_suggestion():
    path, line, msg = only_problem(GOOD + "  broken:\n    targets: [{provider: mock}]\n    pricng: {input: 1}\n")
    assert (path, line) == ("models.broken.pricng", 9)
    assert "unknown field 'pricng'" in msg and "pricing" in msg


def test_unknown_top_level_field():
    path, line, msg = only_problem("modles: {}\n" + GOOD)
    assert (path, line) == ("modles", 1)
    assert "models" in msg


def test_wrong_type_names_path_and_line():
    path, line, msg = only_problem("server:\n  port: eighty\n" + GOOD)
    assert (path, line) == ("server.port", 2)
    assert "int" in msg and "eighty" in msg


def test_wrong_type_deep_in_a_target():
    path, line, msg = only_problem(GOOD + "  w: {targets: [{provider: mock, weight: heavy}]}\n")
    assert (path, line) == ("models.w.targets[0].weight", 7)
    assert "number" in msg


def test_unknown_provider_in_a_target():
    path, line, msg = only_problem(GOOD + "  typo:\n    targets:\n      - {provider: mokc}\n")
    assert (path, line) == ("models.typo.targets[0].provider", 9)
    assert "unknown provider 'mokc'" in msg and "mock" in msg


def test_duplicate_model_key():
    path, line, msg = only_problem(GOOD + "  mock-echo: {targets: [{provider: mock}]}\n")
    assert (path, line) == ("models.mock-echo", 7)
    assert "duplicate" in msg


def test_bad_sha256_in_keys():
    path, line, msg = only_problem(GOOD + "keys:\n  - {label: web, sha256: sk-live-plaintext-key}\n")
    assert (path, line) == ("keys[0].sha256", 8)
    assert "sha256" in msg
    good = GOOD + "keys:\n  - {label: web, sha256: %s}\n" % ("ab" * 32)
    assert parse_config(good, env={}).keys[0].label == "web"


def test_unknown_middleware():
    path, line, msg = only_problem("middlewares:\n  - access_log\n  - acces_log\n" + GOOD)
    assert (path, line) == ("middlewares[1]", 3)
    assert "unknown middleware 'acces_log'" in msg


def test_unknown_provider_type_and_wildcard_shape():
    path, line, msg = only_problem(GOOD + '  "open*ai": {targets: [{provider: mock}]}\n')
    assert (path, line) == ("models.open*ai", 7)
    assert "'/*'" in msg
    path, line, msg = only_problem(GOOD.replace("type: mock", "type: mok"))
    assert (path, line) == ("providers.mock.type", 3)
    assert "unknown provider type 'mok'" in msg


def test_all_problems_are_reported_at_once_in_line_order():
    text = "server: {port: x}\nmiddlewares: [nope]\n" + GOOD + "  bad: {targets: [{provider: nowhere}]}\n"
    found = problems(text)
    assert [(p, ln) for p, ln, _ in found] == [("server.port", 1), ("middlewares[0]", 2),
                                               ("models.bad.targets[0].provider", 9)]
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "/etc/modelway/routes.yaml", env={})
    first = str(exc_info.value).splitlines()[0]
    assert first.startswith("/etc/modelway/routes.yaml:1: server.port: ")


def test_invalid_yaml_names_the_line():
    path, line, msg = only_problem("models:\n  a: {targets: [\n  b: 1\n")
    assert line in (2, 3, 4) and "invalid YAML" in msg


def test_env_interpolation_in_any_string_and_defaults():
    text = GOOD.replace('"http://127.0.0.1:1/v1"', '"http://${UP_HOST:-127.0.0.1}:${UP_PORT}/v1"')
    cfg = parse_config(text, env={"UP_KEY": "sk-1", "UP_PORT": "8001"})
    assert cfg.providers["up"].base_url == "http://127.0.0.1:8001/v1"
    cfg = parse_config(text, env={"UP_KEY": "sk-1", "UP_PORT": "8001", "UP_HOST": "10.0.0.2"})
    assert cfg.providers["up"].base_url == "http://10.0.0.2:8001/v1"
    path, line, msg = only_problem(text, env={"UP_KEY": "sk-1"})
    assert (path, line) == ("providers.up.base_url", 2)
    assert "UP_PORT" in msg


def test_unset_key_variable_disables_the_provider_with_a_warning_not_an_error():
    cfg = parse_config(GOOD, env={})
    up = cfg.providers["up"]
    assert up.api_key is None and up.api_key_env == "UP_KEY"
    assert "UP_KEY" in up.disabled_reason
    assert any("UP_KEY" in w for w in cfg.warnings)


def test_bundled_routes_yaml_is_valid_with_no_keys():
    cfg = load_config(str(ROOT / "routes.yaml"), env={})
    assert any(name.startswith("mock-") for name in cfg.models)
    assert all(pc.disabled_reason for pc in cfg.providers.values() if pc.type == "openai" and pc.api_key_env)
    assert [m.name for m in cfg.middlewares][:1] == ["access_log"]


SHA_A, SHA_B = "ab" * 32, "cd" * 32


def test_the_same_key_twice_is_an_error_naming_both_labels():
    text = GOOD + f"keys:\n  - {{label: web, sha256: {SHA_A}}}\n  - {{label: batch, sha256: {SHA_A.upper()}}}\n"
    path, line, msg = only_problem(text)
    assert (path, line) == ("keys[1].sha256", 9)
    assert "duplicate key" in msg and "'batch'" in msg and "'web'" in msg
    text = GOOD + f"keys:\n  - {{label: web, sha256: {SHA_A}}}\n  - {{label: batch, sha256: {SHA_B}}}\n" \
                  f"management_keys:\n  - {{label: ops, sha256: {SHA_B}}}\n"
    path, line, msg = only_problem(text)
    assert (path, line) == ("management_keys[0].sha256", 11)
    assert "duplicate key" in msg and "'ops'" in msg and "'batch'" in msg and "keys[1]" in msg


def test_two_keys_with_one_label_is_an_error():
    # a static key's id is static:<label>: two keys with one label would share limits and ledger rows
    path, line, msg = only_problem(GOOD + f"keys:\n  - {{label: web, sha256: {SHA_A}}}\n  - {{label: web, sha256: {SHA_B}}}\n")
    assert (path, line) == ("keys[1].label", 9)
    assert "duplicate label 'web'" in msg and "keys[0]" in msg


@pytest.mark.parametrize("field, value, allowed", [
    ("minute_limit", "-5", "an int >= 1"), ("minute_limit", "0", "an int >= 1"),
    ("max_concurrent", "0", "an int >= 1"), ("daily_limit", "-3", "a number >= 0"),
    ("balance", "-1", "a number >= 0"), ("balance", ".nan", "a number >= 0"),
    ("daily_limit", ".inf", "a number >= 0"), ("expires_at", ".inf", "a number"),
])
def test_key_limits_out_of_range_name_the_field_and_what_is_allowed(field, value, allowed):
    path, line, msg = only_problem(GOOD + f"keys:\n  - {{label: web, sha256: {SHA_A}, {field}: {value}}}\n")
    assert (path, line) == (f"keys[0].{field}", 8)
    assert msg.startswith(f"must be {allowed}, got ")


def test_zero_money_is_a_valid_limit_and_price():
    cfg = parse_config(GOOD.replace("{provider: mock}]}", "{provider: mock}], pricing: {input: 0, output: 0}}")
                       + f"keys:\n  - {{label: web, sha256: {SHA_A}, balance: 0, daily_limit: 0, "
                         f"minute_limit: 1, max_concurrent: 1}}\n", env={})
    assert (cfg.keys[0].balance, cfg.keys[0].daily_limit, cfg.keys[0].minute_limit) == (0.0, 0.0, 1)
    assert cfg.models["mock-echo"].pricing.input == 0.0


@pytest.mark.parametrize("field", ["input", "output", "cached_input", "cache_write"])
@pytest.mark.parametrize("value", ["-1", "-.inf", ".nan", ".inf"])
def test_pricing_must_be_a_finite_number_not_below_zero(field, value):
    path, line, msg = only_problem(GOOD + f"  priced: {{targets: [{{provider: mock}}], pricing: {{{field}: {value}}}}}\n")
    assert (path, line) == (f"models.priced.pricing.{field}", 7)
    assert msg.startswith("must be a number >= 0, got ")


@pytest.mark.parametrize("field", ["ttl", "size_limit_mb"])
@pytest.mark.parametrize("value", ["-1", "0", ".nan", ".inf"])
def test_cache_ttl_and_size_must_be_positive(field, value):
    path, line, msg = only_problem(f"cache: {{enabled: true, {field}: {value}}}\n" + GOOD)
    assert (path, line) == (f"cache.{field}", 1)
    assert msg.startswith("must be a number > 0, got ")


def test_nan_and_inf_are_refused_for_any_number():
    path, line, msg = only_problem("server: {max_body_mb: .inf}\n" + GOOD)
    assert (path, line, msg) == ("server.max_body_mb", 1, "must be a number, got float inf")


WILD = GOOD + '  "up/*": {targets: [{provider: up}]}\npresets:\n'


@pytest.mark.parametrize("model", ["gpt-4o-mini", "any", "up/gpt-4.1", "mock-echo:thinking",
                                   "mock-echo:thinking:high", "up/o3:thinking:low"])
def test_a_preset_may_name_any_model_the_router_resolves(model):
    cfg = parse_config(WILD + f"  p: {{model: '{model}'}}\n", env={})
    assert cfg.presets["p"].model == model


@pytest.mark.parametrize("model, hint", [("nope", "'any'"), ("mock-ech", "did you mean 'mock-echo'"),
                                         ("up/", "did you mean 'up/*'"), ("mock-echo:thinking:max", ""),
                                         ("presets/other", "")])
def test_a_preset_naming_no_route_is_an_error(model, hint):
    path, line, msg = only_problem(WILD + f"  bot: {{model: '{model}'}}\n")
    assert (path, line) == ("presets.bot.model", 9)
    assert f"preset 'bot' names model '{model}', which no route matches" in msg and hint in msg


def test_a_preset_naming_a_broken_route_is_not_a_second_error():
    path, _, msg = only_problem(GOOD + "  broken: [{provider: up}]\npresets:\n  bot: {model: broken}\n")
    assert path == "models.broken" and "must be a mapping" in msg


def test_preset_keys_naming_no_configured_key_are_a_warning():
    cfg = parse_config(GOOD + f"keys:\n  - {{label: web, sha256: {SHA_A}}}\n"
                       f"management_keys:\n  - {{label: ops, sha256: {SHA_B}}}\n"
                       "presets:\n  bot: {model: mock-echo, keys: [web, 'static:web', ops, key_1234abcd]}\n",
                       env={"UP_KEY": "sk-x"})
    assert cfg.presets["bot"].keys == ("web", "static:web", "ops", "key_1234abcd")
    assert cfg.warnings == ("preset 'bot': keys entry 'key_1234abcd' names no key in routes.yaml "
                            "(fine if it is a managed key's label or id)",)
