"""The console over HTTP (no browser): its page and files with a strict CSP, its JSON views
with the numbers of a known set of requests, a normal key held to its own rows, charts as
well-formed SVG with hostile labels escaped, the activity filters, the routes' live cooldowns."""
from __future__ import annotations

import re
import xml.dom.minidom

import pytest

from proxy.console.pages import CSP
from proxy.store.ledger import row_values
from proxy.store.usage import DAY, utc_day_start
from tests.console.helpers import HOSTILE
from tests.middlewares.helpers import APP, OPS, OTHER, assert_envelope, call


async def get_raw(http, url: str, headers: dict | None = None):
    async with http.get(url, headers=headers or {}) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_page_and_files_are_served_with_a_strict_csp_and_no_inline_code(gw, http):
    status, headers, page = await get_raw(http, gw.url + "/console")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    html = page.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son\w+=", html)
    assert not re.search(r"https?://", html.replace("http://www.w3.org", "")), "an external resource"
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
        status, headers, body = await get_raw(http, gw.url + "/console/static/" + name)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body
        assert headers["Content-Security-Policy"] == CSP
        status, _, _ = await get_raw(http, gw.url + "/console/static/" + name, {"If-None-Match": headers["ETag"]})
        assert status == 304
    js = (await get_raw(http, gw.url + "/console/static/console.js"))[2].decode()
    assert "innerHTML" not in js and "eval(" not in js and "document.write" not in js


async def test_unknown_console_files_and_views_are_404_envelopes(gw, http):
    for path in ("/console/static/nope.js", "/console/static/..%2Fapi.py", "/console/static/index.html"):
        status, headers, body = await get_raw(http, gw.url + path)
        assert status == 404 and headers["Content-Type"].startswith("application/json"), (path, body)
        assert b'"unknown_endpoint"' in body
    assert_envelope(await call(http, "GET", gw.url + "/v1/console/nope", OPS), 404, "invalid_request_error")


async def test_views_need_a_key(gw, http):
    for view in ("overview", "charts", "routes"):
        assert_envelope(await call(http, "GET", gw.url + f"/v1/console/{view}"), 401, "authentication_error")
        assert_envelope(await call(http, "GET", gw.url + f"/v1/console/{view}", "sk-wrong-0123456789"),
                        401, "authentication_error", code="invalid_api_key")


async def test_overview_counts_the_known_requests_for_the_management_key(gw, http, traffic):
    status, _, body = await call(http, "GET", gw.url + "/v1/console/overview", OPS)
    assert status == 200, body
    assert body["who"] == {"role": "management", "key_id": "management:ops", "label": "ops"}
    _, _, ready = await call(http, "GET", gw.url + "/readyz")
    assert body["config_version"] == ready["config_version"]
    for window in ("today", "7d", "30d"):
        w = body["windows"][window]
        assert w["requests"] == traffic.total_requests == 7
        assert w["errors"] == 1
        assert w["cost"] == pytest.approx(traffic.total_cost, abs=1e-9) and w["cost"] > 0
        assert w["cache_hits"] == 0 and w["cache_hit_ratio"] == 0
    lat = body["latency"]
    assert lat["samples"] == 7 and 0 < lat["p50_ms"] <= lat["p99_ms"]


async def test_a_normal_key_sees_only_its_own_numbers(gw, http, traffic):
    _, _, body = await call(http, "GET", gw.url + "/v1/console/overview?key_id=static:other", APP)
    assert body["who"]["role"] == "key" and body["key_id"] == "static:app"
    assert body["windows"]["today"]["requests"] == 4 and body["windows"]["today"]["errors"] == 1
    assert body["windows"]["today"]["cost"] == pytest.approx(traffic.cost["app"], abs=1e-9)
    assert body["latency"]["samples"] == 4
    _, _, chart = await call(http, "GET", gw.url + "/v1/console/charts?by=key&key_id=static:other", APP)
    assert [r["key_id"] for r in chart["data"]] == ["static:app"]
    assert "other" not in chart["svg"]
    _, _, feed = await call(http, "GET", gw.url + "/v1/account/activity?key_id=static:other", APP)
    assert {r["key_id"] for r in feed["data"]} == {"static:app"}
    assert_envelope(await call(http, "GET", gw.url + "/v1/console/routes", OTHER), 403, "permission_error",
                    code="management_key_required")


async def test_charts_are_the_analytics_numbers_drawn_as_well_formed_svg(gw, http, traffic):
    for by in ("day", "model", "key"):
        for metric in ("cost", "requests"):
            status, _, chart = await call(http, "GET", gw.url + f"/v1/console/charts?by={by}&metric={metric}", OPS)
            assert status == 200, chart
            _, _, analytics = await call(http, "GET", gw.url + f"/v1/account/analytics?group_by={by}&since="
                                         f"{int(chart['since'])}", OPS)
            assert chart["data"] == analytics["data"]
            doc = xml.dom.minidom.parseString(chart["svg"])       # well-formed, whatever the labels
            assert doc.documentElement.tagName == "svg"
            assert not doc.getElementsByTagName("script") and not doc.getElementsByTagName("img")
            assert not doc.getElementsByTagName("foreignObject")
    _, _, chart = await call(http, "GET", gw.url + "/v1/console/charts?by=key&metric=requests", OPS)
    svg = chart["svg"]
    assert HOSTILE not in svg and "&lt;img src=x onerror=alert(1)&gt;" in svg
    texts = [t.firstChild.data for t in xml.dom.minidom.parseString(svg).getElementsByTagName("text") if t.firstChild]
    assert HOSTILE in texts                        # drawn as text, not markup
    assert {"app", "4", "other", "2", "1"} <= set(texts)


