"""Server-side SVG charts for the console: pure functions from (label, value) pairs to SVG text.

Labels are key labels and model names, which clients choose: every label is cut, stripped of
characters XML cannot hold and escaped, so a chart is always well-formed and never markup
of the caller's making. The console shows the SVG as an <img> (no script runs in one either)."""
from __future__ import annotations

import re
from xml.sax.saxutils import escape

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = {'"': "&quot;", "'": "&#39;"}
LABEL_MAX = 32          # characters of a label drawn (the table beside the chart has them all)
BAR_COLOR, AXIS_COLOR, TEXT_COLOR = "#2f6fdf", "#9aa4b2", "#1d2330"
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def text(value: str, limit: int = LABEL_MAX) -> str:
    """A label as safe SVG text: XML-illegal characters removed, cut to `limit`, escaped."""
    value = _NOT_XML.sub("", str(value))
    if len(value) > limit:
        value = value[:limit - 1] + "…"
    return escape(value, _ESCAPES)


def number(value: float, metric: str) -> str:
    if metric == "cost":       # as the page prints USD: 6 decimals, trailing zeros dropped
        return f"${value:,.2f}" if value >= 100 else "$" + (f"{value:.6f}".rstrip("0").rstrip(".") or "0")
    return f"{value:,.0f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{text(title, 200)}">'
            f'<title>{text(title, 200)}</title>'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>")


def bars(points: list[tuple[str, float]], metric: str, title: str, width: int = 640) -> str:
    """A horizontal bar chart, one bar per point in the order given, its value at its end."""
    row, top, label_w = 24, 28, 200
    height = top + row * max(len(points), 1) + 12
    body = [f'<text x="8" y="18" {FONT} font-weight="600" fill="{TEXT_COLOR}">{text(title, 200)}</text>']
    if not points:
        body.append(f'<text x="8" y="{top + 16}" {FONT} fill="{AXIS_COLOR}">No requests in this window.</text>')
    peak = max((v for _, v in points), default=0) or 1
    span = width - label_w - 110
    for i, (label, value) in enumerate(points):
        y = top + i * row
        w = max(value / peak * span, 1 if value else 0)
        body.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" {FONT} fill="{TEXT_COLOR}">'
                    f'{text(label)}</text>')
        body.append(f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" rx="2" fill="{BAR_COLOR}"/>')
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" {FONT} fill="{TEXT_COLOR}">'
                    f'{number(value, metric)}</text>')
    body.append(f'<line x1="{label_w}" y1="{top}" x2="{label_w}" y2="{height - 12}" stroke="{AXIS_COLOR}"/>')
    return _svg(width, height, title, body)


def columns(points: list[tuple[str, float]], metric: str, title: str, width: int = 640) -> str:
    """A column chart over days (points in date order, "YYYY-MM-DD"), the peak marked."""
    top, bottom, left, height = 44, 28, 8, 220
    plot_h = height - top - bottom
    body = [f'<text x="8" y="18" {FONT} font-weight="600" fill="{TEXT_COLOR}">{text(title, 200)}</text>']
    peak = max((v for _, v in points), default=0)
    body.append(f'<text x="8" y="34" {FONT} fill="{AXIS_COLOR}">peak {number(peak, metric)}</text>')
    n = max(len(points), 1)
    slot = (width - 2 * left) / n
    for i, (day, value) in enumerate(points):
        h = value / peak * plot_h if peak else 0
        x = left + i * slot
        body.append(f'<rect x="{x + slot * 0.15:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{h:.1f}" fill="{BAR_COLOR}"><title>{text(day)}: {number(value, metric)}</title></rect>')
        if i == 0 or i == n - 1 or (n > 10 and i % 7 == 0 and n - 1 - i >= 4):
            body.append(f'<text x="{x + slot / 2:.1f}" y="{height - 10}" text-anchor="middle" {FONT} '
                        f'fill="{AXIS_COLOR}">{text(day[5:])}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" '
                f'stroke="{AXIS_COLOR}"/>')
    return _svg(width, height, title, body)
