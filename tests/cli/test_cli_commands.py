"""`modelway check` and `modelway routes`, run as a user runs them (a process), and in-process
through `proxy.cli.main` where only the output matters."""
from __future__ import annotations

import orjson
import pytest

from proxy.cli import main
from tests.cli.procs import BUNDLED, KEY_VARS, modelway


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*argv, **env) -> (exit code, stdout, stderr), in-process, provider keys unset."""
    def run(*argv: str, **env: str):
        for var in KEY_VARS:
            monkeypatch.delenv(var, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def typo_copy(tmp_path, old: str, new: str):
    text = BUNDLED.read_text()
    assert old in text, f"the bundled routes.yaml no longer contains {old!r}"
    path = tmp_path / "routes.yaml"
    path.write_text(text.replace(old, new, 1))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if new in ln)
    return path, line


def test_check_accepts_the_bundled_routes_yaml_with_no_keys():
    r = modelway("check", "--config", str(BUNDLED))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "OPENAI_API_KEY" in r.stdout        # the disabled provider is a warning, not an error


def test_check_reports_a_typo_with_file_line_and_path(tmp_path):
    path, line = typo_copy(tmp_path, "context_length: 32768", "context_lenght: 32768")
    r = modelway("check", "--config", str(path))
    assert r.returncode == 1
    assert f"{path}:{line}: models.mock-echo.context_lenght: unknown field 'context_lenght'" in r.stderr
    assert "did you mean 'context_length'" in r.stderr


def test_check_reports_every_problem(tmp_path, cli):
    path, line1 = typo_copy(tmp_path, "workers: 1", "workers: one")
    text = path.read_text().replace("targets: [{provider: mock}]", "targets: [{provider: mokc}]", 1)
    path.write_text(text)
    line2 = next(i for i, ln in enumerate(text.splitlines(), 1) if "mokc" in ln)
    code, _, err = cli("check", "--config", str(path))
    assert code == 1
    assert f"{path}:{line1}: server.workers: must be an int" in err
    assert f"{path}:{line2}: models.mock-echo.targets[0].provider: unknown provider 'mokc'" in err


def test_check_missing_file_is_an_error(tmp_path, cli):
    code, _, err = cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert code not in (0, None) and "not found" in err


def test_check_a_directory_is_a_one_line_error():
    r = modelway("check", "--config", str(BUNDLED.parent))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"modelway: cannot read config file {BUNDLED.parent}: Is a directory\n"


def test_check_refuses_duplicate_keys_negative_limits_and_a_preset_with_no_route(tmp_path, cli):
    path, cache_line = typo_copy(tmp_path, "ttl: 3600", "ttl: -1")
    text = path.read_text().replace("model: mock-echo", "model: nope", 1)
    sha = "ab" * 32
    text += (f"keys:\n  - {{label: web, sha256: {sha}, minute_limit: -5}}\n"
             f"  - {{label: batch, sha256: {sha}}}\n"
             f"management_keys:\n  - {{label: ops, sha256: {sha}}}\n")
    path.write_text(text)
    line = {word: next(i for i, ln in enumerate(text.splitlines(), 1) if word in ln and "#" not in ln)
            for word in ("model: nope", "label: web,", "label: batch,", "label: ops,")}
    code, out, err = cli("check", "--config", str(path))
    assert code == 1 and "OK" not in out
    assert err.splitlines() == [
        f"modelway: {path} has 5 problem(s):",
        f"  {path}:{cache_line}: cache.ttl: must be a number > 0, got int -1",
        f"  {path}:{line['model: nope']}: presets.support-bot.model: preset 'support-bot' names model 'nope', "
        "which no route matches; use a name under models: or 'any'",
        f"  {path}:{line['label: web,']}: keys[0].minute_limit: must be an int >= 1, got int -5",
        f"  {path}:{line['label: batch,']}: keys[1].sha256: duplicate key: 'batch' has the same sha256 as 'web' "
        "(keys[0]); list each key once",
        f"  {path}:{line['label: ops,']}: management_keys[0].sha256: duplicate key: 'ops' has the same sha256 as "
        "'web' (keys[0]); list each key once"]


def test_check_warns_about_preset_keys_naming_no_key_in_the_file(tmp_path, cli):
    path = tmp_path / "routes.yaml"
    path.write_text(BUNDLED.read_text().replace("model: mock-echo", "model: mock-echo\n    keys: [web-app]", 1))
    code, out, err = cli("check", "--config", str(path))
    assert code == 0, err
    assert "warning: preset 'support-bot': keys entry 'web-app' names no key in routes.yaml" in out
    assert "OK" in out


def test_check_names_a_middleware_that_cannot_be_imported(tmp_path, cli):
    path, _ = typo_copy(tmp_path, "middlewares: [access_log", "middlewares: ['nope.nothing:factory', access_log")
    code, _, err = cli("check", "--config", str(path))
    assert code == 1 and "nope.nothing:factory" in err


def test_routes_lists_models_providers_and_key_status():
    r = modelway("routes", "--config", str(BUNDLED))
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert all(ln == ln.rstrip() for ln in rows), "trailing blanks in the table"
    assert header.split()[:3] == ["MODEL", "STRATEGY", "PROVIDER"] and "STATUS" in header
    by_model = {row.split()[0]: row for row in rows}
    assert {"mock-echo", "gpt-4o-mini", "openai/*"} <= set(by_model)
    assert "no key needed" in by_model["mock-echo"]
    assert "disabled: environment variable OPENAI_API_KEY is not set" in by_model["gpt-4o-mini"]
    assert "<rest of name>" in by_model["openai/*"]


def test_routes_shows_a_set_key_without_printing_it(cli):
    secret = "sk-test-routes-0123456789"
    code, out, err = cli("routes", "--config", str(BUNDLED), "--format", "json", OPENAI_API_KEY=secret)
    assert code == 0, err
    assert secret not in out + err
    rows = {row["model"]: row for row in orjson.loads(out)}
    assert rows["gpt-4o-mini"]["status"] == "key set (OPENAI_API_KEY)"
    assert rows["gpt-4o-mini"]["provider"] == "openai" and rows["gpt-4o-mini"]["input_per_1m"] == 0.15
    assert rows["mock-echo"]["type"] == "mock"


def test_version_flag_prints_the_installed_version():
    from importlib.metadata import version
    r = modelway("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"modelway {version('modelway')}"


def test_bare_modelway_prints_its_help_not_an_error():
    r = modelway()
    assert r.returncode == 0, r.stderr
    assert "usage: modelway" in r.stdout
    for command in ("serve", "check", "routes", "keys", "usage"):
        assert command in r.stdout


def test_keys_create_warns_when_auth_is_off(cli, tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(BUNDLED.read_text().replace("data_dir: ./var", f"data_dir: {tmp_path / 'var'}"))
    assert "auth: {mode: none}" in path.read_text(), "the bundled routes.yaml no longer turns auth off"
    code, out, err = cli("keys", "create", "--label", "x", "--config", str(path))
    assert code == 0, err
    assert "auth is off" in err and "not enforced" in err
