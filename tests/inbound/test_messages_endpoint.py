"""POST /v1/messages end to end with the anthropic SDK: a message, a stream, an unknown model."""
import anthropic
import pytest

CONFIG = """
middlewares: [access_log]
providers:
  mock: {type: mock}
models:
  mock-echo: {targets: [{provider: mock}]}
"""


async def test_messages(make_gateway):
    gw = await make_gateway(CONFIG)
    c = anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0)
    m = await c.messages.create(model="mock-echo", max_tokens=100, messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text == "hello", m
    async with c.messages.stream(model="mock-echo", max_tokens=100,
                                 messages=[{"role": "user", "content": "hello"}]) as s:
        final = await s.get_final_message()
    assert final.content[0].text == "hello"
    assert final.usage.output_tokens > 0


async def test_unknown_model_is_a_404_in_anthropic_s_error_shape(make_gateway):
    gw = await make_gateway(CONFIG)
    c = anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as exc:
        await c.messages.create(model="nope", max_tokens=100, messages=[{"role": "user", "content": "hello"}])
    assert exc.value.status_code == 404
    assert exc.value.body["type"] == "error"
    assert exc.value.body["error"]["type"] == "not_found_error"
    assert "nope" in exc.value.body["error"]["message"]
