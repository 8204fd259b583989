"""data_dir on disk: everything the gateway creates there (ledger and its WAL/SHM files,
counters, metrics snapshots, the response cache and its value files) is 0600 in 0700
directories whatever the umask; a data_dir that cannot be written, or a ledger that is not a
database, stops `modelway serve` with one line naming the path and exit code 1, no traceback."""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.cli.procs import Server, clean_env, free_port, modelway
from tests.middlewares.helpers import APP, routes

CONFIG = """
server: {{data_dir: "{data_dir}"}}
middlewares: [cache, accounting]
providers:
  mock: {{type: mock, options: {{chunks: 2}}}}
models:
  mock-echo: {{targets: [{{provider: mock}}]}}
cache: {{enabled: true}}
"""
BIG = "x" * 40_000      # an answer over diskcache's 32 KB: kept in a file of its own


def modes(root: Path) -> dict[str, str]:
    """Every path under root (root included) -> its permission bits in octal."""
    out = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return out


def assert_private(root: Path, must_have: tuple[str, ...]) -> None:
    found = modes(root)
    for name in must_have:
        assert name in found, f"{name} not under {root}: {sorted(found)}"
    loose = {name: mode for name, mode in found.items()
             if mode != (oct(0o700) if (root / name).is_dir() else oct(0o600))}
    assert not loose, f"not 0600 files / 0700 directories: {loose}"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_files_are_0600_and_directories_0700_under_umask_022(make_gateway, tmp_path, umask_022):
    data_dir = tmp_path / "var"
    gw = await make_gateway(routes(None, cache={"enabled": True}, server={"data_dir": str(data_dir)}))
    client = gw.client(APP)
    for text in ("hi", BIG):
        await client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": text}])
    await gw.gateway.response_cache.flush()
    await gw.gateway.ledger.flush()
    assert_private(data_dir, ("modelway.db", "modelway.db-wal", "modelway.db-shm", "counters.bin",
                              "cache", "cache/cache.db", "cache/cache.db-wal"))
    assert any(name.endswith(".val") for name in modes(data_dir)), "no cache value file was written"
    await gw.close()
    assert_private(data_dir, ("modelway.db", "counters.bin", "metrics", "cache/cache.db"))


def test_modelway_serve_creates_private_files_under_umask_022(tmp_path, umask_022):
    data_dir = tmp_path / "var"
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    server = Server(tmp_path, "--config", str(config))
    try:
        server.wait_listening()

        async def ask():
            async with aiohttp.ClientSession() as http:
                for text in ("hello", BIG):
                    body = {"model": "mock-echo", "messages": [{"role": "user", "content": text}]}
                    async with http.post(server.url + "/v1/chat/completions", json=body) as resp:
                        assert resp.status == 200
        asyncio.run(ask())
        server.wait_for(lambda: any((data_dir / "metrics").glob("*.json")), what="a metrics snapshot")
        assert server.terminate() == 0
    finally:
        server.close()
    assert_private(data_dir, ("modelway.db", "counters.bin", "metrics", "cache", "cache/cache.db"))
    assert any(name.endswith(".val") for name in modes(data_dir))


@pytest.fixture
def unwritable(tmp_path):
    """(a data_dir that may not be written into, the command prefix that makes it so). Root
    ignores permission bits while it holds CAP_DAC_OVERRIDE: as root, modelway runs without it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o555)
    yield data_dir, prefix
    data_dir.chmod(0o755)


@pytest.mark.parametrize("inside", [False, True], ids=["data_dir", "a_new_dir_under_it"])
def test_a_read_only_data_dir_is_one_line_naming_it_and_exit_1(tmp_path, unwritable, inside):
    data_dir, prefix = unwritable
    data_dir = data_dir / "sub" if inside else data_dir
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    r = subprocess.run([*prefix, sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port",
                        str(free_port())], capture_output=True, text=True, env=clean_env(), cwd=tmp_path,
                       timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data_dir) in lines[0] and "not usable" in lines[0], r.stderr
    assert "ermission denied" in lines[0]


def test_a_ledger_that_is_not_a_database_is_one_line_and_exit_1(tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "modelway.db").write_bytes(b"not a database at all " * 200)
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    r = modelway("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    errors = [orjson.loads(ln) for ln in r.stdout.splitlines() if "cannot_open_data_dir" in ln]
    assert len(errors) == 1 and errors[0]["data_dir"] == str(data_dir), r.stdout
    assert "not a database" in errors[0]["error"]
    assert (data_dir / "modelway.db").read_bytes().startswith(b"not a database")   # the ledger is kept


def test_a_damaged_cache_db_does_not_stop_modelway_serve(tmp_path):
    data_dir = tmp_path / "var"
    (data_dir / "cache").mkdir(parents=True)
    (data_dir / "cache" / "cache.db").write_bytes(b"\x00garbage" * 500)
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    server = Server(tmp_path, "--config", str(config), env=clean_env())
    try:
        server.wait_listening()
        damaged = server.events("cache_db_damaged")
        assert len(damaged) == 1 and damaged[0]["path"] == str(data_dir / "cache" / "cache.db")
        assert Path(damaged[0]["moved_to"]).read_bytes() == b"\x00garbage" * 500
        assert server.terminate() == 0
    finally:
        server.close()
