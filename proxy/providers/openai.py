"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, Groq, DeepSeek, Gemini's OpenAI endpoint).

Pass-through: the body goes upstream unchanged but for `model` (already rewritten) and
`stream_options.include_usage`, which the gateway always sets so it learns the usage. SSE
events are forwarded as the exact bytes received. Each is parsed to check it (one that is not
a JSON object, or an error event, ends the stream with an error event); only those carrying a
usage object are re-serialised (to add `cost`), and the usage chunk is dropped when the
client did not ask for it. The HTTP side (session, errors, limits, secrets) is HTTPProvider's.
"""
from __future__ import annotations

from typing import AsyncIterator

import aiohttp
import orjson

from proxy.context import JSONReply, StreamReply, Usage
from proxy.errors import UpstreamBadResponse, UpstreamTruncated
from proxy.providers.http import HTTPProvider, error_message
from proxy.sse import DONE, data_event

_ALL = {"vision": True, "tools": True, "structured_outputs": True, "reasoning": True,
        "prompt_caching": True, "pdf": True, "audio": True}


class OpenAIProvider(HTTPProvider):
    type = "openai"
    default_capabilities = _ALL
    #: responses: native forwards /v1/responses to the upstream's own /responses (proxy.native)
    OPTIONS = {"responses": ("string", "translate")}
    OPTION_CHOICES = {"responses": ("translate", "native")}

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    async def chat(self, ctx, body: dict):
        return await self.forward(ctx, "/chat/completions", body)

    async def forward(self, ctx, path: str, body: dict):
        """POST a chat or legacy completions body as it is; the answer forwarded (a stream's
        bytes as received), usage always asked for and learnt, `cost` added."""
        url = self.config.base_url + path
        if body.get("stream"):
            opts = body.get("stream_options")
            body["stream_options"] = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
            return StreamReply(self._stream(ctx, await self.post(url, body, JSON_HEADERS)))
        return JSONReply(self._reply(ctx, await self.read_json(await self.post(url, body, JSON_HEADERS))))

    async def embeddings(self, ctx, body: dict):
        resp = await self.post(self.config.base_url + "/embeddings", body, JSON_HEADERS)
        return JSONReply(self._reply(ctx, await self.read_json(resp)))

    def _reply(self, ctx, data) -> dict:
        if not isinstance(data, dict) or ("error" in data and "choices" not in data and "data" not in data):
            raise UpstreamBadResponse(f"provider {self.name!r} answered 200 with an error: "
                                      f"{self.message(error_message(data))}", code="upstream_error_body")
        usage = data.get("usage")
        if isinstance(usage, dict):
            ctx.usage = Usage.from_openai(usage)
            usage["cost"] = ctx.finalize_cost()
        return data

    async def _stream(self, ctx, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Forward the events of each upstream read as one item, as received; each is parsed
        to check it (a malformed event or an error event ends the stream with an error)."""
        finished = False
        try:
            async for batch in self.events(resp):
                out = []
                done = False
                failure = None
                for ev in batch:
                    data = ev.data
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        chunk = None
                    failure = self._bad_event(chunk)
                    if failure is not None:     # what came before it still goes out first
                        break
                    choices = chunk.get("choices")
                    if choices and type(choices) is list and type(choices[0]) is dict \
                            and choices[0].get("finish_reason"):
                        finished = True
                    if type(chunk.get("usage")) is dict:
                        usage_event = self._usage_event(ctx, chunk, data)
                        if usage_event is not None:
                            out.append(usage_event)
                        continue
                    out.append(ev.raw)
                if done:
                    out.append(DONE)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
                if failure is not None:
                    raise failure
                if done:
                    return
            if not finished:
                raise UpstreamTruncated(f"provider {self.name!r} closed the stream early")
            yield DONE
        finally:
            resp.close()

    def _bad_event(self, chunk) -> UpstreamBadResponse | None:
        if type(chunk) is not dict:         # not JSON, truncated, or not an object
            return UpstreamBadResponse(f"provider {self.name!r} sent a malformed stream event")
        if chunk.get("error") and not chunk.get("choices"):
            return UpstreamBadResponse(f"provider {self.name!r} failed mid-stream: "
                                       f"{self.message(error_message(chunk))}", code="upstream_stream_error")
        return None

    def _usage_event(self, ctx, chunk: dict, data: bytes) -> bytes | None:
        usage = chunk["usage"]
        ctx.usage = Usage.from_openai(usage)
        if chunk.get("choices"):
            return data_event(data)  # usage riding on a content chunk (some servers do this)
        if not ctx.include_usage:
            return None
        usage["cost"] = ctx.finalize_cost()
        return data_event(orjson.dumps(chunk))


JSON_HEADERS = {"Content-Type": "application/json"}
