"""Access log: one structured JSON line per request. No prompts, no secrets."""
from __future__ import annotations

from proxy import logs
from proxy.context import round_ms
from proxy.pipeline import Middleware


class AccessLog(Middleware):
    name = "access_log"

    def finish(self, ctx) -> None:
        u = ctx.usage
        key = ctx.key
        request = ctx.request
        logs.access_line({
            "event": "request", "request_id": ctx.request_id, "method": request.method, "path": request.path,
            "endpoint": ctx.endpoint, "key": key.label if key else None, "model": ctx.requested_model,
            "preset": ctx.preset, "provider": ctx.provider, "upstream_model": ctx.upstream_model,
            "status": ctx.status, "error": ctx.error_code, "stream": ctx.stream,
            "latency_ms": round_ms(ctx.latency_ms, 100),
            "ttft_ms": round_ms(ctx.ttft_ms, 100) if ctx.ttft_ms is not None else None,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens, "reasoning_tokens": u.reasoning_tokens,
            "cost": ctx.cost, "cache": ctx.cache_status, "attempts": ctx.attempts})


def access_log(gateway, config) -> AccessLog:
    return AccessLog()
