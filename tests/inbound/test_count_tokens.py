"""POST /v1/messages/count_tokens with the official anthropic SDK, and Anthropic's error shape on
every /v1/messages* path."""
from __future__ import annotations

import anthropic
import orjson
import pytest

from tests.inbound import claude_code
from tests.inbound.conftest import ANT_KEY


@pytest.fixture
async def sdk(trio):
    client = anthropic.AsyncAnthropic(base_url=trio.url, api_key="sk-client-test", max_retries=0)
    yield client
    await client.close()


async def test_claude_target_is_forwarded(sdk, fake_anthropic):
    tools = claude_code.TOOLS[:1]
    got = await sdk.messages.count_tokens(model="claude-sonnet", system="Be brief.", tools=tools,
                                          messages=[{"role": "user", "content": "How many tokens is this?"}])
    sent = fake_anthropic.requests[-1]
    assert sent["path"] == "/v1/messages/count_tokens"
    assert sent["json"] == {"model": "claude-sonnet-4-5-20250929", "system": "Be brief.", "tools": tools,
                            "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    assert sent["headers"]["x-api-key"] == ANT_KEY
    assert got.input_tokens == orjson.loads(fake_anthropic.sent[-1])["input_tokens"] > 0


async def test_claude_target_gets_the_betas_and_query(trio, http, fake_anthropic):
    body = claude_code.request("claude-sonnet")
    for field in ("max_tokens", "stream", "metadata"):
        del body[field]
    async with http.post(trio.url + "/v1/messages/count_tokens?beta=true", data=orjson.dumps(body),
                         headers=claude_code.headers("sk-client-test")) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.read()
    sent = fake_anthropic.requests[-1]
    assert sent["query"] == "beta=true" and sent["headers"]["anthropic-beta"] == claude_code.BETAS
    assert sent["json"] == {**body, "model": "claude-sonnet-4-5-20250929"}
    assert answer == fake_anthropic.sent[-1]


async def test_other_targets_get_the_documented_estimate(sdk, fake_openai):
    # 3 for the request; system: 3 + ceil(9 / 4) = 6; the message: 3 + ceil(11 / 4) = 6
    got = await sdk.messages.count_tokens(model="mock-echo", system="Be brief.",
                                          messages=[{"role": "user", "content": "hello world"}])
    assert got.input_tokens == 3 + 6 + 6
    n = len(fake_openai.requests)
    got = await sdk.messages.count_tokens(model="gpt-smart", messages=[{"role": "user", "content": "hello world"}])
    assert got.input_tokens == 3 + 6 and len(fake_openai.requests) == n      # counted here, not upstream


async def test_claude_code_request_counts_on_the_mock(trio, http):
    body = claude_code.request("mock-echo")
    for field in ("max_tokens", "stream"):
        del body[field]
    async with http.post(trio.url + "/v1/messages/count_tokens?beta=true", data=orjson.dumps(body),
                         headers=claude_code.headers("sk-client-test")) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["input_tokens"] > 100


async def test_errors_are_in_anthropic_shape(sdk):
    with pytest.raises(anthropic.NotFoundError) as exc:
        await sdk.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as exc:
        await sdk.messages.count_tokens(model="mock-echo", messages=[])
    assert exc.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("method,path,status,kind", [
    ("POST", "/v1/messages/unknown", 404, "not_found_error"),
    ("POST", "/v1/messages/count_tokens/extra", 404, "not_found_error"),
    ("GET", "/v1/messages", 405, "invalid_request_error"),
    ("GET", "/v1/messages/count_tokens", 405, "invalid_request_error"),
])
async def test_every_messages_path_answers_in_anthropic_shape(trio, http, method, path, status, kind):
    async with http.request(method, trio.url + path, data=b"{}") as resp:
        assert resp.status == status
        body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    assert set(body) == {"type", "error"}


async def test_other_paths_keep_the_openai_envelope(trio, http):
    async with http.post(trio.url + "/v1/unknown", data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
