"""OpenTelemetry traces (proxy/tracing.py), seen where an operator sees them: the spans a real
OTLP/HTTP receiver on 127.0.0.1 decodes from the protobuf the gateway exports, configured only
by the standard OTEL_* environment variables; the `traceparent` the fake upstream receives."""
from __future__ import annotations

import hashlib
import os
import threading

import orjson
import pytest

from tests.cli.procs import Server
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.anthropic_upstream import start as start_anthropic
from tests.fakes.otlp_receiver import OTLPReceiver
from tests.ops.conftest import CHAT, clean_env, eventually, sse_data

SECRET = "sk-client-secret-for-tracing-0001"
UPSTREAM_KEY = "sk-upstream-secret-tracing-0002"
PROMPT = "the-prompt-text-must-stay-private"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"

CONFIG = """
middlewares: [{middlewares}]
providers:
  up: {{type: openai, base_url: "{fake}", api_key: "${{UP_KEY}}"}}
  ant: {{type: anthropic, base_url: "{anthropic}", api_key: "${{UP_KEY}}"}}
models:
  claude: {{targets: [{{provider: ant, model: claude-sonnet-4-5-20250929}}]}}
  traced:
    targets: [{{provider: up, model: fail-503}}, {{provider: up, model: gpt-ok}}]
    retries: 1
    pricing: {{input: 1, output: 2}}
  single: {{targets: [{{provider: up, model: gpt-ok}}], pricing: {{input: 1, output: 2}}}}
keys: [{{label: team-a, sha256: {digest}}}]
"""
OTEL_VARS = [k for k in os.environ if k.startswith("OTEL_")]


def config(fake, anthropic_url: str = "http://127.0.0.1:9/v1", middlewares: str = "auth, accounting") -> str:
    return CONFIG.format(fake=fake.url, anthropic=anthropic_url, middlewares=middlewares,
                         digest=hashlib.sha256(SECRET.encode()).hexdigest())


@pytest.fixture
async def receiver():
    r = await OTLPReceiver().start()
    yield r
    await r.stop()


@pytest.fixture
def otel_env(monkeypatch, receiver):
    """The worker's environment as an operator sets it: an OTLP endpoint and a service name
    (batches every 50 ms, so the test does not wait the default 5 s)."""
    for k in OTEL_VARS:
        monkeypatch.delenv(k)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "modelway-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


@pytest.fixture
def no_otel_env(monkeypatch):
    for k in OTEL_VARS:
        monkeypatch.delenv(k)


async def post(http, url: str, body: dict, **headers):
    async with http.post(url + CHAT, data=orjson.dumps(body),
                         headers={"Authorization": f"Bearer {SECRET}", **headers}) as resp:
        return resp.status, resp.headers, await resp.read()


def children(spans: list[dict], parent: dict) -> list[dict]:
    return sorted((s for s in spans if s["parent_span_id"] == parent["span_id"]), key=lambda s: s["start"])


