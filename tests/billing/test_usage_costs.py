"""The usage report's cost column: each month's invoice amounts shared among the report's rows in
proportion to their usage, computed by the invoice itself (never priced a second time)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from django.test import Client
from django.urls import reverse
from pypdf import PdfReader

from billing import reports
from billing.invoicing import invoice_compute
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import PlanPrice, PricePlan, Subscription
from billing.rollups import rollup_run
from tenants.models import Membership, Organization

pytestmark = pytest.mark.django_db


def at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def subscribe(org: Organization) -> None:
    """10 GiB-months of hot storage included, then 0.05 / GiB-month; egress 0.09 / GiB."""
    plan = PricePlan.objects.create(code="costs", name="Costs", currency="EUR")
    PlanPrice.objects.create(
        plan=plan, meter="storage", unit_price=D("0.05"), included_quantity=D(10)
    )
    PlanPrice.objects.create(plan=plan, meter="egress.bytes", unit_price=D("0.09"))
    Subscription.objects.create(organization=org, plan=plan, starts_at=at(1, 1))


def usage(org: Organization) -> None:
    """April and May: 40 GiB hot and 20 GiB warm all the time; 100 GiB egress on April 10."""
    storage_delta(org=org, tier="hot", delta_bytes=40 * GIB, at=at(4, 1), idempotency_key="h")
    storage_delta(org=org, tier="warm", delta_bytes=20 * GIB, at=at(4, 1), idempotency_key="w")
    record_usage(
        org=org, meter="egress.bytes", quantity=100 * GIB, at=at(4, 10), idempotency_key="e"
    )
    rollup_run(now=at(6, 1))


def april_lines(org: Organization) -> dict[str, D]:
    draft = invoice_compute(org=org, period_start=at(4, 1))
    return {ln.dimension_key or ln.meter: ln.unrounded_amount for ln in draft.lines}


def test_a_whole_month_costs_what_its_invoice_lines_say(org):
    subscribe(org)
    usage(org)
    report = reports.usage_report(org=org, start=at(4, 1), end=at(5, 1), group_by=["tier"])
    costs = {(r.meter, r.tier): r.cost for r in report.rows}
    # Each tier's line has its allowance: (40 - 10) x 0.05 and (20 - 10) x 0.05.
    lines = april_lines(org)
    assert (lines["tier=hot"], lines["tier=warm"]) == (D("1.50"), D("0.50"))
    assert costs[("storage", "hot")] == D("1.50")
    assert costs[("storage", "warm")] == D("0.50")
    assert costs[("egress.bytes", None)] == D("9.00")
    assert report.currency == "EUR"
    assert report.total_cost == D("11.00")


def test_without_tiers_a_meter_costs_the_sum_of_its_tiers(org):
    subscribe(org)
    usage(org)
    report = reports.usage_report(org=org, start=at(4, 1), end=at(5, 1), group_by=[])
    assert {r.meter: r.cost for r in report.rows} == {
        "storage": D("2.00"),
        "egress.bytes": D("9.00"),
    }


def test_days_share_their_month_and_two_months_add_up(org):
    subscribe(org)
    usage(org)
    report = reports.usage_report(org=org, start=at(4, 1), end=at(6, 1), group_by=["day"])
    storage = [r for r in report.rows if r.meter == "storage"]
    april = [r.cost for r in storage if r.day is not None and r.day.month == 4]
    may = [r.cost for r in storage if r.day is not None and r.day.month == 5]
    # Same usage every day: each April day is a thirtieth of 2.00, each May day a 31st; the
    # egress day carries all of April's egress.
    assert set(april) == {D("0.07")}
    assert set(may) == {D("0.06")}
    assert len(april) == 30 and len(may) == 31
    egress = [r for r in report.rows if r.meter == "egress.bytes"]
    assert [(r.day, r.cost) for r in egress] == [(at(4, 10).date(), D("9.00"))]
    # Rows are rounded one by one: their sum may be cents away from the months' 4.00 + 9.00.
    assert report.total_cost == D("0.07") * 30 + D("0.06") * 31 + D("9.00")


def test_a_meter_no_plan_prices_has_no_cost(org):
    PricePlan.objects.update(is_default=False)
    usage(org)
    report = reports.usage_report(org=org, start=at(4, 1), end=at(5, 1), group_by=[])
    assert {r.cost for r in report.rows} == {None}
    assert report.total_cost == D("0.00")


def pdf_text(content: bytes) -> str:
    text = " ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)
    return re.sub(r"\s+", " ", text)


def test_csv_pdf_and_portal_show_the_same_costs(org, owner: Membership):
    subscribe(org)
    usage(org)
    report = reports.usage_report(org=org, start=at(4, 1), end=at(5, 1), group_by=["tier"])
    rows = list(csv.reader(io.StringIO("".join(reports.usage_report_csv(report)))))
    header = rows.index(
        [
            "meter",
            "description",
            "tier",
            "base_quantity",
            "base_unit",
            "byte_hours",
            "quantity",
            "unit",
            "cost",
        ]
    )
    assert [r[-1] for r in rows[header + 1 : header + 4]] == ["1.50", "0.50", "9.00"]
    assert rows[-1][-1] == "11.00"
    text = pdf_text(reports.usage_report_pdf(report))
    assert "Cost (EUR)" in text and "1.50" in text and "0.50" in text and "11.00" in text
    client = Client()
    client.force_login(owner.user)
    page = client.get(
        reverse("portal-billing-usage", args=[org.slug]),
        {"start": "2026-04-01", "end": "2026-04-30", "group_by": "tier", "format": "html"},
    ).content.decode()
    assert "Cost (EUR)" in page
    assert '<td class="num nowrap" id="usage-total-cost">11.00 EUR</td>' in page
    assert '<td class="num nowrap">1.50</td>' in page
