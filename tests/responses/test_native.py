"""Native mode: a `type: openai` provider with `options: {responses: native}` gets /v1/responses
requests as sent (model rewritten, the gateway's own fields removed, a preset's system prompt
put first in `instructions`) on its own `/responses`,
so built-in tools and encrypted reasoning keep working; streamed events reach the client
byte-for-byte; usage for the ledger comes from `response.completed`. The gateway still owns the
key checks, its stored copy (GET / DELETE / input_items, previous_response_id scoped per key)."""
from __future__ import annotations

import hashlib

import openai
import orjson
import pytest

from proxy.config import ConfigError, parse_config
from tests.fakes.openai_responses import ENCRYPTED
from tests.responses.conftest import KEY_A, KEY_B, ledger_row

CONFIG = """
server: {{data_dir: "{data_dir}"}}
middlewares: [auth, ratelimit, presets, cache, accounting]
providers:
  native: {{type: openai, base_url: "{openai}", options: {{responses: native}},
           timeouts: {{connect: 2, first_byte: 5, idle: 5, total: 20}}}}
  up: {{type: openai, base_url: "{openai}"}}
models:
  "nat/*": {{targets: [{{provider: native}}], retries: 0, pricing: {{input: 1, output: 2}}, cache: true}}
  "up/*": {{targets: [{{provider: up}}], retries: 0}}
  mixed: {{targets: [{{provider: native, model: fail-500}}, {{provider: up, model: smart-4o}}], retries: 0}}
presets:
  terse: {{model: nat/gpt-5, system: "Be terse."}}
keys:
  - {{label: a, sha256: "{a}"}}
  - {{label: b, sha256: "{b}"}}
"""
AUTH = {"Authorization": f"Bearer {KEY_A}"}
SEARCH = {"model": "nat/gpt-5", "input": [{"role": "user", "content": "Please search the web for cats"}],
          "tools": [{"type": "web_search", "search_context_size": "low"}], "include": ["reasoning.encrypted_content"],
          "reasoning": {"effort": "low", "summary": "auto"}, "store": False, "prompt_cache_key": "k1",
          "text": {"verbosity": "low"}}


@pytest.fixture
async def gw(make_gateway, fake_openai, tmp_path):
    return await make_gateway(CONFIG.format(data_dir=tmp_path / "var", openai=fake_openai.url,
                                            a=hashlib.sha256(KEY_A.encode()).hexdigest(),
                                            b=hashlib.sha256(KEY_B.encode()).hexdigest()))


@pytest.fixture
async def client(gw):
    async with gw.client(api_key=KEY_A) as c:
        yield c


async def test_forwarded_as_sent_with_built_in_tools_and_encrypted_reasoning(gw, http, fake_openai):
    async with http.post(gw.url + "/v1/responses", json=SEARCH, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        assert "x-modelway-dropped-tools" not in resp.headers
        body = await resp.json()
    sent = fake_openai.last
    assert sent["path"] == "/v1/responses" and sent["json"] == {**SEARCH, "model": "gpt-5"}
    assert "Bearer " + KEY_A not in sent["headers"].get("Authorization", "")
    assert [i["type"] for i in body["output"]] == ["reasoning", "web_search_call", "message"]
    assert body["output"][0]["encrypted_content"].startswith(ENCRYPTED)
    row = await ledger_row(gw, resp.headers["x-request-id"])
    usage = body["usage"]
    assert row["endpoint"] == "responses" and row["provider"] == "native" and row["status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (
        usage["input_tokens"], usage["output_tokens"], 32)
    assert row["cost"] == pytest.approx((usage["input_tokens"] * 1 + usage["output_tokens"] * 2) / 1e6)
    assert usage["cost"] == pytest.approx(row["cost"])


async def test_stream_forwarded_byte_for_byte(gw, http, fake_openai):
    async with http.post(gw.url + "/v1/responses", json={**SEARCH, "stream": True}, headers=AUTH) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    assert raw == b"".join(fake_openai.responses_sent[-1])
    completed = orjson.loads(raw.rsplit(b"data: ", 1)[1])
    assert completed["type"] == "response.completed"
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert row["prompt_tokens"] == completed["response"]["usage"]["input_tokens"] and row["ttft_ms"] is not None


async def test_sdk_stream_and_stored_copy_scoped_per_key(gw, client, fake_openai):
    async with client.responses.stream(model="nat/gpt-5", input="hello native", tools=[{"type": "web_search"}],
                                       metadata={"t": "1"}) as stream:
        kinds = [e.type async for e in stream]
        first = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert first.output_text == "You said: hello native" and first.id.startswith("resp_up")
    stored = await client.responses.retrieve(first.id)
    assert stored.output_text == first.output_text
    items = await client.responses.input_items.list(first.id)
    assert [i.content[0].text for i in items.data] == ["hello native"]
    second = await client.responses.create(model="nat/gpt-5", input="and again", previous_response_id=first.id)
    assert fake_openai.last["json"]["previous_response_id"] == first.id
    assert second.output_text.endswith(f"(after {first.id})")
    seen = len(fake_openai.requests)
    async with gw.client(api_key=KEY_B) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):        # another key's conversation never reaches the upstream
            await other.responses.create(model="nat/gpt-5", input="x", previous_response_id=first.id)
    assert len(fake_openai.requests) == seen
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)


