"""Access log: one structured JSON line per request. No prompts, no secrets.

Requests refused with 401 (no key, an unknown, disabled or expired one) are sampled: at most one
line a second per worker, carrying `suppressed_401`, the number of 401 lines left out since the
previous one (the total is in `modelway_auth_failures_total`). A flood of junk keys cannot fill
the journal."""
from __future__ import annotations

import time

from proxy import logs
from proxy.context import round_ms
from proxy.pipeline import Middleware

SAMPLE_401_SECONDS = 1.0
NAME_MAX = 256   # characters of a model name logged (a client may send 100 KB ones)


class AccessLog(Middleware):
    name = "access_log"

    def __init__(self) -> None:
        self._next_401 = 0.0       # monotonic time from which the next 401 gets a line
        self._suppressed_401 = 0

    def finish(self, ctx) -> None:
        u = ctx.usage
        key = ctx.key
        request = ctx.request
        model, upstream = ctx.requested_model, ctx.upstream_model
        record = {
            "event": "request", "request_id": ctx.request_id, "method": request.method, "path": request.path,
            "endpoint": ctx.endpoint, "key": key.label if key else None, "model": model and model[:NAME_MAX],
            "preset": ctx.preset, "provider": ctx.provider, "upstream_model": upstream and upstream[:NAME_MAX],
            "status": ctx.status, "error": ctx.error_code, "stream": ctx.stream,
            "latency_ms": round_ms(ctx.latency_ms, 100),
            "ttft_ms": round_ms(ctx.ttft_ms, 100) if ctx.ttft_ms is not None else None,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens, "reasoning_tokens": u.reasoning_tokens,
            "cost": ctx.cost, "cache": ctx.cache_status, "attempts": ctx.attempts}
        if ctx.status == 401:
            now = time.monotonic()
            if now < self._next_401:
                self._suppressed_401 += 1
                return
            self._next_401 = now + SAMPLE_401_SECONDS
            record["suppressed_401"], self._suppressed_401 = self._suppressed_401, 0
        logs.access_line(record)


def access_log(gateway, config) -> AccessLog:
    return AccessLog()
