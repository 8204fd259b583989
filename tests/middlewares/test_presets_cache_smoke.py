CONFIG = """
middlewares: [access_log, presets, cache]
cache: {enabled: true}
providers:
  mock: {type: mock}
models:
  mock-echo: {targets: [{provider: mock}], pricing: {input: 1, output: 2}}
presets:
  bot: {model: mock-echo, system: "You are terse.", params: {temperature: 0.2}}
"""


async def test_preset_and_cache(make_gateway):
    gw = await make_gateway(CONFIG)
    client = gw.client()
    r = await client.chat.completions.with_raw_response.create(
        model="presets/bot", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-cache"] == "MISS"
    r2 = await client.chat.completions.with_raw_response.create(
        model="presets/bot", messages=[{"role": "user", "content": "hi"}])
    assert r2.headers["x-cache"] == "HIT"
    c = r2.parse()
    assert c.choices[0].message.content == "hi" and c.usage.cost == 0
    stream = await client.chat.completions.create(model="presets/bot", stream=True,
                                                  stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "hi"}])
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hi"
    assert chunks[-1].usage.cost == 0
