"""Legacy text completions on an OpenAI-compatible upstream: POST {base_url}/completions with the
client's body as sent (model rewritten, the gateway's fields removed), the answer forwarded as
the chat pass-through forwards it (stream bytes as received, usage always asked for and learnt,
the usage chunk passed on only when the client asked, `cost` added)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.context import JSONReply, StreamReply
from proxy.providers.openai import JSON_HEADERS

if TYPE_CHECKING:
    from proxy.context import RequestContext
    from proxy.providers.openai import OpenAIProvider


async def passthrough(ctx: "RequestContext", provider: "OpenAIProvider", body: dict):
    url = provider.config.base_url + "/completions"
    if body.get("stream"):
        opts = body.get("stream_options")
        body["stream_options"] = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
        return StreamReply(provider._stream(ctx, await provider.post(url, body, JSON_HEADERS)))
    return JSONReply(provider._reply(ctx, await provider.read_json(await provider.post(url, body, JSON_HEADERS))))
