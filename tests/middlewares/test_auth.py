"""Auth: Bearer or x-api-key; missing, unknown, expired, disabled keys are 401; models outside
allowed_models (globs) are 403 and not listed; `auth: {mode: none}`; management keys."""
from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest

from tests.core.conftest import log_lines  # noqa: F401  (the gateway's log output, a fixture)
from tests.middlewares.helpers import (APP, CHAT, OPS, UNKNOWN, assert_envelope, assert_sdk_error, call,
                                       chat_body, key, read_ledger, routes, row_for, wait_ledger)

HI = [{"role": "user", "content": "hi"}]
LIMITED = "sk-mw-limited-0123456789abcdef"
EXPIRED = "sk-mw-expired-0123456789abcdef"
DISABLED = "sk-mw-disabled-0123456789abcdef"
FUTURE = "sk-mw-future-0123456789abcdef"


@pytest.fixture
async def keyed(upstream, make_gateway):
    return await make_gateway(routes(upstream.url, keys=[
        key("app", APP),
        key("limited", LIMITED, allowed_models=["mock-*", "gpt-4o-mini"]),
        key("expired", EXPIRED, expires_at=time.time() - 60),
        key("future", FUTURE, expires_at=time.time() + 3600),
        key("disabled", DISABLED, disabled=True),
    ]))


async def test_bearer_key_is_accepted_and_never_sent_upstream(keyed, upstream):
    r = await keyed.client(APP).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert r.status_code == 200 and r.parse().choices[0].message.content == "Hello! How can I help?"
    assert APP not in str(upstream.last["headers"])


async def test_x_api_key_header_is_accepted(keyed, http):
    status, _, body = await call(http, "POST", keyed.url + CHAT, body=chat_body("mock-echo"),
                                 headers={"x-api-key": APP})
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"


async def test_anthropic_sdk_authenticates_with_x_api_key(keyed):
    client = anthropic.AsyncAnthropic(base_url=keyed.url, api_key=LIMITED, max_retries=0)
    msg = await client.messages.create(model="mock-echo", max_tokens=50, messages=HI)
    assert msg.content[0].text == "hi"
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=keyed.url, api_key=UNKNOWN, max_retries=0).messages.create(
            model="mock-echo", max_tokens=50, messages=HI)
    with pytest.raises(anthropic.PermissionDeniedError):
        await client.messages.create(model="gpt-4o", max_tokens=50, messages=HI)


async def test_the_key_is_the_one_each_request_presents(keyed, http):
    """Secrets are hashed once and remembered; a header that did not name the key must not
    be remembered as if it had."""
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    for headers, status in (({"Authorization": f"Bearer {APP}"}, 200), ({"Authorization": f"Bearer {APP}"}, 200),
                            ({**basic, "x-api-key": APP}, 200), ({**basic, "x-api-key": UNKNOWN}, 401),
                            ({"Authorization": f"Bearer {UNKNOWN}", "x-api-key": APP}, 401),
                            ({"Authorization": f"Bearer {APP}", "x-api-key": UNKNOWN}, 200)):
        result = await call(http, "POST", keyed.url + CHAT, body=chat_body("mock-echo"), headers=headers)
        assert result[0] == status, headers
        if status == 401:
            assert_envelope(result, 401, "authentication_error", "invalid_api_key")


async def test_missing_key_is_401(keyed, http):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        result = await call(http, "POST", keyed.url + CHAT, body=chat_body("mock-echo"), headers=headers)
        err = assert_envelope(result, 401, "authentication_error", "missing_api_key")
        assert "Bearer" in err["message"]


async def test_unknown_key_is_401(keyed, upstream):
    with pytest.raises(openai.AuthenticationError) as exc:
        await keyed.client(UNKNOWN).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert_sdk_error(exc.value, 401, "authentication_error", "invalid_api_key")
    assert UNKNOWN not in str(exc.value.body)
    assert upstream.requests == []


