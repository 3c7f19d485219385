"""The cost simulator's chart says each month's cost as the table and the API say it: as billed,
each component rounded to the cent (or to 4 decimals when that is 0.00). See
test_figures_agree.py for the demo's pages."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from archive.analytics.simulator.results import (
    SCENARIO_LABELS,
    MonthCost,
    Scenario,
    Simulation,
    money_text,
)
from tests.billing.figures import chart_table, page

ACTIVE = SCENARIO_LABELS["active"]


def _month(components: dict[str, str], exact: dict[str, str]) -> MonthCost:
    return MonthCost(
        start=date(2027, 1, 1),
        components={k: Decimal(v) for k, v in components.items()},
        exact={k: Decimal(v) for k, v in exact.items()},
        bytes_by_tier={},
    )


def test_the_simulation_charts_months_are_the_amounts_the_table_and_the_api_show() -> None:
    """A month is billed with each component rounded to the cent (the API's ``total``, the
    table's cells): the chart's point says that amount, not the rounded sum of the exact
    components (here 0.02, not 0.01); a month that rounds to 0.00 shows its exact amount to 4
    decimals, as the table does."""
    billed = _month(
        {"storage_hot": "0.01", "egress": "0.01"}, {"storage_hot": "0.005", "egress": "0.005"}
    )
    tiny = _month({"storage_hot": "0.00"}, {"storage_hot": "0.0032"})
    assert (billed.total, billed.exact_total) == (Decimal("0.02"), Decimal("0.010"))
    scenario = Scenario(key="active", label=ACTIVE, rules=[], months=[billed, tiny])
    simulation = Simulation(
        as_of=datetime(2026, 12, 7, tzinfo=UTC),
        currency="USD",
        plan_code="standard",
        month_starts=[date(2027, 1, 1), date(2027, 2, 1)],
        scenarios=[scenario],
        recommendations=[],
        curve=None,  # type: ignore[arg-type]  # the chart does not read it
        instances=0,
        bytes=0,
        buckets=0,
        ingest_bytes_per_month=0,
    )
    chart = page(str(simulation.chart))
    head, rows = chart_table(chart)
    assert head == [ACTIVE]
    assert [row[1] for row in rows] == ["0.02 USD", "0.0032 USD"]
    assert simulation.as_dict()["scenarios"][0]["months"][0]["total"] == "0.02"
    assert money_text(billed.total, billed.exact_total) == "0.02"
    assert money_text(tiny.total, tiny.exact_total) == "0.0032"
    titles = [c.own_title for c in chart.find_all("circle")]
    assert titles == [f"{ACTIVE} · Jan 27: 0.02 USD", f"{ACTIVE} · Feb 27: 0.0032 USD"]
