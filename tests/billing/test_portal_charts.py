"""The portal's server-side SVG charts: well-formed, accessible, and drawing what they are given."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest
from django.template import Context, Template

from tenants import charts, labels

NS = "{http://www.w3.org/2000/svg}"
DAYS = [date(2026, 4, 1) + timedelta(days=i) for i in range(30)]


def parse(chart: charts.Chart) -> ET.Element:
    root = ET.fromstring(chart.svg)
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label") == chart.label
    assert root.get("viewBox")
    return root


def fmt(value: float) -> str:
    return f"{charts.number_label(value)} GiB"


def test_stacked_bars_have_one_group_per_series_and_a_tooltip_per_bar() -> None:
    hot = charts.Series("hot", "Hot", [1.0] * 30, charts.TIER_COLORS["hot"])
    cold = charts.Series("cold", "Cold", [0.0] * 29 + [2.5], charts.TIER_COLORS["cold"])
    chart = charts.bar_chart(label="Transitions per day", days=DAYS, series=[hot, cold], fmt=fmt)
    root = parse(chart)
    groups = {g.get("data-series"): g for g in root.iter(f"{NS}g") if g.get("data-series")}
    assert list(groups) == ["hot", "cold"]
    assert len(groups["hot"].findall(f"{NS}rect")) == 30
    assert len(groups["cold"].findall(f"{NS}rect")) == 1  # zero days draw nothing
    (bar,) = groups["cold"].findall(f"{NS}rect")
    assert bar.findtext(f"{NS}title") == "Cold · 30 Apr 2026: 2.5 GiB"
    # Cold sits on top of hot on the last day.
    last_hot = groups["hot"].findall(f"{NS}rect")[-1]
    assert float(bar.get("y", 0)) + float(bar.get("height", 0)) == pytest.approx(
        float(last_hot.get("y", 0)), abs=0.02
    )
    hover = [r for r in root.iter(f"{NS}rect") if r.get("class") == "hover"]
    assert len(hover) == 30
    assert hover[-1].findtext(f"{NS}title") == "30 Apr 2026: 3.5 GiB (Hot 1 GiB, Cold 2.5 GiB)"
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "Hot" in texts and "Cold" in texts  # legend
    assert "30 Apr" in texts  # the last day is always labelled
    assert "0 GiB" in texts and "4 GiB" in texts  # y ticks from 0 to a round top


def test_single_series_has_no_legend_unless_asked() -> None:
    series = [charts.Series("egress.bytes", "Egress", [3.0] * 30, charts.ACCENT)]
    plain = parse(charts.bar_chart(label="Egress", days=DAYS, series=series, fmt=fmt))
    assert not [g for g in plain.iter(f"{NS}g") if g.get("class") == "legend"]
    named = parse(charts.bar_chart(label="Egress", days=DAYS, series=series, fmt=fmt, legend=True))
    assert [g for g in named.iter(f"{NS}g") if g.get("class") == "legend"]


def test_stacked_area_has_a_series_per_tier_and_a_point_per_day() -> None:
    series = [
        charts.Series(t, t.capitalize(), [float(i) for i in range(30)], charts.TIER_COLORS[t])
        for t in ("hot", "warm", "archive")
    ]
    chart = charts.stacked_area_chart(label="Stored", days=DAYS, series=series, fmt=fmt)
    root = parse(chart)
    groups = [g for g in root.iter(f"{NS}g") if g.get("data-series")]
    assert [g.get("data-series") for g in groups] == ["hot", "warm", "archive"]
    for g in groups:
        assert len(g.findall(f"{NS}circle")) == 30
        assert g.find(f"{NS}path/{NS}title") is not None
    tip = groups[2].findall(f"{NS}circle")[10].findtext(f"{NS}title")
    assert tip == "Archive · 11 Apr 2026: 10 GiB"


def test_one_day_and_empty_charts_are_still_valid_svg() -> None:
    one = [charts.Series("hot", "Hot", [5.0], charts.TIER_COLORS["hot"])]
    parse(charts.stacked_area_chart(label="One day", days=DAYS[:1], series=one, fmt=fmt))
    parse(charts.bar_chart(label="One day", days=DAYS[:1], series=one, fmt=fmt))
    empty = [charts.Series("hot", "Hot", [0.0] * 30, charts.TIER_COLORS["hot"])]
    root = parse(charts.bar_chart(label="Nothing", days=DAYS, series=empty, fmt=fmt))
    assert "No usage in this period" in [t.text for t in root.iter(f"{NS}text")]
    parse(charts.stacked_area_chart(label="Nothing", days=[], series=[], fmt=fmt))


def test_mismatched_series_are_refused() -> None:
    with pytest.raises(ValueError, match="has 2 values for 30 days"):
        charts.bar_chart(
            label="x", days=DAYS, series=[charts.Series("a", "A", [1.0, 2.0], "#000")], fmt=fmt
        )


def test_labels_are_escaped() -> None:
    nasty = "<script>alert('x')</script> & \"co\""
    series = [charts.Series("a", nasty, [1.0] * 30, "#000")]
    chart = charts.bar_chart(label=nasty, days=DAYS, series=series, fmt=fmt, legend=True)
    root = parse(chart)
    assert "<script>" not in chart.svg and "<script>" not in chart.table
    assert nasty in [t.text for t in root.iter(f"{NS}text")]


def test_budget_gauge_marks_budget_thresholds_and_overrun() -> None:
    chart = charts.budget_gauge(
        actual=120.0,
        forecast=180.0,
        budget=100.0,
        thresholds=[50, 80, 100],
        fmt=lambda v: f"{v:,.2f} USD",
    )
    root = parse(chart)
    assert chart.label == (
        "Spent 120.00 USD so far; forecast 180.00 USD at month end; monthly budget 100.00 USD."
    )
    actual = next(r for r in root.iter(f"{NS}rect") if r.get("class") == "bar-actual")
    assert actual.get("fill") == charts.OVER
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "50%" in texts and "80%" in texts
    assert "Budget 100.00 USD" in texts
    no_budget = charts.budget_gauge(
        actual=1.0, forecast=2.0, budget=None, thresholds=[], fmt=lambda v: f"{v:.2f}"
    )
    assert parse(no_budget).get("aria-label", "").endswith("no budget set.")


def test_chart_renders_unescaped_in_a_template_with_its_data_table() -> None:
    series = [charts.Series("a", "A & B", [1.0] * 30, "#000")]
    chart = charts.bar_chart(label="Usage", days=DAYS, series=series, fmt=fmt)
    html = Template("{{ chart }}").render(Context({"chart": chart}))
    assert html.startswith('<figure class="chart"><svg xmlns=')
    assert '<details class="chart-data"><summary>' in html
    assert len(re.findall(r"<tr><th scope=\"row\"", html)) == 30
    assert "A &amp; B" in html


@pytest.mark.parametrize(
    ("maximum", "ticks"),
    [
        (0, [0.0, 1.0]),
        (3.5, [0.0, 1.0, 2.0, 3.0, 4.0]),
        (7, [0.0, 2.0, 4.0, 6.0, 8.0]),
        (9.2, [0.0, 2.5, 5.0, 7.5, 10.0]),
        (1234, [0.0, 500.0, 1000.0, 1500.0]),
        (0.042, [0.0, 0.02, 0.04, 0.06]),
    ],
)
def test_nice_ticks(maximum: float, ticks: list[float]) -> None:
    assert charts.nice_ticks(maximum) == pytest.approx(ticks)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1234.5, "1,234"),
        (12.34, "12.3"),
        (12.0, "12"),
        (1.5, "1.5"),
        (0.0042, "0.0042"),
        (0.0006, "0.0006"),
        (0.000123, "0.00012"),
        (-0.05, "-0.05"),
    ],
)
def test_number_label(value: float, text: str) -> None:
    assert charts.number_label(value) == text


def test_byte_scale() -> None:
    assert labels.byte_scale(3 * 2**40) == (2**40, "TiB")
    assert labels.byte_scale(500 * 2**30) == (2**30, "GiB")
    assert labels.byte_scale(10) == (1, "B")
