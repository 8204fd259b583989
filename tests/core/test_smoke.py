
CONFIG = """
middlewares: [access_log]
providers:
  up: {type: openai, base_url: "%s", api_key: "${UP_KEY}"}
  mock: {type: mock}
models:
  gpt-4o-mini: {targets: [{provider: up, model: gpt-4o-mini-2024-07-18}], pricing: {input: 0.15, output: 0.6}}
  mock-echo: {targets: [{provider: mock}]}
"""


async def test_openai_sdk_nonstream_and_stream(fake_openai, make_gateway):
    gw = await make_gateway(CONFIG % fake_openai.url, env={"UP_KEY": "sk-upstream-secret"})
    client = gw.client()
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello! How can I help?"
    assert fake_openai.last["headers"]["Authorization"] == "Bearer sk-upstream-secret"
    stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! How can I help?"
