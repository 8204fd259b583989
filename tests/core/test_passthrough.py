"""Pass-through fidelity: what reaches the upstream, what reaches the client, what reaches the log."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.core.helpers import (CLIENT_KEY, FIXTURES, UPSTREAM_KEY, chat_body, fixture_events, post_json,
                                post_stream, sse_data)


async def test_unknown_fields_reach_upstream_unchanged_model_rewritten_gateway_fields_stripped(gw, fake_openai, http):
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}],
        "temperature": 0.1, "top_p": 0.95, "max_completion_tokens": 64, "seed": 7, "n": 1,
        "logit_bias": {"50256": -100}, "metadata": {"trace": "t-1"}, "store": False,
        "x_vendor_extension": {"nested": [1, 2.5, None, True], "s": "é ✓"},
        "preset": "support-bot", "cache": {"no-store": True}, "models": ["gpt-4o-mini", "up/other"],
    }
    status, _, _ = await post_json(http, gw.url + "/v1/chat/completions", body)
    assert status == 200
    sent = fake_openai.last["json"]
    expected = {k: v for k, v in body.items() if k not in ("preset", "cache", "models")}
    expected["model"] = "gpt-4o-mini-2024-07-18"
    assert sent == expected


async def test_client_authorization_never_goes_upstream_provider_key_does(gw, fake_openai, http):
    await post_json(http, gw.url + "/v1/chat/completions", chat_body(),
                    headers={"Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY,
                             "Cookie": f"session={CLIENT_KEY}"})
    headers = fake_openai.last["headers"]
    assert headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in repr(headers)
    assert not any(h.lower() in ("x-api-key", "cookie") for h in headers)


async def test_provider_key_reaches_neither_client_nor_log(gw, http, log_lines):
    url = gw.url + "/v1/chat/completions"
    seen = []
    for model in ("gpt-4o-mini", "up/fail-401", "up/fail-500", "up/fail-400", "up/fail-429", "up/malformed"):
        status, headers, body = await post_json(http, url, chat_body(model, text="my secret prompt"))
        seen.append(repr(dict(headers)) + orjson.dumps(body).decode())
    status, headers, raw = await post_stream(http, url, chat_body("up/midstream-error", stream=True))
    seen.append(repr(dict(headers)) + raw.decode())
    for text in seen:
        assert UPSTREAM_KEY not in text and "SECRET" not in text
        assert "sk-secret123456789" not in text
    logged = log_lines.raw.decode()
    assert log_lines.events("request"), "the access log wrote nothing"
    for secret in (UPSTREAM_KEY, CLIENT_KEY, "sk-secret123456789", "my secret prompt"):
        assert secret not in logged


async def test_stream_bytes_forwarded_exactly_without_usage_chunk(gw, http):
    status, headers, raw = await post_stream(http, gw.url + "/v1/chat/completions", chat_body(stream=True))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    expected = [e for e in fixture_events("text_stream.sse") if b'"choices":[]' not in e]
    assert raw == b"".join(expected)


async def test_stream_bytes_with_usage_chunk_content_lines_identical(gw, http):
    body = chat_body("up/tools", stream=True, stream_options={"include_usage": True})
    status, _, raw = await post_stream(http, gw.url + "/v1/chat/completions", body)
    got, want = sse_data(raw), sse_data((FIXTURES / "tool_stream.sse").read_bytes())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if b'"choices":[]' in w:      # the usage chunk: same chunk plus the gateway's cost
            g_obj, w_obj = orjson.loads(g), orjson.loads(w)
            assert g_obj["usage"].pop("cost") > 0
            assert g_obj == w_obj
        else:
            assert g == w
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_nonstreaming_body_is_upstream_body_plus_cost(gw, http):
    status, _, body = await post_json(http, gw.url + "/v1/chat/completions", chat_body())
    want = orjson.loads((FIXTURES / "completion.json").read_bytes())
    assert body["usage"].pop("cost") == pytest.approx((12 * 0.15 + 7 * 0.60) / 1e6)
    assert body == want


async def test_chunks_reach_client_as_upstream_sends_them(gw, fake_openai, http):
    """The upstream holds its stream after the first chunk: the client already has that chunk."""
    fake_openai.gate.clear()
    async with http.post(gw.url + "/v1/chat/completions", json=chat_body("up/gated", stream=True)) as resp:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
        assert b'"role":"assistant"' in first
        fake_openai.gate.set()
        rest = await asyncio.wait_for(resp.read(), 2)
    assert rest.endswith(b"data: [DONE]\n\n")
