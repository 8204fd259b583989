"""`modelway keys create|list|update|revoke|hash` and `modelway usage`, run as an ops person
runs them (`python -m proxy.cli ... --config <file>`), next to a gateway serving the same
data_dir: its changes reach the gateway within a second."""
from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time

import openai
import orjson
import pytest
import yaml

from tests.cli.procs import ROOT, clean_env, modelway
from tests.middlewares.helpers import APP, OTHER, eventually, routes, wait_ledger

HI = [{"role": "user", "content": "hi"}]


async def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `modelway ...` in a thread, so the gateway in this process keeps serving meanwhile."""
    if stdin is None:
        return await asyncio.to_thread(modelway, *args)
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "proxy.cli", *args], input=stdin,
                                   capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=30)


@pytest.fixture
async def served(make_gateway, tmp_path):
    """A gateway on the mock provider; its routes.yaml (with data_dir) is the CLI's --config."""
    gw = await make_gateway(routes(None))
    gw.config_path = str(tmp_path / "routes.yaml")
    return gw


async def works(client: openai.AsyncOpenAI) -> bool:
    try:
        return bool((await client.chat.completions.create(model="mock-echo", messages=HI)).choices)
    except openai.AuthenticationError:
        return False


async def refused(client: openai.AsyncOpenAI) -> str | None:
    """The error code of a refused key, None while it is accepted."""
    try:
        await client.chat.completions.create(model="mock-echo", messages=HI)
    except openai.AuthenticationError as exc:
        return exc.code
    return None


async def test_keys_hash_prints_the_routes_yaml_line_for_a_static_key(make_gateway, tmp_path):
    secret = "my-long-random-secret-0123456789"
    r = await cli("keys", "hash", "--label", "web-app", stdin=secret + "\n")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("- {label: \"web-app\", sha256: \"") and secret not in line
    assert (await cli("keys", "hash", secret, "--label", "web-app")).stdout.strip() == line
    config = routes(None, keys=[]).replace("keys: []", "keys:\n" + line)
    odd = (await cli("keys", "hash", secret, "--label", "a, b: {c}")).stdout.strip()   # YAML-quoted
    assert yaml.safe_load(odd) == [{"label": "a, b: {c}", "sha256": hashlib.sha256(secret.encode()).hexdigest()}]
    gw = await make_gateway(config)
    assert await works(gw.client(secret))
    assert await refused(gw.client(secret + "x")) == "invalid_api_key"


async def test_keys_create_list_update_revoke_reach_the_running_gateway(served):
    r = await cli("keys", "create", "--label", "batch", "--allowed-models", "mock-*", "--minute-limit", "60",
                  "--daily-limit", "5", "--balance", "2", "--expires-at", "30d", "--config", served.config_path)
    assert r.returncode == 0, r.stderr
    created = orjson.loads(r.stdout)
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("mw-") and "not shown again" in r.stderr
    assert 29 * 86400 < created["expires_at"] - time.time() <= 30 * 86400     # 30 days from now
    assert (created["label"], created["allowed_models"], created["minute_limit"], created["daily_limit"],
            created["balance"]) == ("batch", ["mock-*"], 60, 5.0, 2.0)
    client = served.client(secret)
    await eventually(lambda: works(client), timeout=1.5, what="the CLI-created key accepted")
    r = await client.chat.completions.with_raw_response.create(model="mock-echo", messages=HI)
    assert r.headers["X-RateLimit-Limit-Minute"] == "60"

    listing = await cli("keys", "list", "--config", served.config_path)
    assert listing.returncode == 0
    assert key_id in listing.stdout and created["prefix"] in listing.stdout and "batch" in listing.stdout
    assert secret not in listing.stdout

    r = await cli("keys", "update", key_id, "--minute-limit", "500", "--disable", "--config", served.config_path)
    assert r.returncode == 0, r.stderr
    updated = orjson.loads(r.stdout)
    assert (updated["minute_limit"], updated["disabled"]) == (500, True) and "key" not in updated
    changed = time.monotonic()
    assert await eventually(lambda: refused(client), timeout=2, what="the disabled key refused") == \
        "key_disabled"
    assert time.monotonic() - changed < 1.0

    assert (await cli("keys", "update", key_id, "--enable", "--config", served.config_path)).returncode == 0
    await eventually(lambda: works(client), timeout=1.5, what="the re-enabled key accepted")
    r = await client.chat.completions.with_raw_response.create(model="mock-echo", messages=HI)
    assert r.headers["X-RateLimit-Limit-Minute"] == "500"

    r = await cli("keys", "revoke", key_id, "--config", served.config_path)
    assert r.returncode == 0 and f"revoked {key_id}" in r.stdout
    revoked = time.monotonic()
    assert await eventually(lambda: refused(client), timeout=2, what="the revoked key refused") == \
        "invalid_api_key"
    assert time.monotonic() - revoked < 1.0
    assert "no managed keys" in (await cli("keys", "list", "--config", served.config_path)).stdout


async def test_keys_update_and_revoke_of_an_unknown_id_fail(served):
    for args in (("update", "key_nope", "--label", "x"), ("revoke", "key_nope")):
        r = await cli("keys", *args, "--config", served.config_path)
        assert r.returncode == 1 and "key_nope" in r.stderr
    r = await cli("keys", "create", "--label", "x", "--expires-at", "someday", "--config", served.config_path)
    assert r.returncode == 2 and "expires_at" in r.stderr and "Traceback" not in r.stderr


