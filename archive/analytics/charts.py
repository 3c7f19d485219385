"""Server-side SVG line charts for access analytics and the cost simulator, in the style of
``tenants.charts`` (its ``Chart``, colours, ticks and number labels): categories along the x axis
(horizons, months), one line per series, a ``<title>`` on every point and the figures as a table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from html import escape

from archive.analytics.curve import AccessCurve
from tenants.charts import (
    ACCENT,
    AXIS,
    FONT,
    GRID,
    TEXT,
    Chart,
    Series,
    nice_ticks,
    number_label,
    x_label,
)

SCENARIO_COLORS = {
    "all_hot": "#e4572e",
    "active": "#2e86ab",
    "candidate": "#f0a202",
    "recommended": "#3a8f4b",
}
MODALITY_PALETTE = ["#2e86ab", "#e4572e", "#4b3f8f", "#f0a202", "#3a8f4b", "#b42318", "#7c5c3b"]


def _n(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _w(text: str, size: float = 11) -> float:
    return len(text) * size * 0.58


def line_chart(
    *,
    label: str,
    categories: Sequence[str],
    series: Sequence[Series],
    fmt: Callable[[float], str],
    fmt_tick: Callable[[float], str] | None = None,
    width: int = 760,
    height: int = 260,
    y_max: float | None = None,
    caption_head: str = "",
    empty_message: str = "No data yet",
) -> Chart:
    """Lines over categories; a value of ``nan`` leaves a gap (e.g. a horizon nobody reached)."""
    fmt_tick = fmt_tick or fmt
    values = [v for s in series for v in s.values if v == v]
    head = "".join(f'<th scope="col" class="num">{escape(s.label)}</th>' for s in series)
    rows = "".join(
        f'<tr><th scope="row">{escape(c)}</th>'
        + "".join(
            f'<td class="num">{escape(fmt(s.values[i]) if s.values[i] == s.values[i] else "—")}</td>'
            for s in series
        )
        + "</tr>"
        for i, c in enumerate(categories)
    )
    table = (
        f'<table class="table table-compact"><caption class="visually-hidden">{escape(label)}'
        f'</caption><thead><tr><th scope="col">{escape(caption_head)}</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    svg_open = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(label, quote=True)}" '
        f'font-family="{escape(FONT, quote=True)}" font-size="11">'
    )
    if not categories or not values:
        return Chart(
            svg_open + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
            f'fill="#f8fafc" stroke="{GRID}"/><text x="{width / 2}" y="{height / 2 + 4}" '
            f'text-anchor="middle" fill="{TEXT}">{escape(empty_message)}</text></svg>',
            table,
            label,
        )
    # Legend, wrapping.
    parts = [svg_open, '<g class="legend" aria-hidden="true">']
    lx, ly = 8.0, 6.0
    for s in series:
        w = 12 + 6 + _w(s.label) + 16
        if lx > 8 and lx + w > width - 8:
            lx, ly = 8.0, ly + 18
        parts.append(
            f'<rect x="{_n(lx)}" y="{_n(ly)}" width="12" height="12" rx="2" fill="{s.color}"/>'
            f'<text x="{_n(lx + 18)}" y="{_n(ly + 10)}" fill="{TEXT}">{escape(s.label)}</text>'
        )
        lx += w
    parts.append("</g>")
    ticks = nice_ticks(y_max if y_max is not None else max(values))
    top = ly + 18 + 8
    left = max(_w(fmt_tick(t)) for t in ticks) + 12
    right, bottom = width - 12.0, height - 24.0
    top_value = ticks[-1] or 1.0

    def y_of(v: float) -> float:
        return bottom - (v / top_value) * (bottom - top)

    step = (right - left) / max(len(categories) - 1, 1)

    def x_of(i: int) -> float:
        return left + step * i if len(categories) > 1 else (left + right) / 2

    parts.append('<g class="axis axis-y">')
    for t in ticks:
        parts.append(
            f'<line x1="{_n(left)}" x2="{_n(right)}" y1="{_n(y_of(t))}" y2="{_n(y_of(t))}" '
            f'stroke="{GRID if t else AXIS}"/><text x="{_n(left - 6)}" y="{_n(y_of(t) + 4)}" '
            f'text-anchor="end" fill="{TEXT}">{escape(fmt_tick(t))}</text>'
        )
    parts.append('</g><g class="axis axis-x">')
    for i, c in enumerate(categories):
        parts.append(x_label(c, x=x_of(i), y=bottom + 16, width=width))
    parts.append("</g>")
    for s in series:
        points = [(i, v) for i, v in enumerate(s.values) if v == v]
        path = " ".join(
            f"{'M' if n == 0 or points[n - 1][0] != i - 1 else 'L'}{_n(x_of(i))},{_n(y_of(v))}"
            for n, (i, v) in enumerate(points)
        )
        parts.append(
            f'<g class="series" data-series="{escape(s.key, quote=True)}">'
            f'<path d="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>'
        )
        for i, v in points:
            parts.append(
                f'<circle cx="{_n(x_of(i))}" cy="{_n(y_of(v))}" r="3.5" fill="{s.color}" '
                f'stroke="#fff"><title>{escape(f"{s.label} · {categories[i]}: {fmt(v)}")}'
                "</title></circle>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Chart("".join(parts), table, label)


def simulation_chart(
    *,
    currency: str,
    month_starts: Sequence[date],
    lines: Sequence[tuple[str, str, Sequence[float], str]],
    money: Callable[[float], str],
) -> Chart:
    """The projected monthly cost per scenario. ``lines``: per scenario its key, label, cost of
    each month and its total as shown; ``money`` shows an amount (without the currency)."""
    months = [m.strftime("%b %y") for m in month_starts]
    series = [
        Series(key, label, list(values), SCENARIO_COLORS.get(key, ACCENT))
        for key, label, values, _ in lines
    ]
    totals = ", ".join(f"{label.lower()} {total} {currency}" for _, label, _, total in lines)
    return line_chart(
        label=f"Projected monthly cost per scenario over the next {len(months)} months, in "
        f"{currency}. 12-month totals: {totals}.",
        categories=months,
        series=series,
        fmt=lambda v: f"{money(v)} {currency}",
        fmt_tick=number_label,
        caption_head="Month",
    )


def access_curve_chart(curve: AccessCurve, *, measure: str = "studies") -> Chart:
    """Re-read share per horizon: overall and one line per modality (the largest seven)."""
    categories = [f"{h} d" for h in curve.horizons]

    def share(points: Sequence[object]) -> list[float]:
        out = []
        for p in points:
            f = p.study_fraction if measure == "studies" else p.bytes_fraction  # type: ignore[attr-defined]
            out.append(float("nan") if f is None else f * 100)
        return out

    series = [Series("all", "All modalities", share(curve.overall), "#0f172a")]
    by_size = sorted(
        curve.by_modality.items(), key=lambda kv: -max((p.bytes_observed for p in kv[1]), default=0)
    )
    for n, (modality, points) in enumerate(by_size[: len(MODALITY_PALETTE)]):
        series.append(
            Series(modality or "other", modality or "Other", share(points), MODALITY_PALETTE[n])
        )
    what = "studies" if measure == "studies" else "bytes"
    overall = ", ".join(
        f"{curve.horizons[i]} days {v:.0f}%" for i, v in enumerate(series[0].values) if v == v
    )
    return line_chart(
        label=f"Share of {what} read again after 7 to 365 days from the study date, by modality. "
        f"All modalities: {overall or 'no history yet'}.",
        categories=categories,
        series=series,
        fmt=lambda v: f"{v:.1f}%",
        fmt_tick=lambda v: f"{v:.0f}%",
        y_max=100,
        caption_head="Read again after",
        empty_message="No access history yet",
    )
