"""Key management over HTTP with a management key: the full key once at creation, masked
afterwards with usage_today and last_used_at; PATCH and DELETE take effect at once on this
worker and within a second on another worker sharing the data_dir."""
from __future__ import annotations

import time

import openai
import pytest

from tests.middlewares.helpers import (APP, OPS, assert_envelope, assert_sdk_error, call, eventually,
                                       routes, wait_ledger)

KEYS = "/v1/account/keys"
HI = [{"role": "user", "content": "hi"}]
MASKED_FIELDS = {"id", "label", "prefix", "allowed_models", "minute_limit", "daily_limit", "balance",
                 "max_concurrent", "expires_at", "disabled", "created_at", "updated_at", "last_used_at",
                 "usage_today"}


async def create(gw, http, **fields) -> tuple[str, dict]:
    status, _, body = await call(http, "POST", gw.url + KEYS, OPS, {"label": "batch", **fields})
    assert status == 201, body
    return body["key"], body["data"]


async def test_create_returns_the_full_key_once_then_masked(gw, http):
    status, headers, body = await call(http, "POST", gw.url + KEYS, OPS, {
        "label": "batch", "allowed_models": ["mock-*"], "minute_limit": 60, "daily_limit": 5, "balance": 20})
    assert status == 201 and headers["x-request-id"]
    secret, record = body["key"], body["data"]
    assert record["key"] == secret and secret.startswith("mw-") and len(secret) > 40
    assert record["id"].startswith("key_") and record["label"] == "batch"
    assert (record["allowed_models"], record["minute_limit"], record["daily_limit"], record["balance"]) == \
        (["mock-*"], 60, 5.0, 20.0)
    assert record["prefix"] == f"{secret[:6]}...{secret[-4:]}"

    status, _, listing = await call(http, "GET", gw.url + KEYS, OPS)
    assert status == 200
    [listed] = listing["data"]
    status, _, one = await call(http, "GET", gw.url + f"{KEYS}/{record['id']}", OPS)
    assert status == 200
    for shown in (listed, one["data"]):
        assert set(shown) == MASKED_FIELDS
        assert shown["prefix"] == record["prefix"] and shown["usage_today"] == 0
        assert shown["last_used_at"] is None
    assert secret not in str(listing) and secret not in str(one)


async def test_a_created_key_works_at_once_within_its_allowed_models(gw, http):
    secret, _ = await create(gw, http, allowed_models=["mock-*"])
    c = await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)
    assert c.choices[0].message.content == "hi"
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await gw.client(secret).chat.completions.create(model="gpt-4o", messages=HI)
    assert_sdk_error(exc.value, 403, "permission_error", "model_not_allowed", "model")
    assert {m.id for m in (await gw.client(secret).models.list()).data} == {"mock-echo", "mock-lazy"}


async def test_usage_today_last_used_at_and_balance_follow_the_ledger(gw, http):
    secret, record = await create(gw, http, balance=1.0)
    before = time.time()
    c = await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)
    cost = c.usage.cost
    assert cost > 0

    async def charged():
        _, _, body = await call(http, "GET", gw.url + f"{KEYS}/{record['id']}", OPS)
        return body["data"] if body["data"]["last_used_at"] else None
    shown = await eventually(charged, what="last_used_at")
    assert shown["usage_today"] == pytest.approx(cost)
    assert shown["last_used_at"] >= before - 1
    assert shown["balance"] == pytest.approx(1.0 - cost)


async def test_patch_changes_limits_models_and_state_at_once(gw, http):
    secret, record = await create(gw, http)
    url = gw.url + f"{KEYS}/{record['id']}"
    client = gw.client(secret)
    assert (await client.chat.completions.create(model="gpt-4o", messages=HI)).choices

    status, _, body = await call(http, "PATCH", url, OPS, {"allowed_models": ["mock-echo"], "minute_limit": 100,
                                                          "label": "renamed"})
    assert status == 200
    assert (body["data"]["allowed_models"], body["data"]["minute_limit"], body["data"]["label"]) == \
        (["mock-echo"], 100, "renamed")
    assert "key" not in body["data"]
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="gpt-4o", messages=HI)
    r = await client.chat.completions.with_raw_response.create(model="mock-echo", messages=HI)
    assert r.headers["X-RateLimit-Limit-Minute"] == "100"

    assert (await call(http, "PATCH", url, OPS, {"disabled": True}))[0] == 200
    with pytest.raises(openai.AuthenticationError) as exc:
        await client.chat.completions.create(model="mock-echo", messages=HI)
    assert_sdk_error(exc.value, 401, "authentication_error", "key_disabled")
    assert (await call(http, "PATCH", url, OPS, {"disabled": False}))[0] == 200
    assert (await client.chat.completions.create(model="mock-echo", messages=HI)).choices

    status, _, body = await call(http, "PATCH", url, OPS, {"expires_at": "2020-01-01T00:00:00Z"})
    assert status == 200 and body["data"]["expires_at"] == 1577836800
    with pytest.raises(openai.AuthenticationError) as exc:
        await client.chat.completions.create(model="mock-echo", messages=HI)
    assert_sdk_error(exc.value, 401, "authentication_error", "key_expired")