def traceparent_of(request: dict) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = request["headers"]["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1      # sampled
    return trace_id, span_id, flags


def assert_nothing_private(spans: list[dict]) -> None:
    """No secret (client key, upstream key) and no prompt text in any attribute or name."""
    text = orjson.dumps([{k: s[k] for k in ("name", "attributes", "status_message", "resource")}
                         for s in spans]).decode()
    for private in (SECRET, UPSTREAM_KEY, PROMPT, hashlib.sha256(SECRET.encode()).hexdigest()):
        assert private not in text


async def test_retry_and_fallback_are_child_spans_of_the_clients_trace(otel_env, receiver, fake_openai,
                                                                       make_gateway, http):
    gw = await make_gateway(config(fake_openai), env={"UP_KEY": UPSTREAM_KEY})
    status, headers, raw = await post(http, gw.url, {"model": "traced", "messages": [
        {"role": "user", "content": PROMPT}]}, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    assert status == 200, raw
    answer = orjson.loads(raw)
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 4)
    assert receiver.content_types == {"application/x-protobuf"}

    (req,) = [s for s in spans if s["kind"] == "server"]
    assert req["trace_id"] == CLIENT_TRACE and req["parent_span_id"] == CLIENT_SPAN   # the client's trace continued
    assert req["name"] == "chat traced" and req["resource"]["service.name"] == "modelway-test"
    a = req["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "traced"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.response.model"] == answer["model"]
    assert a["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"] == 12
    assert a["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"] == 7
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["modelway.cost_usd"] == pytest.approx(answer["usage"]["cost"]) and a["modelway.cost_usd"] > 0
    assert a["modelway.cache_hit"] is False and a["modelway.key_label"] == "team-a"
    assert a["modelway.request_id"] == headers["x-request-id"] and a["http.response.status_code"] == 200
    assert a["modelway.attempts"] == 3 and "error.type" not in a and req["status"] == "unset"

    attempts = children(spans, req)
    assert [s["name"] for s in attempts] == ["chat fail-503", "chat fail-503", "chat gpt-ok"]
    port = int(fake_openai.url.split(":")[2].split("/")[0])
    for n, s in enumerate(attempts, 1):
        assert s["kind"] == "client" and s["trace_id"] == CLIENT_TRACE
        sa = s["attributes"]
        assert sa["gen_ai.operation.name"] == "chat" and sa["gen_ai.provider.name"] == "openai"
        assert sa["server.address"] == "127.0.0.1" and sa["server.port"] == port
        assert sa["modelway.provider"] == "up" and sa["modelway.attempt"] == n
    for s in attempts[:2]:      # the retry and the failure that led to the fallback
        assert s["status"] == "error" and s["attributes"]["error.type"] == "upstream_error"
        assert s["attributes"]["http.response.status_code"] == 503
        assert s["attributes"]["gen_ai.request.model"] == "fail-503"
    ok = attempts[2]["attributes"]
    assert attempts[2]["status"] == "unset" and "error.type" not in ok
    assert ok["gen_ai.request.model"] == "gpt-ok" and ok["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert ok["gen_ai.usage.input_tokens"] == 12 and ok["gen_ai.usage.output_tokens"] == 7
    assert ok["gen_ai.response.finish_reasons"] == ["stop"]

    # each upstream request carried the traceparent of its own attempt span
    sent = [traceparent_of(r)[:2] for r in fake_openai.requests]
    assert sent == [(CLIENT_TRACE, s["span_id"]) for s in attempts]
    assert_nothing_private(spans)


async def test_a_stream_gets_its_answer_attributes_and_a_new_trace_without_traceparent(
        otel_env, receiver, fake_openai, make_gateway, http):
    gw = await make_gateway(config(fake_openai), env={"UP_KEY": UPSTREAM_KEY})
    status, _, raw = await post(http, gw.url, {"model": "single", "stream": True,
                                               "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 200
    chunks = [orjson.loads(d) for d in sse_data(raw) if d != b"[DONE]"]
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 2)
    (req,) = [s for s in spans if s["kind"] == "server"]
    (attempt,) = children(spans, req)
    assert req["parent_span_id"] == "" and len(req["trace_id"]) == 32      # a new root
    assert req["end"] >= attempt["end"] > attempt["start"] >= req["start"]
    for s in (req, attempt):
        a = s["attributes"]
        assert a["gen_ai.request.stream"] is True
        assert a["gen_ai.response.model"] == chunks[0]["model"]
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert req["attributes"]["gen_ai.response.time_to_first_chunk"] > 0
    trace_id, span_id, _ = traceparent_of(fake_openai.requests[-1])
    assert (trace_id, span_id) == (attempt["trace_id"], attempt["span_id"])
    assert_nothing_private(spans)


async def test_client_errors_and_other_endpoints_are_request_spans(otel_env, receiver, fake_openai, make_gateway, http):
    gw = await make_gateway(config(fake_openai), env={"UP_KEY": UPSTREAM_KEY})
    status, _, _ = await post(http, gw.url, {"model": "nope", "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 404
    async with http.post(gw.url + CHAT, data=b"{}", headers={"Authorization": "Bearer sk-wrong-key-000000"}) as resp:
        assert resp.status == 401
    async with http.get(gw.url + "/v1/models/single", headers={"Authorization": f"Bearer {SECRET}"}) as resp:
        assert resp.status == 200
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 3)
    by_status = {s["attributes"]["http.response.status_code"]: s for s in spans}
    assert by_status[200]["name"] == "GET /v1/models/{model_id}"      # a route, not one name per id
    assert "gen_ai.operation.name" not in by_status[200]["attributes"]
    assert by_status[404]["attributes"]["error.type"] == "model_not_found"
    assert by_status[401]["attributes"]["error.type"] == "invalid_api_key"
    assert all(s["status"] == "unset" for s in spans)     # a client's error is no server fault
    assert_nothing_private(spans)


async def test_without_otel_env_nothing_is_traced_or_exported(no_otel_env, receiver, fake_openai,
                                                              make_gateway, http):
    gw = await make_gateway(config(fake_openai), env={"UP_KEY": UPSTREAM_KEY})
    status, _, raw = await post(http, gw.url, {"model": "traced", "messages": [{"role": "user", "content": "x"}]},
                                traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    assert status == 200, raw
    assert gw.gateway.tracer is None
    assert not [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]   # no exporter thread
    assert all("traceparent" not in r["headers"] for r in fake_openai.requests)       # nothing injected
    assert receiver.exports == 0


async def test_modelway_serve_exports_from_env_and_flushes_on_stop(start_server, receiver, fake_openai, http):
    """The real process: OTEL_* in its environment, spans on the receiver, the queue flushed
    at SIGTERM (a schedule delay far longer than the test: only the shutdown can send them)."""
    env = clean_env(UP_KEY=UPSTREAM_KEY, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="mw-proc",
                    OTEL_BSP_SCHEDULE_DELAY="600000")
    server = await start_server("server: {data_dir: ./var}\n" + config(fake_openai), env=env)
    status, _, raw = await post(http, server.url, {"model": "single", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200, raw
    assert receiver.exports == 0
    server.proc.send_signal(15)
    await eventually(lambda: server.proc.poll() is not None, 20, "exit", None)
    assert server.proc.returncode == 0
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 2)
    assert {s["name"] for s in spans} == {"chat single", "chat gpt-ok"}
    assert {s["resource"]["service.name"] for s in spans} == {"mw-proc"}


@pytest.mark.parametrize("var,value", [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_TRACES_EXPORTER", "zipkin")])
async def test_an_unsupported_exporter_stops_the_worker_with_one_clear_line(start_server, tmp_path, receiver,
                                                                           var, value):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, **{var: value})
    (tmp_path / "routes.yaml").write_text("server: {data_dir: ./var}\nproviders: {m: {type: mock}}\n"
                                          "models: {x: {targets: [{provider: m}]}}\n")
    server = Server(tmp_path, "--config", str(tmp_path / "routes.yaml"), env=env)
    try:
        await eventually(lambda: server.proc.poll() is not None, 20, "exit", None)
        assert server.proc.returncode != 0
        (line,) = server.events("cannot_start_tracing")
        assert value in line["error"]
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.close()


@pytest.fixture
async def fake_anthropic():
    fake = FakeAnthropic(api_key=UPSTREAM_KEY)
    runner, url = await start_anthropic(fake)
    fake.url = url
    yield fake
    await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_upstream_native_and_translated(otel_env, receiver, fake_openai, fake_anthropic,
                                                        make_gateway, http, stream):
    """/v1/messages to a Claude target (the body passed through as it came) and chat completions
    translated to it: provider `anthropic`, its model and stop reason, its traceparent."""
    gw = await make_gateway(config(fake_openai, fake_anthropic.url), env={"UP_KEY": UPSTREAM_KEY})
    body = {"model": "claude", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}
    async with http.post(gw.url + "/v1/messages", data=orjson.dumps(body),
                         headers={"x-api-key": SECRET, "anthropic-version": "2023-06-01"}) as resp:
        assert resp.status == 200, await resp.read()
        await resp.read()
    status, _, raw = await post(http, gw.url, {**body, "max_tokens": 64})
    assert status == 200, raw
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 4)
    requests = [s for s in spans if s["kind"] == "server"]
    assert sorted(s["name"] for s in requests) == ["chat claude", "chat claude"]
    for req in requests:
        (attempt,) = children(spans, req)
        for s in (req, attempt):
            a = s["attributes"]
            assert a["gen_ai.provider.name"] == "anthropic"
            assert a["gen_ai.response.model"] == "claude-sonnet-4-5-20250929"
            native = req["attributes"]["url.path"] == "/v1/messages"     # else translated to chat completions
            assert a["gen_ai.response.finish_reasons"] == (["end_turn"] if native else ["stop"])
            assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    sent = sorted(traceparent_of(r)[1] for r in fake_anthropic.requests)
    assert sent == sorted(children(spans, req)[0]["span_id"] for req in requests)
    assert_nothing_private(spans)


async def test_cache_hit_and_opt_in_prompt_capture(otel_env, monkeypatch, receiver, fake_openai, make_gateway, http):
    """A cached answer: a request span with cache_hit and no attempt. The prompt is recorded only
    when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    text = config(fake_openai, middlewares="auth, cache, accounting") + "cache: {enabled: true}\n"
    gw = await make_gateway(text, env={"UP_KEY": UPSTREAM_KEY})
    body = {"model": "single", "messages": [{"role": "user", "content": PROMPT}]}
    for _ in range(2):
        status, _, raw = await post(http, gw.url, body)
        assert status == 200, raw
    spans = await receiver.wait_spans(lambda ss: len(ss) >= 3)
    first, second = sorted((s for s in spans if s["kind"] == "server"), key=lambda s: s["start"])
    assert first["attributes"]["modelway.cache_hit"] is False and len(children(spans, first)) == 1
    assert second["attributes"]["modelway.cache_hit"] is True and children(spans, second) == []
    assert second["attributes"]["modelway.cost_usd"] == 0
    assert PROMPT in first["attributes"]["gen_ai.input.messages"]
    assert len(fake_openai.requests) == 1
