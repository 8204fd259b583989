"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, Groq, DeepSeek, Gemini's OpenAI endpoint).

Pass-through: the body goes upstream unchanged but for `model` (already rewritten) and
`stream_options.include_usage`, which the gateway always sets so it learns the usage. SSE
events are forwarded as the exact bytes received; only events that carry a usage object are
parsed (to learn usage, add `cost`, and drop the usage chunk when the client did not ask).
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import orjson

from proxy.context import JSONReply, StreamReply, Usage
from proxy.errors import GatewayError, ProviderError, from_upstream
from proxy.providers.base import Provider
from proxy.sse import DONE, data_event, iter_batches

_ALL = {"vision": True, "tools": True, "structured_outputs": True, "reasoning": True,
        "prompt_caching": True, "pdf": True, "audio": True}
MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024


class OpenAIProvider(Provider):
    type = "openai"
    default_capabilities = _ALL

    async def start(self) -> None:
        headers = dict(self.config.headers)
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        t = self.config.timeouts
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300),
            headers=headers, timeout=aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect),
            auto_decompress=True, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def chat(self, ctx, body: dict):
        if body.get("stream"):
            opts = body.get("stream_options")
            body["stream_options"] = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
            resp = await self._post(ctx, "/chat/completions", body)
            return StreamReply(self._stream(ctx, resp))
        resp = await self._post(ctx, "/chat/completions", body)
        return JSONReply(await self._json_body(ctx, resp))

    async def embeddings(self, ctx, body: dict):
        resp = await self._post(ctx, "/embeddings", body)
        return JSONReply(await self._json_body(ctx, resp))

    async def _post(self, ctx, path: str, body: dict) -> aiohttp.ClientResponse:
        """Send the request and wait for a success status; map every failure to a GatewayError."""
        url = self.config.base_url + path
        try:
            async with asyncio.timeout(self.config.timeouts.first_byte):
                resp = await self.session.post(url, data=orjson.dumps(body),
                                               headers={"Content-Type": "application/json"})
                if resp.status >= 400:
                    raise await self._error(resp)
        except GatewayError:
            raise
        except TimeoutError as exc:
            raise ProviderError(f"provider {self.name!r} did not answer within "
                                f"{self.config.timeouts.first_byte:g}s", code="upstream_timeout") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(f"could not reach provider {self.name!r}: {type(exc).__name__}",
                                code="upstream_unreachable") from exc
        return resp

    async def _error(self, resp: aiohttp.ClientResponse) -> GatewayError:
        try:
            raw = await _read_body(resp.content, self.config.timeouts.idle, MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            resp.close()
        return from_upstream(resp.status, error_message(raw), provider=self.name,
                             retry_after=resp.headers.get("Retry-After"))

    async def _json_body(self, ctx, resp: aiohttp.ClientResponse) -> dict:
        try:
            raw = await _read_body(resp.content, self.config.timeouts.idle, MAX_RESPONSE_BODY)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ProviderError(f"provider {self.name!r} broke off its response", code="upstream_broken") from exc
        finally:
            resp.close()
        if len(raw) > MAX_RESPONSE_BODY:
            raise ProviderError(f"provider {self.name!r} sent a response over the size limit",
                                code="upstream_too_large")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(f"provider {self.name!r} sent malformed JSON", code="upstream_malformed") from exc
        if not isinstance(data, dict) or ("error" in data and "choices" not in data and "data" not in data):
            raise ProviderError(f"provider {self.name!r} answered 200 with an error: "
                                f"{error_message(raw)}", code="upstream_error_body")
        usage = data.get("usage")
        if isinstance(usage, dict):
            ctx.usage = Usage.from_openai(usage)
            usage["cost"] = ctx.finalize_cost()
        return data

    async def _stream(self, ctx, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Forward the events of each upstream read as one item, as received."""
        finished = False
        try:
            async for batch in iter_batches(_chunks(resp.content, self.config.timeouts.idle)):
                out = []
                done = False
                failure = None
                for ev in batch:
                    data = ev.data
                    if not data:
                        continue
                    if data == b"[DONE]":
                        done = True
                        break
                    failure = self._bad_event(data)
                    if failure is not None:     # what came before it still goes out first
                        break
                    if b'"usage":{' in data or b'"usage": {' in data:
                        usage_event = self._usage_event(ctx, data)
                        if usage_event is not None:
                            out.append(usage_event)
                        continue
                    if b'"finish_reason":"' in data or b'"finish_reason": "' in data:
                        finished = True
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
                raise ProviderError(f"provider {self.name!r} closed the stream early", code="upstream_broken")
            yield DONE
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            what = "stalled" if isinstance(exc, TimeoutError) else "broke off the stream"
            raise ProviderError(f"provider {self.name!r} {what}", code="upstream_broken") from exc
        finally:
            resp.close()

    def _bad_event(self, data: bytes) -> ProviderError | None:
        if data[:1] != b"{" or data.rstrip()[-1:] != b"}":     # truncated or not JSON at all
            return ProviderError(f"provider {self.name!r} sent a malformed stream event", code="upstream_malformed")
        if data[:9] == b'{"error":' or data[:10] == b'{"error": ':
            return ProviderError(f"provider {self.name!r} failed mid-stream: {error_message(data)}",
                                 code="upstream_stream_error")
        return None

    def _usage_event(self, ctx, data: bytes) -> bytes | None:
        chunk = orjson.loads(data)
        usage = chunk.get("usage")
        ctx.usage = Usage.from_openai(usage)
        if chunk.get("choices"):
            return data_event(data)  # usage riding on a content chunk (some servers do this)
        if not ctx.include_usage:
            return None
        usage["cost"] = ctx.finalize_cost()
        return data_event(orjson.dumps(chunk))


async def _read_body(content: aiohttp.StreamReader, idle: float, limit: int) -> bytes:
    """The whole body (StreamReader.read(n) returns only what has arrived so far), stopping
    once it is over `limit` bytes; `idle` bounds each wait for more."""
    if content.is_eof():                    # all of it already arrived: no timers, no waits
        return content.read_nowait(limit + 1)
    parts, size = [], 0
    while size <= limit:
        async with asyncio.timeout(idle):
            chunk = await content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def _chunks(content: aiohttp.StreamReader, idle: float) -> AsyncIterator[bytes]:
    while True:
        async with asyncio.timeout(idle):
            chunk = await content.readany()
        if not chunk:
            return
        yield chunk


def error_message(raw: bytes) -> str:
    """The human message of an upstream error body, whatever its shape."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]