@pytest.mark.parametrize("model,error,status", [("nat/fail-429", openai.RateLimitError, 429),
                                                 ("nat/fail-500", openai.APIStatusError, 502),
                                                 ("nat/fail-400", openai.BadRequestError, 400)])
async def test_upstream_errors_keep_the_gateway_envelope(client, model, error, status):
    with pytest.raises(error) as err:
        await client.responses.create(model=model, input="x")
    assert err.value.status_code == status and err.value.body["trace_id"]


async def test_stream_cut_midway_ends_with_an_error_event(gw, http):
    async with http.post(gw.url + "/v1/responses", json={"model": "nat/broken", "input": "hi", "stream": True},
                         headers=AUTH) as resp:
        raw = await resp.read()
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_broken"
    assert events[-1]["sequence_number"] == events[-2]["sequence_number"] + 1
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert row["status"] == 502 and row["partial"] == 1


async def test_upstream_failure_event_is_forwarded_and_recorded(gw, http, fake_openai):
    async with http.post(gw.url + "/v1/responses", json={"model": "nat/failing", "input": "hi", "stream": True},
                         headers=AUTH) as resp:
        raw = await resp.read()
    assert raw == b"".join(fake_openai.responses_sent[-1]) and b"event: response.failed" in raw
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert row["status"] == 502 and row["partial"] == 1 and row["error_type"] == "provider_error"


async def test_preset_applies_to_native_requests(client, fake_openai):
    r = await client.responses.create(model="presets/terse", input="hi", instructions="Answer in French.")
    sent = fake_openai.last
    assert sent["path"] == "/v1/responses" and "preset" not in sent["json"]
    assert sent["json"]["model"] == "gpt-5" and sent["json"]["instructions"] == "Be terse.\n\nAnswer in French."
    assert r.output_text == "You said: hi"


async def test_built_in_tools_only_need_a_native_target(client, fake_openai):
    """A request the translation refuses (file_search) is fine for a native target, a 400 for the others."""
    tools = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    r = await client.responses.create(model="nat/gpt-5", input="find it", tools=tools)
    assert r.output_text == "You said: find it" and fake_openai.last["json"]["tools"] == tools
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="up/smart-4o", input="find it", tools=tools)
    assert err.value.body["param"] == "tools[0].type"


async def test_fallback_from_a_native_target_to_a_translated_one(client, fake_openai, gw):
    raw = await client.responses.with_raw_response.create(model="mixed", input="hello both",
                                                          tools=[{"type": "web_search"}])
    r = raw.parse()
    assert [q["path"] for q in fake_openai.requests] == ["/v1/responses", "/v1/chat/completions"]
    assert r.output_text == "hello both" and raw.headers["x-modelway-dropped-tools"] == "web_search"
    row = await ledger_row(gw, raw.headers["x-request-id"])
    assert row["attempts"] == 2 and row["provider"] == "up"


async def test_translated_provider_unchanged(client, fake_openai):
    await client.responses.create(model="up/smart-4o", input="hi")
    assert fake_openai.last["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("text,problem", [
    ("providers: {p: {type: openai, options: {responses: natve}}}\n", "providers.p.options.responses"),
    ("providers: {p: {type: mock, options: {responses: native}}}\n", "unknown field 'responses'"),
])
def test_bad_option_names_the_line(text, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "routes.yaml")
    assert "routes.yaml:1" in str(err.value) and problem in str(err.value)


def test_option_default_is_translate():
    cfg = parse_config("providers: {p: {type: openai, options: {responses: native}}, q: {type: openai}}\n")
    assert cfg.providers["p"].options["responses"] == "native"
    assert cfg.providers["q"].options.get("responses", "translate") == "translate"


@pytest.mark.parametrize("stream", [False, True])
async def test_native_answers_are_not_cached(gw, http, fake_openai, stream):
    body = {"model": "nat/gpt-5", "input": "same question", "stream": stream}
    for _ in range(2):
        async with http.post(gw.url + "/v1/responses", json=body, headers=AUTH) as resp:
            assert resp.status == 200 and resp.headers["x-cache"] == "MISS"
            await resp.read()
    assert [r["json"]["input"] for r in fake_openai.requests] == ["same question"] * 2
