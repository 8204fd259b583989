"""Legacy text completions on an OpenAI-compatible upstream: POST {base_url}/completions with the
client's body as sent (model rewritten, the gateway's fields removed), the answer forwarded as
the chat pass-through forwards it (stream bytes as received, usage always asked for and learnt,
the usage chunk passed on only when the client asked, `cost` added)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.context import RequestContext
    from proxy.providers.openai import OpenAIProvider


async def passthrough(ctx: "RequestContext", provider: "OpenAIProvider", body: dict):
    return await provider.forward(ctx, "/completions", body)
