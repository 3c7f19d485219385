"""Server-side SVG charts for the portal pages of every app (billing, archive analytics): pure Python, no JavaScript, no third-party assets.

A ``Chart`` is SVG markup (``role="img"`` with an ``aria-label`` that states the chart's message,
axes with ticks, a legend, a ``<title>`` tooltip on every bar, segment and point) together with
the same figures as an HTML table inside a ``<details>`` element, for screen readers and for
anyone who wants the numbers. A chart renders itself in a Django template (``__html__``), but
nothing here imports Django.

Values are floats: they only position shapes. The caller chooses the unit (e.g. GiB) and passes a
formatter, so tooltips and the table show exactly what the page means; money is never drawn
from floats into text here except through that formatter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

# Tier colours stay the same on every chart and page (hot is warm-coloured, archive is dark).
TIER_COLORS: dict[str, str] = {
    "hot": "#e4572e",
    "warm": "#f0a202",
    "cold": "#2e86ab",
    "archive": "#4b3f8f",
}
ACCENT = "#0b6e8a"
FORECAST = "#7cc4d8"
OVER = "#b42318"
AXIS = "#94a3b8"
GRID = "#e2e8f0"
TEXT = "#526071"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif"

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    values: Sequence[float]
    color: str


class Markup(str):
    """Text that is already HTML: template engines that honour ``__html__`` (Django, Jinja)
    insert it unescaped. Everything inside was escaped when it was built."""

    def __html__(self) -> Markup:
        return self

    def __str__(self) -> Markup:
        return self


@dataclass(frozen=True)
class Chart:
    """An SVG chart and its data table; ``svg`` alone is a well-formed XML document."""

    svg: str
    table: str
    label: str

    def __html__(self) -> Markup:
        return Markup(
            f'<figure class="chart">{self.svg}'
            '<details class="chart-data"><summary>Show the figures as a table</summary>'
            f'<div class="table-wrap">{self.table}</div></details></figure>'
        )

    def __str__(self) -> Markup:
        return self.__html__()


# --- numbers ---------------------------------------------------------------------------------


def number_label(value: float) -> str:
    """A compact, readable number: ``1,234``, ``12.3``, ``1.25``, ``0.0042``."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:,.1f}".removesuffix(".0")
    if magnitude >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    # Below one: two significant digits as a decimal (0.0042, 0.00006), never exponent notation,
    # which an axis of amounts or quantities should not make a reader decode.
    return f"{value:.{max(2, 1 - math.floor(math.log10(magnitude)))}f}".rstrip("0").rstrip(".")


def nice_ticks(max_value: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``max_value`` in about ``count`` steps (1, 2, 2.5, 5)."""
    if not max_value > 0 or not math.isfinite(max_value):
        return [0.0, 1.0]
    raw = max_value / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude * 10
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw:
            step = multiple * magnitude
            break
    steps = math.ceil(max_value / step - 1e-9)
    return [i * step for i in range(steps + 1)]


def day_label(day: date) -> str:
    return f"{day.day} {day:%b}"


def long_day_label(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


# --- SVG helpers -----------------------------------------------------------------------------


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _n(value: float) -> str:
    """Coordinates with two decimals at most, without trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# Room kept between an x-axis label and the SVG's edge, for fonts wider than the estimate.
X_LABEL_MARGIN = 4


def _text_width(text: str, size: float) -> float:
    # System fonts average a little over half an em per character; enough to lay out labels.
    return len(text) * size * 0.58


def _svg_open(width: int, height: int, label: str, css_class: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{_attr(css_class)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_attr(label)}" font-family="{_attr(FONT)}" font-size="11">'
    )


def _legend(series: Sequence[Series], x: float, y: float, max_width: float) -> tuple[str, float]:
    """Swatches and labels from (x, y), wrapping at ``max_width``; returns (markup, height)."""
    parts = ['<g class="legend" aria-hidden="true">']
    cx, cy = x, y
    for s in series:
        width = 12 + 6 + _text_width(s.label, 11) + 16
        if cx > x and cx + width > x + max_width:
            cx, cy = x, cy + 18
        parts.append(
            f'<rect x="{_n(cx)}" y="{_n(cy)}" width="12" height="12" rx="2" fill="{s.color}"/>'
            f'<text x="{_n(cx + 18)}" y="{_n(cy + 10)}" fill="{TEXT}">{escape(s.label)}</text>'
        )
        cx += width
    parts.append("</g>")
    return "".join(parts), cy - y + 18


def _y_axis(
    ticks: list[float], left: float, right: float, y_of: Callable[[float], float], fmt: Formatter
) -> str:
    parts = ['<g class="axis axis-y">']
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            f'<line x1="{_n(left)}" x2="{_n(right)}" y1="{_n(y)}" y2="{_n(y)}" '
            f'stroke="{GRID if tick else AXIS}" stroke-width="1"/>'
            f'<text x="{_n(left - 6)}" y="{_n(y + 4)}" text-anchor="end" fill="{TEXT}">'
            f"{escape(fmt(tick))}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def x_label(text: str, *, x: float, y: float, width: float) -> str:
    """An x-axis label centred under ``x``, but kept inside the ``width`` of the SVG: one that
    would cross the right edge ends at ``x``, one that would cross the left edge starts there
    (an SVG clips what lies outside its view box: the last day read "7 De")."""
    half = _text_width(text, 11) / 2 + X_LABEL_MARGIN
    anchor = "end" if x + half > width else "start" if x - half < 0 else "middle"
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" fill="{TEXT}">{escape(text)}</text>'
    )


