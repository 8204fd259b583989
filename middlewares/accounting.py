"""Token accounting: every inference request (cache hits, failures and disconnects included)
becomes one ledger row and one metrics observation. Writes are batched off the request path
by the LedgerWriter."""
from __future__ import annotations

from proxy.context import round_ms
from proxy.pipeline import Middleware

INFERENCE = frozenset(("chat", "messages", "embeddings"))


def ledger_row(ctx) -> tuple:
    """The request's ledger row: values in LEDGER_COLUMNS order (see proxy.store.ledger)."""
    u = ctx.usage
    key = ctx.key
    match = ctx.match
    ttft = ctx.ttft_ms
    return (
        ctx.created, ctx.request_id, key.id if key else None, key.label if key else None,
        match.public_model if match else ctx.model, ctx.preset, ctx.provider, ctx.upstream_model,
        ctx.endpoint, ctx.status, ctx.error_type, ctx.stream, ctx.cache_hit,
        u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens,
        ctx.cost, round_ms(ctx.latency_ms, 1000), None if ttft is None else round_ms(ttft, 1000),
        ctx.partial, ctx.attempts,
    )


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