async def test_chart_parameters_are_checked(gw, http):
    assert_envelope(await call(http, "GET", gw.url + "/v1/console/charts?by=hour", OPS), 400,
                    "invalid_request_error", param="by")
    assert_envelope(await call(http, "GET", gw.url + "/v1/console/charts?metric=secrets", OPS), 400,
                    "invalid_request_error", param="metric")
    assert_envelope(await call(http, "GET", gw.url + "/v1/console/charts?since=never", OPS), 400,
                    "invalid_request_error", param="since")
    status, _, chart = await call(http, "GET", gw.url + "/v1/console/charts?by=day&since=0", OPS)
    assert status == 200 and chart["svg"].count("<rect") <= 366 + 2     # at most a year of days drawn


async def test_activity_filters_by_model_key_and_status_without_prompt_text(gw, http, traffic):
    url = gw.url + "/v1/account/activity"
    _, _, errors = await call(http, "GET", url + "?status=error", OPS)
    assert [(r["model"], r["status"], r["key_id"]) for r in errors["data"]] == [("broken", 502, "static:app")]
    _, _, ok = await call(http, "GET", url + "?status=ok&model=mock-echo&key_id=static:other", OPS)
    assert len(ok["data"]) == 2 and {r["key_id"] for r in ok["data"]} == {"static:other"}
    _, _, exact = await call(http, "GET", url + "?status=502", OPS)
    assert len(exact["data"]) == 1
    _, _, everything = await call(http, "GET", url, OPS)
    assert len(everything["data"]) == 7
    raw = str(everything)
    assert "weather" not in raw and "hello there" not in raw          # no prompt or answer text
    assert_envelope(await call(http, "GET", url + "?status=bad", OPS), 400, "invalid_request_error", param="status")


async def test_routes_show_targets_pricing_and_the_live_cooldown(gw, http, traffic):
    status, _, routes = await call(http, "GET", gw.url + "/v1/console/routes", OPS)
    assert status == 200, routes
    echo = next(r for r in routes["data"] if r["model"] == "mock-echo")
    assert (echo["provider"], echo["input_per_1m"], echo["output_per_1m"]) == ("mock", 1.0, 2.0)
    broken = next(r for r in routes["data"] if r["model"] == "broken")
    assert broken["upstream_model"] == "always-error" and broken["cooling"] and not echo["cooling"]
    [cool] = routes["cooldowns"]
    assert (cool["provider"], cool["upstream_model"]) == ("mock", "always-error") and 0 < cool["seconds_left"] <= 60


async def test_latency_percentiles_are_nearest_rank_over_the_last_day(gw, http, traffic):
    await traffic.chat("other", OTHER, "mock-lazy", "slow one")        # the mock answers after 400 ms
    await gw.gateway.ledger.flush()
    _, _, body = await call(http, "GET", gw.url + "/v1/console/overview", OPS)
    lat = body["latency"]
    assert lat["samples"] == 8
    assert lat["p99_ms"] >= 400 > lat["p50_ms"]         # p99 of 8: the slowest; p50: the 4th
    _, _, own = await call(http, "GET", gw.url + "/v1/console/overview", APP)
    assert own["latency"]["samples"] == 4 and own["latency"]["p99_ms"] < 400


async def test_windows_are_whole_utc_days_today_7d_30d(gw, http, traffic):
    today = utc_day_start()
    ledger = gw.gateway.ledger
    for days_ago, cost in ((6, 0.5), (7, 0.25), (29, 0.125), (30, 2.0)):     # 7d holds 6 days ago, 30d 29
        ledger.record(row_values({"created_at": today - days_ago * DAY + 60, "key_id": "static:app", "key_label": "app",
                                  "model": "mock-echo", "status": 200, "cost": cost, "latency_ms": 5.0}))
    await ledger.flush()
    _, _, body = await call(http, "GET", gw.url + "/v1/console/overview", OPS)
    w = body["windows"]
    assert [w[n]["requests"] for n in ("today", "7d", "30d")] == [7, 8, 10]
    assert w["7d"]["cost"] == pytest.approx(traffic.total_cost + 0.5)
    assert w["30d"]["cost"] == pytest.approx(traffic.total_cost + 0.875)
    _, _, chart = await call(http, "GET", gw.url + "/v1/console/charts?by=day&metric=requests&since=7d", OPS)
    assert [r["requests"] for r in chart["data"]] == [1, 1, 7]     # since 7d: from the start of that day
    assert chart["svg"].count("<rect x=") == 8                     # one column per day, empty ones too
