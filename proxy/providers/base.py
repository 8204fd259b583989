"""The provider interface: one module per upstream type implements it.

A provider turns an OpenAI Chat Completions request body (model already rewritten to the
upstream name) into a Reply. Errors are raised as GatewayError subclasses, mapped at the
boundary, never later: a remote provider subclasses proxy.providers.http.HTTPProvider, which
maps statuses and transport failures to the typed upstream errors (proxy.errors: timeout,
unreachable, bad response, truncated, status N; retryability is the type's) and takes the
provider's secrets out of every upstream text.

Streams: `chat` returns only once the upstream has answered with a success status, so a
failure before the first byte is a real HTTP status. The returned StreamReply yields
OpenAI-format SSE events (an item may hold several: all that one upstream read brought);
the provider keeps `ctx.usage` up to date (it always asks the upstream for usage) and forwards the usage chunk only when `ctx.include_usage`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from proxy.errors import InvalidRequest

if TYPE_CHECKING:
    from proxy.config import ProviderConfig
    from proxy.context import Reply, RequestContext


class Provider:
    type: ClassVar[str] = ""
    #: capabilities a model on this provider has unless the route says otherwise
    default_capabilities: ClassVar[dict[str, bool]] = {}

    def __init__(self, config: "ProviderConfig"):
        self.config = config
        self.name = config.name

    async def start(self) -> None:
        """Open pooled resources (one ClientSession per provider)."""

    async def close(self) -> None:
        """Release pooled resources."""

    async def chat(self, ctx: "RequestContext", body: dict) -> "Reply":
        raise NotImplementedError

    async def embeddings(self, ctx: "RequestContext", body: dict) -> "Reply":
        raise InvalidRequest(f"provider {self.name!r} ({self.type}) does not serve embeddings",
                             param="model", code="unsupported_endpoint")
