"""Account endpoints: balance, activity and analytics from the ledger (own key, or all with a
management key), and key management (management key only), with Routeway's field names."""
from __future__ import annotations

import datetime as dt
import math
import re
import time

from proxy.context import JSONReply, RequestContext
from proxy.errors import AuthenticationError, InvalidRequest, NotFound, PermissionDenied
from proxy.store.keys import check_fields, usd
from proxy.validate import read_json

_RELATIVE = re.compile(r"^(\d{1,12})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | None, param: str) -> float | None:
    """Unix seconds, an ISO date/time, or a relative span such as 7d, 24h, 30m."""
    if value is None or value == "":
        return None
    m = _RELATIVE.match(value)
    if m:
        return time.time() - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        seconds = _iso(value)
    if not math.isfinite(seconds):     # not a time, or "nan", "inf", "1e999"
        raise InvalidRequest(f"'{param}' must be unix seconds, an ISO date or a span like 7d.", param=param)
    return seconds


def _iso(value: str) -> float:
    """Unix seconds of an ISO date/time (UTC unless it says otherwise); NaN if it is none."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return math.nan
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def parse_expiry(value: str | float | None, param: str = "expires_at") -> float | None:
    """Like parse_time, but a span such as 30d means that long from now, not ago."""
    if isinstance(value, str):
        m = _RELATIVE.match(value)
        if m:
            return time.time() + int(m.group(1)) * _UNITS[m.group(2)]
        return parse_time(value, param)
    return value


def _int(query, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}.", param=name)
    return value


def _status(value: str | None) -> str | int | None:
    """An activity `status` filter: ok, error, or one HTTP status."""
    if not value:
        return None
    if value in ("ok", "error"):
        return value
    if value.isdigit() and 100 <= int(value) <= 599:
        return int(value)
    raise InvalidRequest("'status' must be ok, error or an HTTP status such as 429.", param="status")


def _scope(ctx: RequestContext) -> str | None:
    """Whose ledger rows: a normal key sees its own; a management key all, or ?key_id=."""
    key = ctx.key
    if key is None:
        if ctx.state.config.auth_mode == "none":
            return ctx.request.query.get("key_id")
        raise AuthenticationError("Account endpoints need an API key.", code="missing_api_key")
    if key.management:
        return ctx.request.query.get("key_id")
    return key.id


async def account_endpoint(ctx: RequestContext) -> JSONReply:
    path, method = ctx.request.path, ctx.request.method
    if path.startswith("/v1/account/keys"):
        return await _keys(ctx, method, ctx.request.match_info.get("key_id"))
    gw = ctx.gateway
    query = ctx.request.query
    key_id = _scope(ctx)
    since, until = parse_time(query.get("since"), "since"), parse_time(query.get("until"), "until")
    if path.endswith("/balance"):
        data = await gw.ledger.balance(key_id)
        key = ctx.key
        if key is not None and not key.management:
            data.update(label=key.label, daily_limit=key.daily_limit,
                        remaining_today=(max(key.daily_limit - data["spent_today"], 0.0)
                                         if key.daily_limit is not None else None))
            if key.source == "static" and key.balance is not None:
                data["balance"] = key.balance - (data.get("total_spent") or 0.0)
        for name in ("balance", "total_spent", "spent_today", "remaining_today"):
            if name in data:
                data[name] = usd(data[name])
        return JSONReply({"data": data})
    if path.endswith("/activity"):
        limit, offset = _int(query, "limit", 50, 1, 1000), _int(query, "offset", 0, 0, 10**9)
        rows = await gw.ledger.activity(key_id, limit + 1, offset, since, until, query.get("model") or None,
                                        _status(query.get("status")))
        return JSONReply({"object": "list", "data": rows[:limit], "limit": limit, "offset": offset,
                          "has_more": len(rows) > limit})
    group_by = query.get("group_by", "day")
    if group_by not in ("day", "model", "key"):
        raise InvalidRequest("'group_by' must be day, model or key.", param="group_by")
    since = since if since is not None else time.time() - 30 * 86400
    rows = await gw.ledger.analytics(key_id, group_by, since, until)
    for r in rows:
        r["cost"] = usd(r["cost"])
    return JSONReply({"object": "list", "group_by": group_by, "since": since, "until": until, "data": rows})


def key_fields(body, partial: bool) -> dict:
    """A JSON body's key fields, checked (see check_fields); expires_at may be a string."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if isinstance(body.get("expires_at"), str):
        body = {**body, "expires_at": parse_expiry(body["expires_at"])}
    return check_fields(body, partial=partial)


async def _keys(ctx: RequestContext, method: str, key_id: str | None) -> JSONReply:
    if ctx.key is None or not ctx.key.management:
        raise PermissionDenied("Key management needs a management key (management_keys in routes.yaml).",
                               code="management_key_required")
    store = ctx.gateway.keys
    if key_id is None and method == "GET":
        return JSONReply({"data": await store.alist()})
    if key_id is None:   # POST
        fields = key_fields(await read_json(ctx.request, ctx), partial=False)
        record, secret = await store.acreate(**fields)
        return JSONReply({"data": {**record, "key": secret}, "key": secret}, status=201)
    if method == "GET":
        record = await store.aget(key_id)
    elif method == "PATCH":
        record = await store.aupdate(key_id, **key_fields(await read_json(ctx.request, ctx), partial=True))
    else:
        if not await store.arevoke(key_id):
            raise NotFound(f"No key with id '{key_id}'.", param="id", code="key_not_found")
        return JSONReply({"data": {"id": key_id, "deleted": True}})
    if record is None:
        raise NotFound(f"No key with id '{key_id}'.", param="id", code="key_not_found")
    return JSONReply({"data": record})
