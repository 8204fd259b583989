"""Every error in the SPEC §6 envelope, with x-request-id == trace_id; upstream errors mapped."""
from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest

from tests.core.helpers import UPSTREAM_KEY, assert_envelope, chat_body, gateway_config, post_json, sse_data

CHAT = "/v1/chat/completions"


async def test_unknown_path_is_404_in_the_envelope(gw, http):
    async with http.get(gw.url + "/v1/nope") as resp:
        got = resp.status, resp.headers, await resp.json()
    err = assert_envelope(got, 404, "invalid_request_error")
    assert "/v1/nope" in err["message"]
    got = await post_json(http, gw.url + "/v2/chat/completions", chat_body())
    assert_envelope(got, 404, "invalid_request_error")


async def test_wrong_method_is_405_in_the_envelope(gw, http):
    async with http.get(gw.url + CHAT) as resp:
        got = resp.status, resp.headers, await resp.json()
    err = assert_envelope(got, 405, "invalid_request_error", code="method_not_allowed")
    assert "GET" in err["message"]
    async with http.delete(gw.url + "/v1/models") as resp:
        assert resp.status == 405


async def test_body_over_the_limit_is_413(fake_openai, make_gateway, http, tmp_path):
    server = f"server: {{max_body_mb: 0.001, data_dir: {tmp_path / 'var'}}}"
    gw = await make_gateway(gateway_config(fake_openai.url, server=server), env={"UP_KEY": UPSTREAM_KEY})
    big = chat_body(text="x" * 4000)
    got = await post_json(http, gw.url + CHAT, big)
    assert_envelope(got, 413, "invalid_request_error", code="payload_too_large")

    async def chunks():                      # no Content-Length: the limit still holds
        yield orjson.dumps(big)
    async with http.post(gw.url + CHAT, data=chunks(), headers={"Content-Type": "application/json"}) as resp:
        got = resp.status, resp.headers, await resp.json()
    assert_envelope(got, 413, "invalid_request_error")
    assert fake_openai.requests == []
    got = await post_json(http, gw.url + CHAT, chat_body())   # a small body is fine
    assert got[0] == 200


INVALID_JSON = [b'{"model": "gpt-4o-mini", "messages": [', b"", b"[1, 2]", b"\xff\xfe", b"null"]
BAD_FIELDS = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
]


async def test_invalid_json_is_400(gw, http):
    for raw in INVALID_JSON:
        got = await post_json(http, gw.url + CHAT, raw)
        assert got[0] == 400, raw
        assert_envelope(got, 400, "invalid_request_error", code="invalid_json")


async def test_missing_or_ill_typed_fields_are_400_naming_param(gw, http, fake_openai):
    for body, param in BAD_FIELDS:
        got = await post_json(http, gw.url + CHAT, body)
        assert (got[0], got[2]["error"]["param"]) == (400, param), body
        err = assert_envelope(got, 400, "invalid_request_error", param=param)
        assert param.split("[")[0] in err["message"]
    assert fake_openai.requests == []


async def test_embeddings_missing_input_is_400(gw, http):
    got = await post_json(http, gw.url + "/v1/embeddings", {"model": "text-embedding-3-small"})
    assert_envelope(got, 400, "invalid_request_error", param="input")


async def test_sane_request_id_is_kept_insane_one_replaced(gw, http):
    rid = "client-req_42.a:b"
    got = await post_json(http, gw.url + CHAT, chat_body(), headers={"x-request-id": rid})
    assert got[0] == 200 and got[1]["x-request-id"] == rid
    got = await post_json(http, gw.url + CHAT, chat_body("nope"), headers={"x-request-id": rid})
    assert assert_envelope(got, 404, "invalid_request_error")["trace_id"] == rid
    for insane in ("has spaces and ; semicolons", "x" * 300, "<script>", "é"):
        got = await post_json(http, gw.url + CHAT, chat_body("nope"),
                              headers={"x-request-id": insane.encode("utf-8").decode("latin-1")})
        err = assert_envelope(got, 404, "invalid_request_error")
        assert err["trace_id"] != insane and err["trace_id"].startswith("req_")


