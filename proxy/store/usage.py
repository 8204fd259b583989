"""The ledger's read side: activity (rows), analytics and balances, over the ledger's rows and
the daily rollups (`ledger_daily`) that retention leaves of older days (see retention.py).

A row is either in `ledger` or, once pruned, counted in its day's rollup (moved in one
transaction), so sums over both count every request once. Rollups are whole UTC days: a window
that starts or ends inside a pruned day counts that whole day. Activity lists rows, so only the
retained ones. Functions take the connection first and run in the database thread.
"""
from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from proxy.store.db import LEDGER_COLUMNS, connect, fetch_dicts

GROUPS = ("day", "model", "key")
_BOOL_COLUMNS = ("stream", "cache_hit", "partial")
DAY = 86400


def utc_day_start(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return now - now % DAY


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _where(key_id: str | None, since: float | None, until: float | None) -> tuple[str, list]:
    clauses, params = [], []
    if key_id is not None:
        clauses.append("key_id = ?")
        params.append(key_id)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("created_at < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _where_days(key_id: str | None, since: float | None, until: float | None) -> tuple[str, list]:
    """The rollup days of a window: every day that overlaps [since, until)."""
    clauses, params = [], []
    if key_id is not None:
        clauses.append("key_id = ?")
        params.append(key_id)
    if since is not None:
        clauses.append("day >= ?")
        params.append(_day(since))
    if until is not None:
        clauses.append("day < ?")
        params.append(_day(until if until % DAY == 0 else until + DAY))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _bools(rows: list[dict]) -> list[dict]:
    for r in rows:
        for c in _BOOL_COLUMNS:
            r[c] = bool(r[c])
    return rows


# an activity `status` filter: "ok", "error" (as analytics counts errors) or one HTTP status
_STATUS_SQL = {"ok": "status < 400 AND error_type IS NULL", "error": "(status >= 400 OR error_type IS NOT NULL)"}


def query_activity(conn: sqlite3.Connection, key_id: str | None, limit: int, offset: int,
                   since: float | None, until: float | None = None, model: str | None = None,
                   status: str | int | None = None) -> list[dict]:
    where, params = _where(key_id, since, until)
    clauses = [where[len(" WHERE "):]] if where else []
    if model is not None:
        clauses.append("model = ?")
        params.append(model)
    if isinstance(status, int):
        clauses.append("status = ?")
        params.append(status)
    elif status is not None:
        clauses.append(_STATUS_SQL[status])
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    sql = (f"SELECT id, {', '.join(LEDGER_COLUMNS)} FROM ledger{where} "
           "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?")
    return _bools(fetch_dicts(conn, sql, [*params, limit, offset]))


def query_latency(conn: sqlite3.Connection, key_id: str | None, since: float, limit: int) -> dict:
    """p50 and p99 of latency_ms (nearest rank) over the newest `limit` rows since `since`."""
    where, params = _where(key_id, since, None)
    sql = (f"SELECT latency_ms FROM ledger{where} AND latency_ms IS NOT NULL "
           "ORDER BY created_at DESC LIMIT ?")
    values = sorted(v for (v,) in conn.execute(sql, [*params, limit]))
    n = len(values)
    if not n:
        return {"p50_ms": None, "p99_ms": None, "samples": 0}
    return {"p50_ms": values[max(math.ceil(n * 0.50), 1) - 1], "p99_ms": values[max(math.ceil(n * 0.99), 1) - 1],
            "samples": n}


# group -> (its columns over ledger rows, over rollups, the outer select, the order)
_GROUP_SQL = {
    "day": ("strftime('%Y-%m-%d', created_at, 'unixepoch') AS day", "day", "day", "day ASC"),
    "model": ("coalesce(model, '') AS model", "model", "model", "cost DESC, model ASC"),
    "key": ("key_id, max(key_label) AS key_label", "nullif(key_id, '') AS key_id, max(key_label) AS key_label",
            "key_id, max(key_label) AS key_label", "cost DESC, key_id ASC"),
}
_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_ROW_AGGREGATES = ", ".join(
    ["count(*) AS requests"] + [f"sum({c}) AS {c}" for c in _SUMS] +
    ["sum(cost) AS cost", "sum(cache_hit) AS cache_hits",
     "sum(CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END) AS errors"])
_ROLLUP_AGGREGATES = ", ".join(f"sum({c}) AS {c}" for c in ("requests", *_SUMS, "cost", "cache_hits", "errors"))
_OUTER = ", ".join(f"coalesce(sum({c}), {'0.0' if c == 'cost' else 0}) AS {c}"
                   for c in ("requests", *_SUMS, "cost", "cache_hits", "errors"))


def query_analytics(conn: sqlite3.Connection, key_id: str | None, group_by: str,
                    since: float | None, until: float | None) -> list[dict]:
    """Per group: requests, prompt/completion/cached/cache_write/reasoning _tokens, cost,
    cache_hits, errors (status >= 400 or an error_type), over rows and rollups."""
    if group_by not in _GROUP_SQL:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    rows_group, days_group, outer, order = _GROUP_SQL[group_by]
    where, params = _where(key_id, since, until)
    where_days, params_days = _where_days(key_id, since, until)
    sql = (f"SELECT {outer}, {_OUTER} FROM ("
           f"SELECT {rows_group}, {_ROW_AGGREGATES} FROM ledger{where} GROUP BY 1 UNION ALL "
           f"SELECT {days_group}, {_ROLLUP_AGGREGATES} FROM ledger_daily{where_days} GROUP BY 1"
           f") GROUP BY 1 ORDER BY {order}")
    return fetch_dicts(conn, sql, [*params, *params_days])


def query_spend(conn: sqlite3.Connection, key_id: str | None, since: float | None) -> float:
    """USD in the ledger's rows since `since` (today's spend: today is never pruned)."""
    where, params = _where(key_id, since, None)
    return conn.execute(f"SELECT coalesce(sum(cost), 0.0) FROM ledger{where}", params).fetchone()[0]


def query_balance(conn: sqlite3.Connection, key_id: str | None, now: float | None) -> dict:
    where, params = _where(key_id, None, None)
    where_days, params_days = _where_days(key_id, None, None)
    requests, total = conn.execute(
        f"SELECT coalesce(sum(n), 0), coalesce(sum(c), 0.0) FROM ("
        f"SELECT count(*) AS n, sum(cost) AS c FROM ledger{where} UNION ALL "
        f"SELECT sum(requests), sum(cost) FROM ledger_daily{where_days})", [*params, *params_days]).fetchone()
    balance = None
    if key_id is not None:
        found = conn.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        balance = found[0] if found else None
    return {"key_id": key_id, "balance": balance, "total_spent": total,
            "spent_today": query_spend(conn, key_id, utc_day_start(now)), "requests": requests}


def usage_report(db_path: str | Path, by: str = "model", since: float | None = None,
                 until: float | None = None, key_id: str | None = None) -> list[dict]:
    """`analytics` for the CLI: opens its own connection, blocking."""
    conn = connect(db_path)
    try:
        return query_analytics(conn, key_id, by, since, until)
    finally:
        conn.close()


_REPORT_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                   "reasoning_tokens", "cost", "cache_hits", "errors")


def format_usage_table(rows: list[dict], by: str = "model") -> str:
    """Plain-text table of `usage_report` rows, with a total line."""
    first = {"day": "day", "model": "model", "key": "key_id"}[by]
    header = (first, *_REPORT_COLUMNS)
    totals = {c: sum(r[c] for r in rows) for c in _REPORT_COLUMNS}

    def cells(name: Any, r: dict) -> list[str]:
        return [str(name)] + [f"{r[c]:.6f}" if c == "cost" else str(r[c])
                              for c in _REPORT_COLUMNS]

    body = [cells(r[first] if r[first] is not None else "-", r) for r in rows]
    body.append(cells("TOTAL", totals))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths)))]
    for b in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)
