"""The Responses API on an OpenAI-compatible upstream, natively (`options: {responses: native}`):
POST {base_url}/responses with the client's body as sent (model rewritten, the gateway's fields
removed; proxy.native), the answer forwarded as the upstream sent it. A plain answer gets `cost`
in its usage; a stream goes on byte-for-byte, only its final event (`response.completed`,
`.incomplete`, `.failed`) is parsed, for the ledger's usage and for the endpoint, which stores
it (ctx.extra[FINAL_RESPONSE]). `error` and `response.failed` events have the provider's
secrets taken out."""
from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
import orjson

from proxy.context import JSONReply, StreamReply, Usage
from proxy.errors import UpstreamBadResponse, UpstreamTruncated
from proxy.providers.http import error_message
from proxy.providers.openai import JSON_HEADERS

if TYPE_CHECKING:
    from proxy.context import RequestContext
    from proxy.providers.openai import OpenAIProvider

FINAL_RESPONSE = "responses_final"        # ctx.extra: the final event's response object
FINAL = frozenset((b"response.completed", b"response.incomplete", b"response.failed"))
REDACTED = frozenset((b"error", b"response.failed"))


async def passthrough(ctx: "RequestContext", provider: "OpenAIProvider", body: dict):
    resp = await provider.post(provider.config.base_url + "/responses", body, JSON_HEADERS)
    if body.get("stream"):
        return StreamReply(_stream(ctx, provider, resp))
    data = await provider.read_json(resp)
    if not isinstance(data, dict) or data.get("error"):
        raise UpstreamBadResponse(f"provider {provider.name!r} answered 200 with an error: "
                                  f"{provider.message(error_message(data))}", code="upstream_error_body")
    usage = data.get("usage")
    if isinstance(usage, dict):
        ctx.usage = responses_usage(usage)
        usage["cost"] = ctx.finalize_cost()
    return JSONReply(data)


async def _stream(ctx: "RequestContext", provider: "OpenAIProvider", resp: aiohttp.ClientResponse
                  ) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for batch in provider.events(resp):
            out = []
            for ev in batch:
                raw = ev.raw
                kind = event_type(ev.event, ev.data)
                if kind in FINAL:
                    finished = True
                    response = _response(ev.data)
                    ctx.extra[FINAL_RESPONSE] = response
                    if isinstance(response.get("usage"), dict):
                        ctx.usage = responses_usage(response["usage"])
                if kind in REDACTED:
                    raw = provider.redact(raw.decode("utf-8", "replace")).encode()
                out.append(raw)
            yield out[0] if len(out) == 1 else b"".join(out)
        if not finished:
            raise UpstreamTruncated(f"provider {provider.name!r} closed the stream early")
    finally:
        resp.close()


def event_type(name: str | None, data: bytes) -> bytes:
    """An event's type: its `event:` name, else (servers that send data lines only) the leading
    `"type"` of its data, without parsing the rest."""
    if name:
        return name.encode()
    if data.startswith(b'{"type":"'):
        return data[9:data.find(b'"', 9)]
    return b""


def _response(data: bytes) -> dict:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    response = event.get("response") if isinstance(event, dict) else None
    return response if isinstance(response, dict) else {}


def responses_usage(u: dict) -> Usage:
    """A Responses API usage object (input / output tokens) as the gateway's Usage."""
    itd, otd = u.get("input_tokens_details"), u.get("output_tokens_details")
    itd, otd = (itd if isinstance(itd, dict) else {}), (otd if isinstance(otd, dict) else {})
    return Usage.from_openai({"prompt_tokens": u.get("input_tokens"), "completion_tokens": u.get("output_tokens"),
                              "prompt_tokens_details": {"cached_tokens": itd.get("cached_tokens")},
                              "completion_tokens_details": {"reasoning_tokens": otd.get("reasoning_tokens")}})