async def test_expired_or_disabled_static_key_is_401(keyed):
    for secret, code in ((EXPIRED, "key_expired"), (DISABLED, "key_disabled")):
        with pytest.raises(openai.AuthenticationError) as exc:
            await keyed.client(secret).chat.completions.create(model="mock-echo", messages=HI)
        assert_sdk_error(exc.value, 401, "authentication_error", code)


async def test_key_expiring_in_the_future_works(keyed):
    c = await keyed.client(FUTURE).chat.completions.create(model="mock-echo", messages=HI)
    assert c.choices[0].message.content == "hi"


async def test_allowed_models_globs_decide_which_models_a_key_may_call(keyed, upstream):
    client = keyed.client(LIMITED)
    for model in ("mock-echo", "mock-lazy", "gpt-4o-mini", "gpt-4o-mini:thinking"):
        assert (await client.chat.completions.create(model=model, messages=HI)).choices[0].message.content
    called = len(upstream.requests)
    for model in ("gpt-4o", "up/gpt-4.1"):
        with pytest.raises(openai.PermissionDeniedError) as exc:
            await client.chat.completions.create(model=model, messages=HI)
        err = assert_sdk_error(exc.value, 403, "permission_error", "model_not_allowed", "model")
        assert model in err["message"]
    assert len(upstream.requests) == called           # refused before the upstream is called


async def test_streamed_request_for_a_forbidden_model_is_a_real_403(keyed):
    with pytest.raises(openai.PermissionDeniedError):
        await keyed.client(LIMITED).chat.completions.create(model="gpt-4o", messages=HI, stream=True)


