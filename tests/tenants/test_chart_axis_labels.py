"""X-axis labels stay inside their chart: an SVG clips what lies outside its view box, and the
last day used to read "7 De" and the last horizon "365 c"."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest

from archive.analytics.charts import line_chart
from tenants import charts

NS = "{http://www.w3.org/2000/svg}"
# Wider than the layout's estimate (0.58 em a character), as a wide system font renders.
WIDE_EM = 0.62


def _x_labels(svg: str) -> tuple[float, list[tuple[str, float, float]]]:
    """The view box width and each x-axis label's text with its (left, right) extent."""
    root = ET.fromstring(svg)
    width = float((root.get("viewBox") or "").split()[2])
    axis = next(g for g in root.iter(f"{NS}g") if g.get("class") == "axis axis-x")
    extents = []
    for text in axis.iter(f"{NS}text"):
        label, x = text.text or "", float(text.get("x") or 0)
        w = len(label) * 11 * WIDE_EM
        left = {"start": x, "middle": x - w / 2, "end": x - w}[text.get("text-anchor") or ""]
        extents.append((label, left, left + w))
    return width, extents


def _assert_inside(svg: str, last: str) -> None:
    width, extents = _x_labels(svg)
    assert extents[-1][0] == last
    for label, left, right in extents:
        assert left >= 0 and right <= width, (label, left, right, width)


def _days(n: int, end: date = date(2026, 12, 7)) -> list[date]:
    return [end - timedelta(days=n - 1 - i) for i in range(n)]


def _fmt(value: float) -> str:
    return f"{charts.number_label(value)} GiB"


@pytest.mark.parametrize("n", [1, 2, 7, 30, 31, 90])
@pytest.mark.parametrize("width", [300, 420, 760])
def test_bar_chart_day_labels_stay_inside(n: int, width: int) -> None:
    days = _days(n)
    series = [charts.Series("egress", "Egress", [float(i + 1) for i in range(n)], "#000")]

    chart = charts.bar_chart(label="Egress", days=days, series=series, fmt=_fmt, width=width)

    _assert_inside(chart.svg, "7 Dec")


@pytest.mark.parametrize("n", [2, 7, 30, 31])
def test_stacked_area_day_labels_stay_inside(n: int) -> None:
    days = _days(n)
    series = [
        charts.Series(t, t.capitalize(), [float(i) for i in range(n)], charts.TIER_COLORS[t])
        for t in ("hot", "warm", "archive")
    ]

    chart = charts.stacked_area_chart(label="Stored", days=days, series=series, fmt=_fmt)

    _assert_inside(chart.svg, "7 Dec")


def test_line_chart_horizon_labels_stay_inside() -> None:
    horizons = ["7 days", "30 days", "90 days", "180 days", "365 days"]
    series = [charts.Series("ct", "CT", [0.5, 0.3, 0.2, 0.1, math.nan], "#000")]

    chart = line_chart(label="Read again", categories=horizons, series=series, fmt=str)

    _assert_inside(chart.svg, "365 days")


def test_a_label_in_the_middle_stays_centred_under_its_point() -> None:
    text = ET.fromstring(charts.x_label("7 Dec", x=200, y=10, width=400))

    assert (text.get("text-anchor"), text.get("x")) == ("middle", "200")


@pytest.mark.parametrize(("x", "anchor"), [(395, "end"), (3, "start")])
def test_a_label_at_an_edge_is_anchored_inside(x: float, anchor: str) -> None:
    text = ET.fromstring(charts.x_label("7 Dec", x=x, y=10, width=400))

    assert text.get("text-anchor") == anchor
