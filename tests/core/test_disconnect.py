"""A client that goes away cancels the upstream request at once, streaming or not: the fake
upstream sees its connection closed."""
from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.core.helpers import chat_body

CHAT = "/v1/chat/completions"


async def wait_disconnected(fake) -> None:
    await asyncio.wait_for(fake.disconnected.wait(), 2)


async def reached_upstream(fake) -> None:
    async def poll():
        while not fake.requests:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), 2)


async def test_disconnect_while_waiting_for_upstream_cancels_it(gw, fake_openai, log_lines):
    async def call():
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.url + CHAT, json=chat_body("up/hang")) as resp:
                await resp.read()
    task = asyncio.ensure_future(call())
    await reached_upstream(fake_openai)
    task.cancel()                # the client gives up: its connection closes
    await wait_disconnected(fake_openai)
    for _ in range(40):          # the access line is written when the handler unwinds
        lines = log_lines.events("request")
        if lines:
            break
        await asyncio.sleep(0.05)
    assert [(ln["status"], ln["model"]) for ln in lines] == [(499, "up/hang")]


async def test_disconnect_midstream_cancels_upstream(gw, fake_openai):
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + CHAT, json=chat_body("up/stream-hang", stream=True))
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
        assert first.startswith(b"data: {")
        assert not fake_openai.disconnected.is_set()
        resp.close()             # drop the connection mid-stream
    await wait_disconnected(fake_openai)


async def test_sdk_request_cancelled_cancels_upstream(gw, fake_openai):
    client = gw.client()
    task = asyncio.ensure_future(client.chat.completions.create(
        model="up/hang", messages=[{"role": "user", "content": "hi"}]))
    await reached_upstream(fake_openai)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_disconnected(fake_openai)


async def test_sdk_timeout_cancels_upstream(gw, fake_openai):
    with pytest.raises(openai.APITimeoutError):
        await gw.client(timeout=0.5).chat.completions.create(
            model="up/hang", messages=[{"role": "user", "content": "hi"}])
    assert fake_openai.requests
    await wait_disconnected(fake_openai)


async def test_sdk_stream_closed_early_cancels_upstream(gw, fake_openai):
    stream = await gw.client().chat.completions.create(model="up/stream-hang", stream=True,
                                                       messages=[{"role": "user", "content": "hi"}])
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    await wait_disconnected(fake_openai)
