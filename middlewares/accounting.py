"""Token accounting: every inference request (cache hits, failures and disconnects included)
becomes one ledger row and one metrics observation. Writes are batched off the request path
by the LedgerWriter."""
from __future__ import annotations

from proxy.context import round_ms
from proxy.pipeline import Middleware

INFERENCE = frozenset(("chat", "messages", "embeddings"))


def ledger_row(ctx) -> dict:
    u = ctx.usage
    key = ctx.key
    return {
        "created_at": ctx.created, "request_id": ctx.request_id,
        "key_id": key.id if key else None, "key_label": key.label if key else None,
        "managed": bool(key and key.source == "managed"),
        "model": ctx.match.public_model if ctx.match else ctx.model, "preset": ctx.preset,
        "provider": ctx.provider, "upstream_model": ctx.upstream_model, "endpoint": ctx.endpoint,
        "status": ctx.status, "error_type": ctx.error_type, "stream": ctx.stream,
        "cache_hit": ctx.cache_hit, "partial": ctx.partial,
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens,
        "reasoning_tokens": u.reasoning_tokens, "attempts": ctx.attempts,
        "cost": ctx.cost, "latency_ms": round_ms(ctx.latency_ms, 1000),
        "ttft_ms": round_ms(ctx.ttft_ms, 1000) if ctx.ttft_ms is not None else None,
    }


class Accounting(Middleware):
    name = "accounting"

    def __init__(self, gateway):
        self.ledger = gateway.ledger
        self.metrics = gateway.metrics

    def finish(self, ctx) -> None:
        if ctx.endpoint not in INFERENCE:
            return
        row = ledger_row(ctx)
        self.metrics.observe(row)
        self.ledger.record(row)


def accounting(gateway, config) -> Accounting:
    return Accounting(gateway)
