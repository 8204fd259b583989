"""Model resolution as a client sees it: exact, wildcard, :thinking suffixes, unknown, disabled."""
from __future__ import annotations

import openai
import pytest

from proxy.config import parse_config
from proxy.errors import InvalidRequest, ModelNotFound
from proxy.routing import RouteTable, resolve
from tests.core.helpers import assert_envelope, chat_body, gateway_config, post_json

USER = [{"role": "user", "content": "hi"}]


async def test_exact_route_rewrites_model_to_target_name(gw, fake_openai):
    await gw.client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert fake_openai.last["json"]["model"] == "gpt-4o-mini-2024-07-18"
    assert "reasoning_effort" not in fake_openai.last["json"]


async def test_wildcard_forwards_the_rest_of_the_name(gw, fake_openai):
    r = await gw.client().chat.completions.create(model="openai/gpt-4.1-nano-2025-04-14", messages=USER)
    assert r.choices[0].message.content
    assert fake_openai.last["json"]["model"] == "gpt-4.1-nano-2025-04-14"


@pytest.mark.parametrize("model, upstream, effort", [
    ("gpt-4o-mini:thinking", "gpt-4o-mini-2024-07-18", "medium"),
    ("gpt-4o-mini:thinking:high", "gpt-4o-mini-2024-07-18", "high"),
    ("gpt-4o-mini:thinking:low", "gpt-4o-mini-2024-07-18", "low"),
    ("openai/o4-mini:thinking:high", "o4-mini", "high"),
])
async def test_thinking_suffix_becomes_reasoning_effort_upstream(gw, fake_openai, model, upstream, effort):
    await gw.client().chat.completions.create(model=model, messages=USER)
    sent = fake_openai.last["json"]
    assert (sent["model"], sent["reasoning_effort"]) == (upstream, effort)


async def test_bad_thinking_suffix_is_a_400_on_model(gw, http):
    got = await post_json(http, gw.url + "/v1/chat/completions", chat_body("gpt-4o-mini:thinking:extreme"))
    err = assert_envelope(got, 400, "invalid_request_error", param="model")
    assert ":thinking:high" in err["tip"]


async def test_unknown_model_is_404_model_not_found_naming_close_models(gw, http, fake_openai):
    got = await post_json(http, gw.url + "/v1/chat/completions", chat_body("gpt-4o-mni"))
    err = assert_envelope(got, 404, "invalid_request_error", code="model_not_found", param="model")
    assert "gpt-4o-mni" in err["message"]
    assert "'gpt-4o-mini'" in err["tip"]
    assert fake_openai.requests == []

    with pytest.raises(openai.NotFoundError) as exc_info:
        await gw.client().chat.completions.create(model="mock-ecco", messages=USER)
    assert exc_info.value.body["code"] == "model_not_found"
    assert "mock-echo" in exc_info.value.body["tip"]


async def test_provider_with_unset_key_variable_answers_503_naming_it(fake_openai, make_gateway, http):
    gw = await make_gateway(gateway_config(fake_openai.url), env={})
    got = await post_json(http, gw.url + "/v1/chat/completions", chat_body())
    err = assert_envelope(got, 503, "api_error", code="provider_not_configured")
    assert "UP_KEY" in err["message"]
    assert fake_openai.requests == []
    # the mock models still answer
    r = await gw.client().chat.completions.create(model="mock-echo", messages=USER)
    assert r.choices[0].message.content == "hi"
    async with http.get(gw.url + "/readyz") as resp:
        ready = await resp.json()
    assert "UP_KEY" in ready["disabled_providers"]["up"]
    with pytest.raises(openai.InternalServerError) as exc_info:
        await gw.client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert exc_info.value.status_code == 503


def table(yaml: str) -> RouteTable:
    return RouteTable.build(parse_config(yaml, env={}).models)


def test_resolver_is_pure_and_prefers_exact_over_wildcard_longest_prefix_first():
    t = table("""
providers: {p: {type: mock}}
models:
  "openai/*": {targets: [{provider: p}]}
  "openai/gpt-4o": {targets: [{provider: p, model: pinned}]}
  "openai/o/*": {targets: [{provider: p}]}
""")
    assert resolve("openai/gpt-4o", t).route.name == "openai/gpt-4o"
    m = resolve("openai/o/o3", t)
    assert (m.route.name, m.wildcard_rest) == ("openai/o/*", "o3")
    m = resolve("openai/gpt-4.1", t)
    assert (m.route.name, m.wildcard_rest, m.reasoning_effort) == ("openai/*", "gpt-4.1", None)
    m = resolve("openai/gpt-4o:thinking", t)
    assert (m.route.name, m.public_model, m.reasoning_effort) == ("openai/gpt-4o", "openai/gpt-4o", "medium")
    with pytest.raises(ModelNotFound):
        resolve("openai/", t)
    with pytest.raises(InvalidRequest):
        resolve("openai/gpt-4o:thinking:max", t)


async def test_tip_never_proposes_a_wildcard_pattern_only_names_a_client_can_send(gw, http, fake_openai):
    got = await post_json(http, gw.url + "/v1/chat/completions", chat_body("opnai/gpt-4o"))
    err = assert_envelope(got, 404, "invalid_request_error", code="model_not_found", param="model")
    assert "*" not in err["tip"], err["tip"]
    assert "'openai/gpt-4o'" in err["tip"]     # the wildcard route's prefix with the rest of the name
