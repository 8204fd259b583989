"""POST /v1/completions (legacy text completions) with the official openai SDK: passed through to
an OpenAI-compatible upstream, translated through chat for the mock and Claude, one ledger row."""
from __future__ import annotations

import openai
import orjson
import pytest

from tests.inbound.conftest import ledger_row

MODELS = ["mock-echo", "gpt-smart", "claude-sonnet"]


@pytest.fixture
def client(trio):
    return trio.client()


def _expected(model: str, prompt: str) -> str:
    return f"echo: {prompt}" if model == "gpt-smart" else prompt     # the fake upstream says "echo: "


@pytest.mark.parametrize("model", MODELS)
async def test_plain(client, model):
    got = await client.completions.create(model=model, prompt="Say hello", max_tokens=50, temperature=0.5,
                                          stop=["\n\n"])
    assert got.object == "text_completion" and got.id.startswith("cmpl")
    assert got.choices[0].text == _expected(model, "Say hello") and got.choices[0].finish_reason == "stop"
    assert got.usage.prompt_tokens > 0 and got.usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
async def test_streamed(client, model):
    stream = await client.completions.create(model=model, prompt=["Say hello"], max_tokens=50, stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == _expected(model, "Say hello")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_stream_wire_format_translated(trio, http):
    async with http.post(trio.url + "/v1/completions", json={"model": "mock-echo", "prompt": "hi there",
                                                            "stream": True}) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["choices"] for c in chunks)   # no role chunk, no usage
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hi there"


async def test_openai_target_gets_the_request_as_sent(client, fake_openai):
    got = await client.completions.create(model="gpt-smart", prompt=["one", "two"], echo=True, logprobs=1,
                                          suffix="!", max_tokens=5, extra_body={"best_of": 1, "custom": "x"})
    sent = fake_openai.last
    assert sent["path"] == "/v1/completions"
    assert sent["json"] == {"model": "smart-4o", "prompt": ["one", "two"], "echo": True, "logprobs": 1,
                            "suffix": "!", "max_tokens": 5, "best_of": 1, "custom": "x"}
    assert [c.text for c in got.choices] == ["oneecho: one!", "twoecho: two!"]
    assert got.choices[0].logprobs.tokens == ["echo"]
    assert got.usage.model_extra["cost"] > 0


@pytest.mark.parametrize("model", ["mock-echo", "claude-sonnet"])
@pytest.mark.parametrize("field,value", [("suffix", "!"), ("echo", True), ("logprobs", 2), ("best_of", 3),
                                         ("prompt", ["a", "b"]), ("prompt", [1, 2, 3])])
async def test_translated_targets_refuse_what_chat_cannot_do(client, model, field, value):
    args = {"model": model, "prompt": "hi", field: value}
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(**args)
    assert exc.value.status_code == 400 and exc.value.body["param"] == field


async def test_missing_prompt_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model="mock-echo", prompt=None)
    assert exc.value.body["param"] == "prompt"


async def test_one_ledger_row_per_request(trio, http):
    for model in ("mock-echo", "gpt-smart"):
        async with http.post(trio.url + "/v1/completions", json={"model": model, "prompt": "count me"}) as resp:
            assert resp.status == 200
            rid = resp.headers["x-request-id"]
            body = await resp.json()
        row = await ledger_row(trio, rid)
        assert (row["endpoint"], row["model"], row["status"]) == ("completions", model, 200)
        assert row["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
        assert row["cost"] == pytest.approx(body["usage"]["cost"]) and row["cost"] > 0
