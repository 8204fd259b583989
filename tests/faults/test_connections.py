"""The connection layer, through raw sockets on the gateway's own runner (proxy.connections):
slowloris clients (half-sent headers, idle connections) are closed after server.header_timeout,
idle keep-alive connections after server.keepalive_timeout, a worker over
server.max_connections answers 503 and closes, and a malformed request gets the error envelope
over HTTP/1.1 with none of its bytes echoed. Normal traffic is unaffected."""
from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import ConfigError, parse_config
from proxy.connections import Runner
from proxy.gateway import Gateway
from tests.cli.procs import Server
from tests.faults.conftest import CHAT, chat

CONFIG = """
server: {{data_dir: "{data_dir}", header_timeout: {header}, keepalive_timeout: {keepalive},
          max_connections: {cap}}}
middlewares: []
providers:
  mock: {{type: mock, options: {{chunks: 2}}}}
models:
  ok: {{targets: [{{provider: mock}}]}}
"""


class Edge:
    def __init__(self, runner: web.AppRunner, port: int):
        self.runner, self.port = runner, port
        self.url = f"http://127.0.0.1:{port}"

    async def connect(self, head: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if head:
            writer.write(head)
            await writer.drain()
        return reader, writer


@pytest.fixture
async def serve(tmp_path):
    runners = []

    async def make(header: float = 0.5, keepalive: float = 1.5, cap: int = 100) -> Edge:
        text = CONFIG.format(data_dir=tmp_path / "var", header=header, keepalive=keepalive, cap=cap)
        config = parse_config(text, str(tmp_path / "routes.yaml"), env={})
        runner = Runner(create_app(Gateway(config)), config.server)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return Edge(runner, runner.addresses[0][1])

    yield make
    for runner in runners:
        await runner.cleanup()


def request(path: str = CHAT, body: bytes | None = None, extra: str = "") -> bytes:
    body = orjson.dumps(chat()) if body is None else body
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[str, dict, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return lines[0], headers, body


async def closed_after(reader: asyncio.StreamReader, limit: float = 5) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent before."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), limit)
    return time.monotonic() - started, data


def envelope(status_line: str, headers: dict, body: bytes, status: int, code: str) -> dict:
    assert status_line.startswith(f"HTTP/1.1 {status} "), status_line
    assert headers["content-type"].startswith("application/json")
    err = orjson.loads(body)["error"]
    assert err["code"] == code and err["trace_id"] == headers["x-request-id"], err
    return err


async def test_half_sent_headers_are_closed_after_header_timeout(serve):
    edge = await serve(header=0.5, keepalive=30)
    reader, writer = await edge.connect(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    took, data = await closed_after(reader)
    assert 0.4 < took < 2, took
    assert data == b""
    writer.close()


async def test_headers_dribbled_byte_by_byte_are_closed_at_header_timeout(serve):
    """Each byte resets no timer: the whole header must arrive within header_timeout."""
    edge = await serve(header=0.5, keepalive=30)
    reader, writer = await edge.connect()
    head = request()
    started = time.monotonic()

    async def dribble():
        for b in head:
            writer.write(bytes([b]))
            await asyncio.sleep(0.02)

    sender = asyncio.ensure_future(dribble())
    try:
        took, data = await closed_after(reader)
    finally:
        sender.cancel()
        writer.close()
    assert data == b"" and 0.4 < time.monotonic() - started < 2, took


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(serve):
    edge = await serve(header=0.5, keepalive=30)
    reader, writer = await edge.connect()
    took, data = await closed_after(reader)
    assert 0.4 < took < 2 and data == b"", took
    writer.close()


async def test_idle_keepalive_closes_after_keepalive_timeout_not_header_timeout(serve):
    edge = await serve(header=0.3, keepalive=1.5)
    reader, writer = await edge.connect(request())
    status, headers, _ = await read_response(reader)
    assert status.startswith("HTTP/1.1 200") and headers.get("connection", "").lower() != "close"
    took, data = await closed_after(reader)
    assert 1.3 < took < 3.5 and data == b"", took
    writer.close()


async def test_next_request_on_a_keepalive_connection_has_its_own_header_timeout(serve):
    edge = await serve(header=0.5, keepalive=30)
    reader, writer = await edge.connect(request())
    assert (await read_response(reader))[0].startswith("HTTP/1.1 200")
    await asyncio.sleep(0.7)                       # longer than header_timeout, idle: still open
    writer.write(request()[:20])
    await writer.drain()
    took, data = await closed_after(reader)
    assert 0.4 < took < 2 and data == b"", took
    writer.close()


async def test_normal_traffic_is_unaffected(serve):
    """Keep-alive reuse across many requests, slower than header_timeout in total, and
    concurrent connections all answer 200."""
    edge = await serve(header=0.3, keepalive=5)
    async with aiohttp.ClientSession() as http:
        for _ in range(8):
            async with http.post(edge.url + CHAT, json=chat()) as resp:
                assert resp.status == 200
            await asyncio.sleep(0.06)
        results = await asyncio.gather(*(http.post(edge.url + CHAT, json=chat()) for _ in range(30)))
        assert [r.status for r in results] == [200] * 30
        for r in results:
            r.release()
    reader, writer = await edge.connect(request() + request())     # pipelined
    assert (await read_response(reader))[0].startswith("HTTP/1.1 200")
    assert (await read_response(reader))[0].startswith("HTTP/1.1 200")
    writer.close()


async def test_over_max_connections_is_a_503_and_a_close(serve):
    edge = await serve(header=5, keepalive=30, cap=3)
    held = [await edge.connect() for _ in range(3)]
    reader, writer = await edge.connect(request())
    status, headers, body = await read_response(reader)
    err = envelope(status, headers, body, 503, "too_many_connections")
    assert err["type"] == "api_error" and headers["retry-after"] == "1"
    assert headers["connection"].lower() == "close"
    assert (await closed_after(reader))[1] == b""
    writer.close()
    for _, w in held:
        w.close()
    deadline = time.monotonic() + 3                # the slots come back as the closes are seen
    while True:
        reader, writer = await edge.connect(request())
        status = (await read_response(reader))[0]
        writer.close()
        if status.startswith("HTTP/1.1 200") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status.startswith("HTTP/1.1 200"), status


async def test_oversized_header_is_431_in_the_envelope_and_echoes_nothing(serve, caplog, capsys):
    edge = await serve()
    secret = "sk-" + "s3cr3t" * 1500                # a 9 KB bearer key
    caplog.set_level(logging.DEBUG)
    reader, writer = await edge.connect(request(extra=f"Authorization: Bearer {secret}\r\n"))
    status, headers, body = await read_response(reader)
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    envelope(status, headers, body, 431, "headers_too_large")
    raw = status.encode() + repr(headers).encode() + body + rest
    assert b"s3cr3t" not in raw and b"sk-" not in raw
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in "".join(capsys.readouterr())
    async with aiohttp.ClientSession() as http:          # still serving
        async with http.post(edge.url + CHAT, json=chat()) as resp:
            assert resp.status == 200


async def test_too_many_headers_is_431(serve):
    edge = await serve()
    extra = "".join(f"X-H{i}: v\r\n" for i in range(200))
    reader, writer = await edge.connect(request(extra=extra))
    envelope(*await read_response(reader), 431, "headers_too_large")
    writer.close()


async def test_overlong_request_line_is_414(serve):
    edge = await serve()
    reader, writer = await edge.connect(request(path="/v1/" + "a" * 9000))
    envelope(*await read_response(reader), 414, "uri_too_long")
    writer.close()


async def test_garbage_request_is_400_in_the_envelope(serve):
    edge = await serve()
    reader, writer = await edge.connect(b"\x16\x03\x01 not http at all\r\n\r\n")
    err = envelope(*await read_response(reader), 400, "bad_http_request")
    assert err["type"] == "invalid_request_error" and "not http" not in err["message"]
    writer.close()


@pytest.mark.parametrize("field, value, want", [("header_timeout", "0", "number > 0"),
                                                ("keepalive_timeout", "-1", "number > 0"),
                                                ("max_connections", "0", "int >= 1")])
def test_bad_connection_settings_are_config_errors_with_their_line(tmp_path, field, value, want):
    text = f"server:\n  data_dir: {tmp_path}\n  {field}: {value}\n"
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "routes.yaml", env={})
    assert f"routes.yaml:3: server.{field}" in str(exc_info.value) and want in str(exc_info.value)


def test_connection_settings_default_to_10_75_and_4096():
    server = parse_config("models: {}\n", "routes.yaml", env={}).server
    assert (server.header_timeout, server.keepalive_timeout, server.max_connections) == (10.0, 75.0, 4096)


async def test_modelway_serve_runs_the_connection_layer(tmp_path):
    """The real worker (proxy.server) serves through it: a half-sent header is closed after
    header_timeout, an oversized one is a 431 envelope."""
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "var", header=0.5, keepalive=30, cap=100))
    server = Server(tmp_path, "--config", str(config))
    try:
        server.wait_listening()
        edge = Edge(None, server.port)
        reader, writer = await edge.connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took, data = await closed_after(reader)
        writer.close()
        assert 0.4 < took < 2 and data == b"", took
        reader, writer = await edge.connect(request(extra="X-Junk: " + "j" * 9000 + "\r\n"))
        envelope(*await read_response(reader), 431, "headers_too_large")
        writer.close()
    finally:
        server.close()