async def test_expires_at_takes_unix_seconds_iso_dates_and_spans_from_now(gw, http):
    secret, record = await create(gw, http, expires_at="30d")
    assert 29 * 86400 < record["expires_at"] - time.time() <= 30 * 86400
    assert (await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)).choices
    url = gw.url + f"{KEYS}/{record['id']}"
    for value, expected in ((1798761600, 1798761600), ("2027-01-01", 1798761600), (None, None)):
        status, _, body = await call(http, "PATCH", url, OPS, {"expires_at": value})
        assert status == 200 and body["data"]["expires_at"] == expected


async def test_delete_revokes_the_key_at_once(gw, http):
    secret, record = await create(gw, http)
    url = gw.url + f"{KEYS}/{record['id']}"
    assert (await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)).choices
    status, _, body = await call(http, "DELETE", url, OPS)
    assert status == 200 and body["data"] == {"id": record["id"], "deleted": True}
    with pytest.raises(openai.AuthenticationError) as exc:
        await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)
    assert_sdk_error(exc.value, 401, "authentication_error", "invalid_api_key")
    assert_envelope(await call(http, "GET", url, OPS), 404, "invalid_request_error", "key_not_found")
    assert_envelope(await call(http, "DELETE", url, OPS), 404, "invalid_request_error", "key_not_found")
    assert_envelope(await call(http, "PATCH", url, OPS, {"label": "x"}), 404, "invalid_request_error")
    assert (await call(http, "GET", gw.url + KEYS, OPS))[2]["data"] == []


async def test_revocation_reaches_another_worker_within_a_second(upstream, make_gateway, http):
    text = routes(upstream.url)
    one = await make_gateway(text)
    two = await make_gateway(text, filename="routes-2.yaml")     # same data_dir: another worker
    secret, record = await create(one, http)
    on_two = two.client(secret)
    await eventually(lambda: works(on_two), timeout=1.0, what="the new key on the second worker")
    assert (await call(http, "DELETE", one.url + f"{KEYS}/{record['id']}", OPS))[0] == 200
    revoked = time.monotonic()
    await eventually(lambda: refused(on_two), timeout=2.0, what="the revoked key refused on the second worker")
    assert time.monotonic() - revoked < 1.0


async def test_a_change_reaches_another_worker_within_a_second(upstream, make_gateway, http):
    text = routes(upstream.url)
    one = await make_gateway(text)
    two = await make_gateway(text, filename="routes-2.yaml")
    secret, record = await create(one, http)
    on_two = two.client(secret)
    await eventually(lambda: works(on_two), timeout=1.0, what="the new key on the second worker")
    assert (await call(http, "PATCH", one.url + f"{KEYS}/{record['id']}", OPS, {"disabled": True}))[0] == 200
    changed = time.monotonic()
    await eventually(lambda: refused(on_two), timeout=2.0, what="the disabled key refused")
    assert time.monotonic() - changed < 1.0


async def works(client) -> bool:
    try:
        return bool((await client.chat.completions.create(model="mock-echo", messages=HI)).choices)
    except openai.AuthenticationError:
        return False


async def refused(client) -> bool:
    return not await works(client)


async def test_key_management_needs_a_management_key(gw, http):
    for method, path, body in (("GET", KEYS, None), ("POST", KEYS, {"label": "x"}), ("GET", KEYS + "/key_x", None),
                               ("PATCH", KEYS + "/key_x", {"label": "y"}), ("DELETE", KEYS + "/key_x", None)):
        assert_envelope(await call(http, method, gw.url + path, APP, body), 403, "permission_error",
                        "management_key_required")


async def test_a_managed_key_cannot_manage_keys(gw, http):
    secret, _ = await create(gw, http)
    assert_envelope(await call(http, "POST", gw.url + KEYS, secret, {"label": "escalate"}), 403,
                    "permission_error")


