"""Token accounting: every inference request (cache hits, failures and disconnects included)
becomes one ledger row and one metrics observation. Writes are batched off the request path
by the LedgerWriter. A request refused with 401 (no key, an unknown, disabled or expired one)
is a metrics observation only: it has no key to charge, and junk keys must not fill the disk
(auth counts them by reason; the access log samples them)."""
from __future__ import annotations

from proxy.context import INFERENCE_ENDPOINTS
from proxy.pipeline import Middleware
from proxy.store.db import NONE_NUMBER, NONE_TEXT

NAME_MAX = 256   # characters of a model name kept in a row (a client may send 100 KB ones)


def ledger_row(ctx) -> tuple:
    """The request's ledger row: values in LEDGER_COLUMNS order, flags as 0/1 and missing
    values as NONE_TEXT / NONE_NUMBER, which bind faster than None (see proxy.store.ledger)."""
    u = ctx.usage
    key = ctx.key
    match = ctx.match
    ttft = ctx.ttft_ms
    return (
        ctx.created, ctx.request_id, key.id if key else NONE_TEXT, key.label if key else NONE_TEXT,
        (match.public_model if match else ctx.model or NONE_TEXT)[:NAME_MAX], ctx.preset or NONE_TEXT,
        ctx.provider or NONE_TEXT, (ctx.upstream_model or NONE_TEXT)[:NAME_MAX], ctx.endpoint, ctx.status,
        ctx.error_type or NONE_TEXT, 1 if ctx.stream else 0, 1 if ctx.cache_hit else 0,
        u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens,
        # durations to 1 µs, as round_ms(ms, 1000) does (inline: a call per value costs more)
        ctx.cost, int(ctx.latency_ms * 1000 + 0.5) / 1000,
        NONE_NUMBER if ttft is None else int(ttft * 1000 + 0.5) / 1000,
        1 if ctx.partial else 0, ctx.attempts,
    )


class Accounting(Middleware):
    name = "accounting"

    def __init__(self, gateway):
        self.ledger = gateway.ledger
        self.metrics = gateway.metrics

    def finish(self, ctx) -> None:
        if ctx.endpoint not in INFERENCE_ENDPOINTS:
            return
        row = ledger_row(ctx)
        match = ctx.match
        self.metrics.observe(row, match.route.name if match is not None else "")
        if ctx.status != 401:
            self.ledger.record(row)


def accounting(gateway, config) -> Accounting:
    return Accounting(gateway)
