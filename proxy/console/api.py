"""The console's own JSON endpoints (/v1/console/*), behind the same auth as the account API:
a normal key sees its own usage, a management key everyone's. Numbers come from the ledger's
read interface (the queries of /v1/account/analytics), never from SQL of the console's own.

- `overview`: requests, errors, spend, cache hits for today / 7 d / 30 d (UTC days), p50/p99
  latency over the last 24 h, the live config_version, and who is signed in.
- `charts`: analytics rows grouped by day, model or key, plus the same numbers drawn as SVG.
- `routes` (management key): every model's targets and pricing, and the live cooldowns.
"""
from __future__ import annotations

import asyncio
import time

from proxy.account import _scope, parse_time
from proxy.console import svg
from proxy.context import JSONReply, RequestContext
from proxy.errors import InvalidRequest, NotFound, PermissionDenied
from proxy.routes_table import rows as route_rows
from proxy.store.keys import usd
from proxy.store.usage import DAY, utc_day_start

WINDOWS = (("today", 1), ("7d", 7), ("30d", 30))     # whole UTC days, today included
LATENCY_WINDOW = 86400.0         # p50/p99 over the last 24 h ...
LATENCY_SAMPLES = 20_000         # ... of at most this many newest rows (~0.1 s of the database thread)
CHART_GROUPS = ("day", "model", "key")
CHART_METRICS = ("cost", "requests", "errors", "prompt_tokens", "completion_tokens")
CHART_DAYS = 366                 # the longest window a chart covers
CHART_TOP = 12                   # bars drawn for models or keys; the rest summed as "others"
_TOTALS = ("requests", "errors", "cost", "cache_hits")


def _who(ctx: RequestContext) -> dict:
    key = ctx.key
    if key is None:          # auth: {mode: none}
        return {"role": "management", "key_id": None, "label": None}
    return {"role": "management" if key.management else "key", "key_id": key.id, "label": key.label}


async def console_endpoint(ctx: RequestContext) -> JSONReply:
    key_id = _scope(ctx)       # 401 without a key; a normal key is held to its own rows
    name = ctx.request.match_info.get("view", "")
    if name == "overview":
        return JSONReply(await _overview(ctx, key_id))
    if name == "charts":
        return JSONReply(await _chart(ctx, key_id))
    if name == "routes":
        return JSONReply(await _routes(ctx))
    raise NotFound(f"Unknown console view '{name[:64]}'.", code="unknown_endpoint")


async def _overview(ctx: RequestContext, key_id: str | None) -> dict:
    now = time.time()
    today = utc_day_start(now)
    ledger = ctx.gateway.ledger
    days = await ledger.analytics(key_id, "day", today - (WINDOWS[-1][1] - 1) * DAY, None)
    latency = await ledger.latency(key_id, now - LATENCY_WINDOW, LATENCY_SAMPLES)
    windows = {}
    for name, n in WINDOWS:
        first = time.strftime("%Y-%m-%d", time.gmtime(today - (n - 1) * DAY))
        picked = [d for d in days if d["day"] >= first]
        totals = {c: sum(d[c] for d in picked) for c in _TOTALS}
        totals["cost"] = usd(totals["cost"])
        totals["cache_hit_ratio"] = round(totals["cache_hits"] / totals["requests"], 4) if totals["requests"] else None
        windows[name] = totals
    return {"object": "console.overview", "who": _who(ctx), "key_id": key_id,
            "config_version": ctx.state.config.version, "windows": windows,
            "latency": {"window": "24h", **latency}, "generated_at": now}


async def _chart(ctx: RequestContext, key_id: str | None) -> dict:
    query = ctx.request.query
    by, metric = query.get("by", "day"), query.get("metric", "cost")
    if by not in CHART_GROUPS:
        raise InvalidRequest("'by' must be day, model or key.", param="by")
    if metric not in CHART_METRICS:
        raise InvalidRequest(f"'metric' must be one of {', '.join(CHART_METRICS)}.", param="metric")
    since = max(parse_time(query.get("since") or "30d", "since"), utc_day_start() - (CHART_DAYS - 1) * DAY)
    if by == "day":          # whole UTC days, so the chart's days are the overview's
        since = utc_day_start(since)
    rows = await ctx.gateway.ledger.analytics(key_id, by, since, None)
    for r in rows:
        r["cost"] = usd(r["cost"])
    title = f"{metric.replace('_', ' ')} by {by}, since {time.strftime('%Y-%m-%d', time.gmtime(since))} (UTC)"
    if by == "day":
        image = svg.columns(_every_day(rows, metric, since), metric, title)
    else:
        points = sorted(((_label(r, by), r[metric]) for r in rows), key=lambda p: -p[1])
        if len(points) > CHART_TOP:
            points = points[:CHART_TOP - 1] + [("others", sum(v for _, v in points[CHART_TOP - 1:]))]
        image = svg.bars(points, metric, title)
    return {"object": "console.chart", "by": by, "metric": metric, "since": since, "data": rows, "svg": image}


def _label(row: dict, by: str) -> str:
    if by == "model":
        return row["model"] or "(no model)"
    return row.get("key_label") or row.get("key_id") or "(no key)"


def _every_day(rows: list[dict], metric: str, since: float) -> list[tuple[str, float]]:
    """One point per UTC day from `since` to today, 0 where the ledger has nothing."""
    by_day = {r["day"]: r[metric] for r in rows}
    out, day, end = [], since, time.time()
    while day <= end:
        name = time.strftime("%Y-%m-%d", time.gmtime(day))
        out.append((name, by_day.get(name, 0)))
        day += DAY
    return out


async def _routes(ctx: RequestContext) -> dict:
    if ctx.key is not None and not ctx.key.management:
        raise PermissionDenied("The routes view needs a management key.", code="management_key_required")
    config, health = ctx.state.config, ctx.state.health
    table = await asyncio.to_thread(route_rows, config)   # reads the workers' cooldown gauges from data_dir
    local = {k: left for k, left in health.snapshot().items() if left > 0}
    for r in table:      # cooling in any worker (their gauges, up to a second old) or in this one
        r["cooling"] = "cooling down" in r["status"] or (r["provider"], r["upstream_model"]) in local
    cooldowns = [{"provider": p, "upstream_model": m, "seconds_left": left} for (p, m), left in local.items()]
    return {"object": "list", "config_version": config.version, "data": table, "cooldowns": cooldowns}