async def test_every_response_carries_x_request_id(gw, http):
    for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/models"),
                         ("GET", "/v1/models/gpt-4o-mini"), ("GET", "/metrics")):
        async with http.request(method, gw.url + path) as resp:
            assert resp.headers.get("x-request-id"), path
    async with http.post(gw.url + CHAT, json=chat_body(stream=True)) as resp:
        assert resp.headers["x-request-id"].startswith("req_")
        await resp.read()


def assert_sanitised(err: dict) -> None:
    assert "Simulated failure" in err["message"]
    assert "sk-" not in err["message"] and UPSTREAM_KEY not in err["message"]
    assert "[redacted]" in err["message"]


async def test_upstream_client_errors_keep_their_status(gw, http):
    for upstream_status in (400, 404, 413, 422):
        got = await post_json(http, gw.url + CHAT, chat_body(f"up/fail-{upstream_status}"))
        assert got[0] == upstream_status, got
        err = assert_envelope(got, upstream_status, "invalid_request_error")
        assert err["upstream_status"] == upstream_status
        assert_sanitised(err)


async def test_upstream_429_stays_429_with_retry_after(gw, http):
    got = await post_json(http, gw.url + CHAT, chat_body("up/fail-429"))
    err = assert_envelope(got, 429, "rate_limit_error")
    assert got[1]["Retry-After"] == "7"
    assert err["upstream_status"] == 429
    assert_sanitised(err)
    with pytest.raises(openai.RateLimitError) as exc_info:
        await gw.client().chat.completions.create(model="up/fail-429", messages=[{"role": "user", "content": "x"}])
    assert exc_info.value.response.headers["retry-after"] == "7"


async def test_upstream_auth_and_server_errors_become_502(gw, http):
    for upstream_status in (401, 403, 500, 503):
        got = await post_json(http, gw.url + CHAT, chat_body(f"up/fail-{upstream_status}"))
        assert got[0] == 502, got
        err = assert_envelope(got, 502, "provider_error")
        assert err["upstream_status"] == upstream_status
        assert str(upstream_status) in err["message"]
        assert_sanitised(err)


async def test_retryable_upstream_error_is_retried_then_reported(fake_openai, make_gateway, http):
    extra = '  flaky: {targets: [{provider: up, model: fail-503}], retries: 1}'
    gw = await make_gateway(gateway_config(fake_openai.url, extra=extra), env={"UP_KEY": UPSTREAM_KEY})
    got = await post_json(http, gw.url + CHAT, chat_body("flaky"))
    assert_envelope(got, 502, "provider_error")
    assert len(fake_openai.requests) == 2


EXPLODING = "middlewares: [access_log, {'tests.core.helpers:explode': {model: boom, stream_model: up/boom}}]"


@pytest.fixture
async def exploding_gw(fake_openai, make_gateway):
    """A custom middleware (by import path, with options) that raises a plain exception."""
    config = gateway_config(fake_openai.url).replace("middlewares: [access_log]", EXPLODING)
    return await make_gateway(config, env={"UP_KEY": UPSTREAM_KEY})


async def test_unexpected_exception_is_a_500_envelope_without_traceback(exploding_gw, http, log_lines):
    gw = exploding_gw
    got = await post_json(http, gw.url + CHAT, chat_body("boom"))
    err = assert_envelope(got, 500, "api_error")
    assert "Traceback" not in err["message"] and "sk-inner" not in err["message"]
    assert [e["request_id"] for e in log_lines.events("unhandled_error")] == [err["trace_id"]]
    got = await post_json(http, gw.url + CHAT, chat_body())     # the worker keeps serving
    assert got[0] == 200


async def test_unexpected_exception_is_logged_as_500(exploding_gw, http, log_lines):
    got = await post_json(http, exploding_gw.url + CHAT, chat_body("boom"))
    assert log_lines.access(got[1]["x-request-id"])["status"] == 500


async def test_unexpected_exception_midstream_still_ends_with_error_event_and_done(exploding_gw, http):
    async with http.post(exploding_gw.url + CHAT, json=chat_body("up/boom", stream=True)) as resp:
        assert resp.status == 200
        try:
            raw = await resp.read()
        except aiohttp.ClientError:        # a corrupt chunked body
            raw = b"<corrupt>"
    assert raw.endswith(b"data: [DONE]\n\n")
    events = sse_data(raw)
    assert orjson.loads(events[-2])["error"]["type"] == "api_error"