async def test_usage_reports_by_key_model_and_day(make_gateway, tmp_path):
    gw = await make_gateway(routes(None))
    config = str(tmp_path / "routes.yaml")
    costs = {"app": 0.0, "other": 0.0}
    for secret, label, model, n in ((APP, "app", "mock-echo", 3), (OTHER, "other", "mock-lazy", 1)):
        for i in range(n):
            c = await gw.client(secret).chat.completions.create(model=model, messages=[
                {"role": "user", "content": f"request {i} " + "x" * 40 * i}])
            costs[label] += c.usage.cost
    await wait_ledger(tmp_path / "var", 4)

    by_key = orjson.loads((await cli("usage", "--by", "key", "--format", "json", "--config", config)).stdout)
    assert {(r["key_id"], r["requests"]) for r in by_key} == {("static:app", 3), ("static:other", 1)}
    for r in by_key:
        assert r["cost"] == pytest.approx(costs[r["key_label"]])
    by_day = orjson.loads((await cli("usage", "--by", "day", "--since", "1d", "--format", "json",
                                     "--config", config)).stdout)
    assert [r["day"] for r in by_day] == [time.strftime("%Y-%m-%d", time.gmtime())]
    assert by_day[0]["requests"] == 4 and by_day[0]["cost"] == pytest.approx(sum(costs.values()))
    only = orjson.loads((await cli("usage", "--by", "model", "--key", "static:other", "--format", "json",
                                   "--config", config)).stdout)
    assert [(r["model"], r["requests"]) for r in only] == [("mock-lazy", 1)]

    table = await cli("usage", "--by", "model", "--config", config)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.strip().splitlines()
    assert header.split()[:3] == ["model", "requests", "prompt_tokens"]
    assert lines[-1].split()[:2] == ["TOTAL", "4"]
    assert {ln.split()[0]: int(ln.split()[1]) for ln in lines[:-1]} == {"mock-echo": 3, "mock-lazy": 1}


async def test_usage_before_any_request(tmp_path):
    config = tmp_path / "routes.yaml"
    config.write_text(f"server: {{data_dir: {tmp_path / 'empty'}}}\n" + routes(None))
    r = await cli("usage", "--config", str(config))
    assert r.returncode == 0 and "no ledger yet" in r.stdout


def refused_in_one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    """Non-zero exit, nothing on stdout, one `modelway: ...` line on stderr holding the words."""
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("modelway: ") and r.stderr.count("\n") == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


async def test_keys_create_and_update_refuse_what_the_http_api_refuses(served):
    config = ("--config", served.config_path)
    bad = ((("--daily-limit", "nan"), "daily_limit", "number from 0"),
           (("--daily-limit", "inf"), "daily_limit", "number from 0"),
           (("--daily-limit", "-5"), "daily_limit", "number from 0"),
           (("--balance", "inf"), "balance", "number from 0"), (("--balance", "-1"), "balance", "number from 0"),
           (("--minute-limit", "-5"), "minute_limit", "integer from 1"),
           (("--max-concurrent", "0"), "max_concurrent", "integer from 1"),
           (("--expires-at", "-1"), "expires_at", "unix seconds"),
           (("--expires-at", "1e300"), "expires_at", "unix seconds"),
           (("--label", "a\nb"), "label", "control characters"), (("--label", ""), "label", "non-empty"))
    results = await asyncio.gather(*(cli("keys", "create", "--label", "x", *args, *config) for args, *_ in bad))
    for r, (args, *words) in zip(results, bad):
        refused_in_one_line(r, *words)
    refused_in_one_line(await cli("keys", "create", "--daily-limit", "5", *config), "label")
    assert "no managed keys" in (await cli("keys", "list", *config)).stdout

    key_id = orjson.loads((await cli("keys", "create", "--label", "x", "--daily-limit", "5", *config)).stdout)["id"]
    refused_in_one_line(await cli("keys", "update", key_id, "--daily-limit", "nan", *config), "daily_limit")
    refused_in_one_line(await cli("keys", "update", key_id, "--label", "", *config), "label")
    unchanged = orjson.loads((await cli("keys", "update", key_id, *config)).stdout)
    assert (unchanged["label"], unchanged["daily_limit"]) == ("x", 5.0)


async def test_keys_hash_refuses_an_empty_secret():
    for args, stdin in (((), ""), ((), "   \n"), (("",), ""), (("  ",), "")):
        refused_in_one_line(await cli("keys", "hash", *args, stdin=stdin), "empty")


async def test_usage_refuses_a_bad_since_or_until_in_one_line(served):
    for option, value in (("--since", "garbage"), ("--until", "garbage"), ("--since", "2026-13-45"),
                          ("--since", "nan")):
        refused_in_one_line(await cli("usage", option, value, "--config", served.config_path), option[2:])


async def test_usage_json_costs_are_rounded_to_1e_10(served, tmp_path):
    costs = []
    for text in ("", "hello hello hello "):         # 1e-05 and 2e-05 USD on mock-echo
        c = await served.client(APP).chat.completions.create(model="mock-echo", messages=[
            {"role": "user", "content": text}])
        costs.append(c.usage.cost)
    assert sum(costs) == 3.0000000000000004e-05
    await wait_ledger(tmp_path / "var", 2)
    r = await cli("usage", "--by", "key", "--format", "json", "--config", served.config_path)
    assert r.returncode == 0, r.stderr
    assert [(row["key_id"], row["cost"]) for row in orjson.loads(r.stdout)] == [("static:app", 3e-05)]
