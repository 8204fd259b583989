"""Access log: one structured JSON line per request. No prompts, no secrets."""
from __future__ import annotations

import structlog

from proxy.pipeline import Middleware


class AccessLog(Middleware):
    name = "access_log"

    def __init__(self, logger_name: str):
        self.log = structlog.get_logger(logger_name)

    def finish(self, ctx) -> None:
        u = ctx.usage
        key = ctx.key
        self.log.info(
            "request", request_id=ctx.request_id, method=ctx.request.method, path=ctx.request.path,
            endpoint=ctx.endpoint, key=key.label if key else None, model=ctx.requested_model,
            preset=ctx.preset, provider=ctx.provider, upstream_model=ctx.upstream_model,
            status=ctx.status, error=ctx.error_code, stream=ctx.stream,
            latency_ms=round(ctx.elapsed_ms(), 2),
            ttft_ms=round(ctx.ttft_ms, 2) if ctx.ttft_ms is not None else None,
            prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens, reasoning_tokens=u.reasoning_tokens,
            cost=ctx.cost, cache=ctx.cache_status, attempts=ctx.attempts)


def access_log(gateway, config, *, logger: str = "modelway.access") -> AccessLog:
    return AccessLog(logger)