async def test_bad_key_fields_are_400_naming_the_field(gw, http):
    for body, param in (({}, "label"), ({"label": "x", "minute_limit": "ten"}, "minute_limit"),
                        ({"label": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
                        ({"label": "x", "disabled": 1}, "disabled"), ({"label": "x", "colour": "red"}, "colour"),
                        ({"label": "x", "expires_at": "soon"}, "expires_at")):
        assert_envelope(await call(http, "POST", gw.url + KEYS, OPS, body), 400, "invalid_request_error",
                        param=param)
    assert_envelope(await call(http, "POST", gw.url + KEYS, OPS, b"{nope"), 400, "invalid_request_error")
    assert (await call(http, "GET", gw.url + KEYS, OPS))[2]["data"] == []


# (field, value, part of the message saying what is allowed): each refused by POST and PATCH
OUT_OF_RANGE = (
    ("minute_limit", -5, "integer from 1"), ("minute_limit", 0, "integer from 1"),
    ("minute_limit", 1.5, "integer from 1"), ("minute_limit", 2**63, "integer from 1"),
    ("max_concurrent", 0, "integer from 1"), ("max_concurrent", -1, "integer from 1"),
    ("daily_limit", -0.01, "number from 0"), ("daily_limit", 1e300, "number from 0"),
    ("balance", -1, "number from 0"), ("balance", True, "number from 0"),
    ("expires_at", -1, "unix seconds"), ("expires_at", 0, "unix seconds"), ("expires_at", 1e300, "unix seconds"),
    ("expires_at", "nan", "unix seconds"), ("expires_at", "1e999", "unix seconds"),
    ("expires_at", "99999999d", "unix seconds"), ("expires_at", "2026-13-45", "unix seconds"),
    ("label", "", "non-empty string"), ("label", "   ", "non-empty string"),
    ("label", "a\nb", "control characters"), ("label", "tab\there", "control characters"),
    ("label", "x" * 257, "at most 256"), ("label", 5, "non-empty string"),
    ("disabled", None, "true or false"),
)


async def test_out_of_range_key_fields_are_400_saying_what_is_allowed(gw, http):
    for name, value, allowed in OUT_OF_RANGE:
        err = assert_envelope(await call(http, "POST", gw.url + KEYS, OPS, {"label": "batch", name: value}), 400,
                              "invalid_request_error", param=name)
        assert name in err["message"] and allowed in err["message"], (name, value, err)
    assert (await call(http, "GET", gw.url + KEYS, OPS))[2]["data"] == []    # nothing stored


async def test_patch_refuses_what_post_refuses_and_leaves_the_key_as_it_was(gw, http):
    secret, record = await create(gw, http, minute_limit=60, daily_limit=5, balance=20)
    url = gw.url + f"{KEYS}/{record['id']}"
    for name, value, allowed in OUT_OF_RANGE + (("label", None, "non-empty string"),):
        err = assert_envelope(await call(http, "PATCH", url, OPS, {name: value}), 400, "invalid_request_error",
                              param=name)
        assert allowed in err["message"], (name, value, err)
    status, _, body = await call(http, "GET", url, OPS)
    assert status == 200 and {k: body["data"][k] for k in ("label", "minute_limit", "daily_limit", "balance",
                                                          "updated_at")} == \
        {"label": "batch", "minute_limit": 60, "daily_limit": 5.0, "balance": 20.0,
         "updated_at": record["updated_at"]}
    r = await gw.client(secret).chat.completions.with_raw_response.create(model="mock-echo", messages=HI)
    assert r.headers["X-RateLimit-Limit-Minute"] == "60"


async def test_the_edges_of_the_ranges_are_accepted_and_null_clears_a_limit(gw, http):
    secret, record = await create(gw, http, label="é" * 256, minute_limit=1, max_concurrent=1, daily_limit=0,
                                  balance=0, expires_at=253402300799)
    assert (record["label"], record["minute_limit"], record["daily_limit"], record["balance"]) == \
        ("é" * 256, 1, 0.0, 0.0)
    limits = ("allowed_models", "minute_limit", "daily_limit", "balance", "max_concurrent", "expires_at")
    status, _, body = await call(http, "PATCH", gw.url + f"{KEYS}/{record['id']}", OPS,
                                 {name: None for name in limits})
    assert status == 200 and [body["data"][name] for name in limits] == [None] * len(limits)
    assert (await gw.client(secret).chat.completions.create(model="mock-echo", messages=HI)).choices


async def test_usd_amounts_are_shown_rounded_to_1e_10(make_gateway, http, data_dir):
    gw = await make_gateway(routes(None))          # mock-echo: $1 / $2 per 1M prompt / completion tokens
    secret, record = await create(gw, http, balance=0.01, daily_limit=1)
    costs = []
    for text in ("", "hello hello hello "):
        c = await gw.client(secret).chat.completions.create(model="mock-echo", messages=[
            {"role": "user", "content": text}])
        costs.append(c.usage.cost)
    assert costs == [1e-05, 2e-05] and sum(costs) == 3.0000000000000004e-05     # float noise, unrounded
    await wait_ledger(data_dir, 2)
    url = gw.url + f"{KEYS}/{record['id']}"

    async def charged():
        body = (await call(http, "GET", url, OPS))[2]["data"]
        return body if body["balance"] != 0.01 else None
    shown = await eventually(charged, what="the balance charged")
    assert (shown["usage_today"], shown["balance"]) == (3e-05, 0.00997)
    assert (await call(http, "GET", gw.url + KEYS, OPS))[2]["data"][0]["balance"] == 0.00997
    own = (await call(http, "GET", gw.url + "/v1/account/balance", secret))[2]["data"]
    assert (own["total_spent"], own["spent_today"], own["balance"], own["remaining_today"]) == \
        (3e-05, 3e-05, 0.00997, 0.99997)
    managed = (await call(http, "GET", gw.url + f"/v1/account/balance?key_id={record['id']}", OPS))[2]["data"]
    assert (managed["total_spent"], managed["balance"]) == (3e-05, 0.00997)
    [day] = (await call(http, "GET", gw.url + "/v1/account/analytics?group_by=day", secret))[2]["data"]
    assert day["cost"] == 3e-05