async def test_models_lists_only_what_the_key_may_use(keyed):
    listed = await keyed.client(LIMITED).models.list()
    assert {m.id for m in listed.data} == {"mock-echo", "mock-lazy", "gpt-4o-mini"}
    everything = {m.id for m in (await keyed.client(APP).models.list()).data}
    assert everything == {"mock-echo", "mock-lazy", "gpt-4o-mini", "gpt-4o"}
    assert (await keyed.client(LIMITED).models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as exc:
        await keyed.client(LIMITED).models.retrieve("gpt-4o")
    err = assert_sdk_error(exc.value, 404, "invalid_request_error", "model_not_found")
    assert "'gpt-4o'" not in (err.get("tip") or "")     # not suggested to a key that may not use it


async def test_a_did_you_mean_tip_names_only_models_the_key_may_use(keyed):
    for key, expected in ((APP, "'gpt-4o'"), (LIMITED, "'gpt-4o-mini'")):
        with pytest.raises(openai.NotFoundError) as exc:
            await keyed.client(key).chat.completions.create(model="gpt-4o-", messages=HI)
        tip = assert_sdk_error(exc.value, 404, "invalid_request_error", "model_not_found", "model")["tip"]
        assert expected in tip, tip
    assert "'gpt-4o'," not in tip and "'gpt-4o'?" not in tip      # LIMITED may not use gpt-4o


async def test_models_and_account_endpoints_need_a_key(keyed, http):
    for path in ("/v1/models", "/v1/models/mock-echo", "/v1/account/balance", "/v1/account/activity",
                 "/v1/account/keys"):
        assert_envelope(await call(http, "GET", keyed.url + path), 401, "authentication_error", "missing_api_key")
        assert_envelope(await call(http, "GET", keyed.url + path, UNKNOWN), 401, "authentication_error",
                        "invalid_api_key")


async def test_health_and_metrics_need_no_key(keyed, http):
    for path in ("/healthz", "/readyz", "/metrics"):
        async with http.get(keyed.url + path) as resp:
            assert resp.status == 200, path


async def test_management_key_may_call_every_model(keyed, data_dir):
    r = await keyed.client(OPS).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert r.status_code == 200
    row = await row_for(data_dir, r.headers["x-request-id"])
    assert (row["key_id"], row["key_label"], row["status"]) == ("management:ops", "ops", 200)
    assert {m.id for m in (await keyed.client(OPS).models.list()).data} >= {"gpt-4o", "mock-echo"}


async def test_a_401_has_no_ledger_row_a_403_has_one_with_its_key(keyed, data_dir):
    """A 401 has no key to charge: it is counted (modelway_auth_failures_total), not stored."""
    with pytest.raises(openai.AuthenticationError) as refused:
        await keyed.client(UNKNOWN).chat.completions.create(model="gpt-4o-mini", messages=HI)
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        await keyed.client(LIMITED).chat.completions.create(model="gpt-4o", messages=HI)
    row = await row_for(data_dir, forbidden.value.request_id)
    assert (row["status"], row["error_type"], row["key_id"]) == (403, "permission_error", "static:limited")
    assert await wait_ledger(data_dir, 0, "WHERE request_id = ?", (refused.value.request_id,), settle=0.3) == []


@pytest.mark.parametrize("body", [b'{"model": "gpt-4o-mini", "messages": []}', b"not json", b""])
async def test_a_bad_key_is_401_whatever_the_body(keyed, http, body):
    """As OpenAI answers: the key is checked first, so a client with a wrong key learns that,
    not what is wrong with its body (which the gateway does not read for it)."""
    for headers in ({"Authorization": f"Bearer {UNKNOWN}"}, {}):
        async with http.post(keyed.url + CHAT, data=body, headers={"Content-Type": "application/json", **headers}) as r:
            assert r.status == 401, await r.text()
            assert (await r.json())["error"]["type"] == "authentication_error"
    async with http.post(keyed.url + CHAT, data=body, headers={"Authorization": f"Bearer {APP}"}) as r:
        assert r.status == 400          # with a good key, the body's own error


async def test_auth_mode_none_needs_no_key(upstream, make_gateway, http, data_dir):
    gw = await make_gateway(routes(upstream.url, keys=[], auth={"mode": "none"}))
    status, headers, body = await call(http, "POST", gw.url + CHAT, body=chat_body("mock-echo"))
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
    c = await gw.client("anything-at-all").chat.completions.create(model="gpt-4o", messages=HI)
    assert c.choices[0].message.content
    assert {m.id for m in (await gw.client().models.list()).data} == {"mock-echo", "mock-lazy", "gpt-4o-mini",
                                                                       "gpt-4o"}
    rows = await wait_ledger(data_dir, 2)
    assert [r["key_id"] for r in rows] == [None, None]
    assert rows[0]["request_id"] == headers["x-request-id"]


async def test_auth_is_on_by_default(upstream, make_gateway, http):
    gw = await make_gateway(routes(upstream.url))           # no `auth:` section
    assert_envelope(await call(http, "POST", gw.url + CHAT, body=chat_body("mock-echo")), 401,
                    "authentication_error")


async def test_401s_are_counted_and_logged_at_most_once_a_second(keyed, http, log_lines, data_dir):
    """A flood of junk keys: no ledger row, one access line a second carrying how many were left out."""
    refused = [await call(http, "POST", keyed.url + CHAT, f"sk-junk-{i}", chat_body("mock-echo")) for i in range(25)]
    assert {r[0] for r in refused} == {401}
    lines = [e for e in log_lines.events("request") if e["status"] == 401]
    assert len(lines) == 1 and lines[0]["suppressed_401"] == 0
    assert lines[0]["request_id"] == refused[0][1]["x-request-id"] and lines[0]["error"] == "invalid_api_key"
    await asyncio.sleep(1.05)     # the next second: the next 401 is logged, with the count left out
    last = await call(http, "POST", keyed.url + CHAT, None, chat_body("mock-echo"))
    lines = [e for e in log_lines.events("request") if e["status"] == 401]
    assert len(lines) == 2 and lines[1]["suppressed_401"] == 24 and lines[1]["error"] == "missing_api_key"
    assert lines[1]["request_id"] == last[1]["x-request-id"]
    ok = await call(http, "POST", keyed.url + CHAT, APP, chat_body("mock-echo"))
    assert any(e["request_id"] == ok[1]["x-request-id"] for e in log_lines.events("request"))
    await row_for(data_dir, ok[1]["x-request-id"])
    assert [r["status"] for r in read_ledger(data_dir)] == [200]
