"""The chain built from `middlewares:`: `before` hooks and `handle` wrappers run in list order,
a wrapper around everything after it (after its own `before`), and a `before` hook refuses
by raising."""
from __future__ import annotations

from tests.core.helpers import UPSTREAM_KEY, assert_envelope, chat_body, gateway_config, post_json

CHAIN = ("middlewares: [access_log, {'tests.core.helpers:trace': {name: a}},"
         " {'tests.core.helpers:trace': {name: b, wrap: true}}, {'tests.core.helpers:trace': {name: c}},"
         " {'tests.core.helpers:trace': {name: d, refuse: gpt-4o-mini}}]")


async def test_before_hooks_and_wrappers_run_in_list_order(fake_openai, make_gateway, http):
    config = gateway_config(fake_openai.url).replace("middlewares: [access_log]", CHAIN)
    gw = await make_gateway(config, env={"UP_KEY": UPSTREAM_KEY})
    status, headers, _ = await post_json(http, gw.url + "/v1/chat/completions", chat_body("mock-echo"))
    assert status == 200
    assert headers["x-trace"].split() == ["a", "b:before", "b", "c", "d", "/b"]

    got = await post_json(http, gw.url + "/v1/chat/completions", chat_body("gpt-4o-mini"))
    err = assert_envelope(got, 403, "permission_error")
    assert err["message"] == "d refuses gpt-4o-mini"
    assert fake_openai.requests == []               # refused before the upstream was called