def _x_axis(
    days: Sequence[date], x_of: Callable[[int], float], y: float, plot_width: float, width: float
) -> str:
    """Day labels, thinned so they never overlap; the last day is always labelled."""
    every = max(1, math.ceil(len(days) / max(plot_width / 52, 1)))
    shown = set(range(len(days) - 1, -1, -every))
    parts = ['<g class="axis axis-x">']
    for i, day in enumerate(days):
        if i not in shown:
            continue
        x = x_of(i)
        parts.append(
            f'<line x1="{_n(x)}" x2="{_n(x)}" y1="{_n(y)}" y2="{_n(y + 4)}" stroke="{AXIS}"/>'
            + x_label(day_label(day), x=x, y=y + 16, width=width)
        )
    parts.append("</g>")
    return "".join(parts)


def data_table(
    *,
    caption: str,
    days: Sequence[date],
    series: Sequence[Series],
    fmt: Formatter,
    total: bool,
) -> str:
    head = "".join(f'<th scope="col" class="num">{escape(s.label)}</th>' for s in series)
    if total:
        head += '<th scope="col" class="num">Total</th>'
    rows = []
    for i, day in enumerate(days):
        cells = "".join(f'<td class="num">{escape(fmt(s.values[i]))}</td>' for s in series)
        if total:
            cells += f'<td class="num">{escape(fmt(sum(s.values[i] for s in series)))}</td>'
        rows.append(
            f'<tr><th scope="row" class="nowrap">'
            f'<time datetime="{day.isoformat()}">{escape(long_day_label(day))}</time></th>'
            f"{cells}</tr>"
        )
    return (
        f'<table class="table table-compact"><caption class="visually-hidden">'
        f"{escape(caption)}</caption>"
        f'<thead><tr><th scope="col">Day (UTC)</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _empty(width: int, height: int, label: str, css_class: str, message: str) -> str:
    return (
        _svg_open(width, height, label, css_class)
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
        f'fill="#f8fafc" stroke="{GRID}"/>'
        f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" fill="{TEXT}">'
        f"{escape(message)}</text></svg>"
    )


@dataclass(frozen=True)
class _Frame:
    """The plot area of a chart with a y axis on the left and days along the bottom."""

    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    y_max: float

    @property
    def plot_width(self) -> float:
        return self.right - self.left

    def y_of(self, value: float) -> float:
        return self.bottom - (value / self.y_max) * (self.bottom - self.top)


def _frame(
    *, width: int, height: int, ticks: list[float], fmt_tick: Formatter, legend_height: float
) -> _Frame:
    label_width = max(_text_width(fmt_tick(t), 11) for t in ticks)
    return _Frame(
        width=width,
        height=height,
        left=math.ceil(label_width + 12),
        top=8 + legend_height,
        right=width - 10,
        bottom=height - 24,
        y_max=ticks[-1] or 1.0,
    )


def _check(days: Sequence[date], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(days):
            raise ValueError(f"Series {s.key!r} has {len(s.values)} values for {len(days)} days.")


# --- charts ----------------------------------------------------------------------------------


def bar_chart(
    *,
    label: str,
    days: Sequence[date],
    series: Sequence[Series],
    fmt: Formatter,
    fmt_tick: Formatter | None = None,
    width: int = 300,
    height: int = 150,
    empty_message: str = "No usage in this period",
    legend: bool | None = None,
) -> Chart:
    """Bars per day, stacked when there are several series (e.g. one per tier).

    The legend is drawn for several series, or when ``legend`` asks for it (a tiered meter with
    usage in one tier still names the tier).
    """
    _check(days, series)
    fmt_tick = fmt_tick or fmt
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    table = data_table(caption=label, days=days, series=series, fmt=fmt, total=len(series) > 1)
    if not days or not any(totals):
        return Chart(_empty(width, height, label, "chart-svg", empty_message), table, label)
    legend_markup, legend_height = ("", 0.0)
    show_legend = len(series) > 1 if legend is None else legend
    if show_legend:
        legend_markup, legend_height = _legend(series, 8, 6, width - 16)
        legend_height += 4
    ticks = nice_ticks(max(totals))
    frame = _frame(
        width=width, height=height, ticks=ticks, fmt_tick=fmt_tick, legend_height=legend_height
    )
    band = frame.plot_width / len(days)
    bar = max(band * 0.72, 1.0)

    def x_of(i: int) -> float:
        return frame.left + band * (i + 0.5)

    parts = [
        _svg_open(width, height, label, "chart-svg"),
        legend_markup,
        _y_axis(ticks, frame.left, frame.right, frame.y_of, fmt_tick),
    ]
    for i, day in enumerate(days):
        # The whole column answers hover with the day's figures, so thin bars are easy to read.
        summary = f"{long_day_label(day)}: {fmt(totals[i])}"
        if len(series) > 1:
            summary += " (" + ", ".join(f"{s.label} {fmt(s.values[i])}" for s in series) + ")"
        parts.append(
            f'<rect class="hover" x="{_n(frame.left + band * i)}" y="{_n(frame.top)}" '
            f'width="{_n(band)}" height="{_n(frame.bottom - frame.top)}" fill="transparent">'
            f"<title>{escape(summary)}</title></rect>"
        )
    for position, s in enumerate(series):
        parts.append(f'<g class="series" data-series="{_attr(s.key)}" fill="{s.color}">')
        for i, day in enumerate(days):
            value = s.values[i]
            if value <= 0:
                continue
            below = sum(other.values[i] for other in series[:position])
            y_top = frame.y_of(below + value)
            y_bottom = frame.y_of(below)
            parts.append(
                f'<rect x="{_n(x_of(i) - bar / 2)}" y="{_n(y_top)}" width="{_n(bar)}" '
                f'height="{_n(max(y_bottom - y_top, 0.5))}">'
                f"<title>{escape(f'{s.label} · {long_day_label(day)}: {fmt(value)}')}</title>"
                "</rect>"
            )
        parts.append("</g>")
    parts.append(_x_axis(days, x_of, frame.bottom, frame.plot_width, width))
    parts.append("</svg>")
    return Chart("".join(parts), table, label)


def stacked_area_chart(
    *,
    label: str,
    days: Sequence[date],
    series: Sequence[Series],
    fmt: Formatter,
    fmt_tick: Formatter | None = None,
    width: int = 760,
    height: int = 260,
    empty_message: str = "Nothing stored in this period",
) -> Chart:
    """Stacked areas over days, one per series, bottom to top in the given order."""
    _check(days, series)
    fmt_tick = fmt_tick or fmt
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    table = data_table(caption=label, days=days, series=series, fmt=fmt, total=len(series) > 1)
    if not days or not any(totals):
        return Chart(_empty(width, height, label, "chart-svg", empty_message), table, label)
    legend, legend_height = _legend(series, 8, 6, width - 16)
    ticks = nice_ticks(max(totals))
    frame = _frame(
        width=width, height=height, ticks=ticks, fmt_tick=fmt_tick, legend_height=legend_height + 4
    )
    count = len(days)
    step = frame.plot_width / (count - 1) if count > 1 else frame.plot_width

    def x_of(i: int) -> float:
        return frame.left + step * i if count > 1 else frame.left + frame.plot_width / 2

    parts = [
        _svg_open(width, height, label, "chart-svg"),
        legend,
        _y_axis(ticks, frame.left, frame.right, frame.y_of, fmt_tick),
    ]
    below = [0.0] * count
    for s in series:
        above = [below[i] + s.values[i] for i in range(count)]
        if count > 1:
            top_pts = [(x_of(i), frame.y_of(above[i])) for i in range(count)]
            base_pts = [(x_of(i), frame.y_of(below[i])) for i in reversed(range(count))]
        else:  # one day: a flat band across the plot
            top_pts = [(frame.left, frame.y_of(above[0])), (frame.right, frame.y_of(above[0]))]
            base_pts = [(frame.right, frame.y_of(below[0])), (frame.left, frame.y_of(below[0]))]
        area = "M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in top_pts + base_pts) + " Z"
        line = "M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in top_pts)
        parts.append(
            f'<g class="series" data-series="{_attr(s.key)}">'
            f'<path class="area" d="{area}" fill="{s.color}" fill-opacity="0.78">'
            f"<title>{escape(s.label)}</title></path>"
            f'<path d="{line}" fill="none" stroke="{s.color}" stroke-width="1.5"/>'
        )
        for i, day in enumerate(days):
            tip = f"{s.label} · {long_day_label(day)}: {fmt(s.values[i])}"
            parts.append(
                f'<circle class="pt" cx="{_n(x_of(i))}" cy="{_n(frame.y_of(above[i]))}" r="3.5" '
                f'fill="{s.color}" stroke="#fff" stroke-width="1"><title>{escape(tip)}</title>'
                "</circle>"
            )
        parts.append("</g>")
        below = above
    parts.append(_x_axis(days, x_of, frame.bottom, frame.plot_width, width))
    parts.append("</svg>")
    return Chart("".join(parts), table, label)


def budget_gauge(
    *,
    actual: float,
    forecast: float,
    budget: float | None,
    thresholds: Sequence[int],
    fmt: Formatter,
    width: int = 760,
    height: int = 74,
) -> Chart:
    """Spend so far (solid) and the month-end forecast (light) on one bar, against the budget.

    The budget is a marker with its alert thresholds as ticks; a bar past the budget turns red.
    """
    scale_max = max(actual, forecast, budget or 0.0) * 1.12 or 1.0
    left, right, top, bar_height = 8.0, width - 8.0, 22.0, 20.0

    def x_of(value: float) -> float:
        return left + (right - left) * min(max(value / scale_max, 0.0), 1.0)

    over = budget is not None and actual > budget
    forecast_over = budget is not None and forecast > budget
    label = f"Spent {fmt(actual)} so far; forecast {fmt(forecast)} at month end"
    label += f"; monthly budget {fmt(budget)}." if budget is not None else "; no budget set."
    parts = [
        _svg_open(width, height, label, "chart-svg gauge"),
        f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(right - left)}" height="{bar_height}" '
        f'rx="4" fill="#eef2f6"/>',
        f'<rect class="bar-forecast" x="{_n(left)}" y="{_n(top)}" '
        f'width="{_n(x_of(forecast) - left)}" height="{bar_height}" rx="4" '
        f'fill="{OVER if forecast_over else FORECAST}" fill-opacity="{0.35 if forecast_over else 1}">'
        f"<title>{escape(f'Forecast at month end: {fmt(forecast)}')}</title></rect>",
        f'<rect class="bar-actual" x="{_n(left)}" y="{_n(top)}" '
        f'width="{_n(x_of(actual) - left)}" height="{bar_height}" rx="4" '
        f'fill="{OVER if over else ACCENT}">'
        f"<title>{escape(f'Spent so far: {fmt(actual)}')}</title></rect>",
    ]
    if budget is not None:
        bx = x_of(budget)
        for threshold in thresholds:
            tx = x_of(budget * threshold / 100)
            if threshold == 100:
                continue
            parts.append(
                f'<line x1="{_n(tx)}" x2="{_n(tx)}" y1="{_n(top - 4)}" '
                f'y2="{_n(top + bar_height + 4)}" stroke="{TEXT}" stroke-width="1" '
                f'stroke-dasharray="2 2"><title>{threshold}% of the budget: '
                f"{escape(fmt(budget * threshold / 100))}</title></line>"
                f'<text x="{_n(tx)}" y="{_n(top - 7)}" text-anchor="middle" fill="{TEXT}" '
                f'font-size="10">{threshold}%</text>'
            )
        anchor = "end" if bx > width * 0.75 else "start"
        offset = -6 if anchor == "end" else 6
        parts.append(
            f'<line class="budget" x1="{_n(bx)}" x2="{_n(bx)}" y1="{_n(top - 8)}" '
            f'y2="{_n(top + bar_height + 8)}" stroke="#0f172a" stroke-width="2">'
            f"<title>{escape(f'Monthly budget: {fmt(budget)}')}</title></line>"
            f'<text x="{_n(bx + offset)}" y="{_n(top + bar_height + 22)}" '
            f'text-anchor="{anchor}" fill="#0f172a" font-weight="600">'
            f"Budget {escape(fmt(budget))}</text>"
        )
    parts.append(
        f'<text x="{_n(left)}" y="{_n(top + bar_height + 22)}" fill="{TEXT}">0</text></svg>'
    )
    rows = [("Spent so far", actual), ("Forecast at month end", forecast)]
    if budget is not None:
        rows.append(("Monthly budget", budget))
    table = (
        f'<table class="table table-compact"><caption class="visually-hidden">{escape(label)}'
        '</caption><thead><tr><th scope="col">Figure</th><th scope="col" class="num">Amount</th>'
        "</tr></thead><tbody>"
        + "".join(
            f'<tr><th scope="row">{escape(name)}</th><td class="num">{escape(fmt(value))}</td></tr>'
            for name, value in rows
        )
        + "</tbody></table>"
    )
    return Chart("".join(parts), table, label)
