import anthropic
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
    async with c.messages.stream(model="mock-echo", max_tokens=100, messages=[{"role": "user", "content": "hello"}]) as s:
        final = await s.get_final_message()
    assert final.content[0].text == "hello"
    assert final.usage.output_tokens > 0
    try:
        await c.messages.create(model="nope", max_tokens=100, messages=[{"role": "user", "content": "hello"}])
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error"
