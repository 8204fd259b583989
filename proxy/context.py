"""Per-request state shared by the middleware chain, the dispatcher and the providers."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.config import ModelRoute, Pricing, Target
    from proxy.gateway import Gateway, State


INFERENCE_ENDPOINTS = frozenset(("chat", "messages", "embeddings", "responses", "completions"))   # metered and rate limited


def round_ms(ms: float, per: int) -> float:
    """A non-negative duration rounded to 1/per ms (round(x, n) formats the float: slower)."""
    return int(ms * per + 0.5) / per


_INT_ONLY = {int}


def token_count(value: Any) -> int:
    """A token count from an upstream's usage object: a non-negative int as it is; a float or
    a numeric string (some OpenAI-compatible servers send them) read as one; anything else
    (missing, null, negative, not a number) counts 0, never an error for an answer that is fine."""
    if type(value) is int:
        return value if value >= 0 else 0
    if value is None:
        return 0
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError, OverflowError):
        return 0


@dataclass(slots=True)
class Usage:
    """Token usage in OpenAI's meaning: prompt_tokens includes cached and cache-write tokens."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    known: bool = False

    @classmethod
    def from_openai(cls, u: dict | None) -> "Usage":
        if not u:
            return cls()
        ptd = u.get("prompt_tokens_details") or {}
        ctd = u.get("completion_tokens_details") or {}
        if type(ptd) is not dict or type(ctd) is not dict:
            ptd, ctd = (ptd if type(ptd) is dict else {}), (ctd if type(ctd) is dict else {})
        counts = (u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0, ptd.get("cached_tokens") or 0,
                  ptd.get("cache_write_tokens") or 0, ctd.get("reasoning_tokens") or 0)
        if set(map(type, counts)) != _INT_ONLY or min(counts) < 0:     # odd values: rare
            counts = tuple(map(token_count, counts))
        return cls(*counts, known=True)

    def cost(self, pricing: "Pricing | None") -> float:
        """USD by the route's pricing (USD per 1M tokens); cached and cache-write at their prices."""
        if pricing is None:
            return 0.0
        uncached = max(self.prompt_tokens - self.cached_tokens - self.cache_write_tokens, 0)
        total = (uncached * pricing.input
                 + self.cached_tokens * pricing.cached_input_price
                 + self.cache_write_tokens * pricing.cache_write_price
                 + self.completion_tokens * pricing.output)
        return round(total / 1_000_000, 10)

    def to_openai(self, cost: float | None = None) -> dict:
        d: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens,
                                      "cache_write_tokens": self.cache_write_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
        if cost is not None:
            d["cost"] = cost
        return d


@dataclass(slots=True)
class JSONReply:
    """A complete response. `body` is a dict (serialised once by the writer) or ready bytes."""
    body: dict | bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamReply:
    """An SSE response. `events` yields bytes holding one or more complete SSE events
    (b"data: ...\\n\\n"; proxy.sse.split_events takes an item apart), the last one
    b"data: [DONE]\\n\\n". Middlewares that care about streams wrap `events`."""
    events: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


Reply = JSONReply | StreamReply


@dataclass(slots=True)
class KeyIdentity:
    """Who is calling. Filled by the auth middleware; None when auth is off."""
    id: str
    label: str
    allowed_models: tuple[str, ...] = ()
    minute_limit: int | None = None
    daily_limit: float | None = None
    balance: float | None = None
    max_concurrent: int | None = None
    management: bool = False
    source: str = "static"   # static | managed | management

    def allows(self, model: str) -> bool:
        if self.management or not self.allowed_models:
            return True
        from fnmatch import fnmatchcase
        return any(fnmatchcase(model, pat) for pat in self.allowed_models)


@dataclass(slots=True)
class RouteMatch:
    """A resolved model name: the route, its public name and what the suffix asked for."""
    route: "ModelRoute"
    public_model: str            # the name the client used, without a :thinking suffix
    wildcard_rest: str | None = None   # for "prefix/*" routes: the part after the prefix
    reasoning_effort: str | None = None

    def upstream_model(self, target: "Target") -> str:
        if target.model:
            return target.model
        if self.wildcard_rest is not None:
            return self.wildcard_rest
        return self.route.name


@dataclass(slots=True)
class RequestContext:
    request: "web.Request"
    gateway: "Gateway"
    request_id: str
    endpoint: str                      # chat | messages | count_tokens | completions | embeddings | models | account
    state: "State | None" = None       # the routing table snapshot this request runs on
    started: float = field(default_factory=time.perf_counter)
    created: float = field(default_factory=time.time)
    body: dict | None = None
    model: str | None = None           # as requested (after preset expansion)
    requested_model: str | None = None  # exactly what the client sent
    stream: bool = False
    include_usage: bool = False        # client asked for the streamed usage chunk
    key: KeyIdentity | None = None
    preset: str | None = None
    match: RouteMatch | None = None
    target: "Target | None" = None
    provider: str | None = None
    upstream_model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    status: int = 0
    error_type: str | None = None
    error_code: str | None = None
    cache_hit: bool = False
    cache_status: str | None = None    # HIT | MISS | BYPASS
    ttft_ms: float | None = None
    latency_ms: float = 0.0            # until the request completed (set once, for the observers)
    partial: bool = False
    attempts: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    trace: Any = None                  # proxy.tracing.RequestTrace when traces are on

    @property
    def route(self) -> "ModelRoute | None":
        return self.match.route if self.match else None

    def complete(self) -> None:
        """The request is over: fix its latency, then the chain's observers see it."""
        self.latency_ms = (time.perf_counter() - self.started) * 1000.0

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000.0

    def finalize_cost(self) -> float:
        route = self.route
        self.cost = 0.0 if self.cache_hit else self.usage.cost(route.pricing if route else None)
        return self.cost
