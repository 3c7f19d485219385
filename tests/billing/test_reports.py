"""billing.reports: usage reports from rollups, invoice documents as CSV and PDF."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from pypdf import PdfReader

from billing import reports
from billing.invoicing import invoice_compute
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Invoice
from billing.rollups import rollup_run
from billing.services import budget_set, credit_note_create, invoice_finalize, invoice_void
from tenants.context import Actor
from tenants.errors import ValidationFailed

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
APRIL = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def april_usage(org) -> None:
    """10 GiB hot all of April (= 10 GiB-months, 7,200 GiB-hours) and 150 GiB egress."""
    storage_delta(org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="h")
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 10), idempotency_key="e"
    )
    rollup_run(now=at(2026, 5, 1))


def pdf_text(content: bytes) -> str:
    text = " ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)
    return re.sub(r"\s+", " ", text)


# --- usage report ----------------------------------------------------------------------------


def test_ten_gib_hot_for_all_of_april_is_ten_gib_months(org):
    april_usage(org)
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["meter", "tier"])
    rows = {(r.meter, r.tier): r for r in report.rows}
    hot = rows[("storage", "hot")]
    assert hot.base_quantity == 10 * GIB * 720 * 3600  # byte-seconds
    assert hot.base_unit == "byte-second"
    assert hot.byte_hours == D(10 * GIB * 720)
    assert hot.byte_hours / GIB == D(7200)  # GiB-hours
    assert (hot.quantity, hot.unit) == (D(10), "GiB-month")
    egress = rows[("egress.bytes", None)]
    assert (egress.base_quantity, egress.quantity, egress.unit) == (150 * GIB, D(150), "GiB")
    assert egress.byte_hours is None
    assert report.group_by == ("meter", "tier")


def test_by_day_each_april_day_is_a_thirtieth_of_the_month(org):
    april_usage(org)
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["day", "tier"])
    storage = [r for r in report.rows if r.meter == "storage"]
    assert [r.day for r in storage] == [at(2026, 4, d).date() for d in range(1, 31)]
    assert {r.base_quantity for r in storage} == {10 * GIB * 24 * 3600}
    assert {r.quantity for r in storage} == {D("0.333333333")}  # 10 x 24 / 720, 9 places
    assert sum(r.base_quantity for r in storage) == 10 * GIB * 720 * 3600


def test_a_range_over_two_months_converts_each_month_with_its_own_hours(org):
    storage_delta(
        org=org, tier="cold", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="c"
    )
    rollup_run(now=at(2026, 6, 1))
    report = reports.usage_report(org=org, start=at(2026, 4, 1), end=at(2026, 6, 1), group_by=[])
    (row,) = report.rows
    # April has 720 hours, May 744: 10 GiB-months each, although the byte-hours differ.
    assert row.base_quantity == 10 * GIB * (720 + 744) * 3600
    assert row.quantity == D(20)
    assert row.tier is None and row.day is None


def test_without_tier_grouping_the_tiers_of_a_meter_are_added_up(org):
    storage_delta(org=org, tier="hot", delta_bytes=GIB, at=at(2026, 4, 1), idempotency_key="h")
    storage_delta(org=org, tier="cold", delta_bytes=3 * GIB, at=at(2026, 4, 1), idempotency_key="c")
    rollup_run(now=at(2026, 5, 1))
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["meter"])
    assert [(r.meter, r.quantity) for r in report.rows] == [("storage", D(4))]


def test_report_reads_only_its_own_organization(org, other_org):
    april_usage(other_org)
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["tier"])
    assert report.rows == []


@pytest.mark.parametrize(
    ("start", "end", "group_by", "field"),
    [
        (APRIL[1], APRIL[0], [], "end"),
        (APRIL[0], APRIL[0], [], "end"),
        (datetime(2026, 4, 1), APRIL[1], [], "start"),
        (APRIL[0], datetime(2026, 5, 1), [], "end"),
        (APRIL[0], APRIL[0] + timedelta(days=500), [], "end"),
        (APRIL[0], APRIL[1], ["meter", "region"], "group_by"),
    ],
    ids=["reversed", "empty", "naive-start", "naive-end", "too-long", "unknown-grouping"],
)
def test_bad_report_requests_are_refused_with_the_field(org, start, end, group_by, field):
    with pytest.raises(ValidationFailed) as err:
        reports.usage_report(org=org, start=start, end=end, group_by=group_by)
    assert field in err.value.fields


def test_report_length_follows_the_setting(org, settings):
    settings.BILLING_MAX_REPORT_DAYS = 10
    with pytest.raises(ValidationFailed):
        reports.usage_report(org=org, start=APRIL[0], end=at(2026, 4, 13), group_by=[])
    assert (
        reports.usage_report(org=org, start=APRIL[0], end=at(2026, 4, 11), group_by=[]).rows == []
    )


def test_usage_csv_has_header_lines_and_one_row_per_report_row(org):
    april_usage(org)
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["tier"])
    rows = list(csv.reader(io.StringIO("".join(reports.usage_report_csv(report)))))
    assert rows[0] == ["Organization", "St. Mary Hospital", "st-mary"]
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
    body = rows[header + 1 : rows.index([], header)]
    assert len(body) == len(report.rows)
    assert body[0][:3] == ["storage", "Storage", "hot"]
    assert D(body[0][6]) == D(10)
    assert ["Currency", "USD"] in rows
    assert rows[-1] == ["Total cost", *[""] * 7, str(report.total_cost)]


# --- invoice documents -----------------------------------------------------------------------


@pytest.fixture
def april_invoice(org) -> Invoice:
    april_usage(org)
    return invoice_finalize(org=org, period_start=APRIL[0], actor=SYSTEM, now=at(2026, 5, 2))


def csv_rows(doc: reports.InvoiceDocument) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(reports.invoice_csv(doc)))))


def test_invoice_csv_totals_are_the_sums_of_its_lines(april_invoice):
    rows = csv_rows(reports.invoice_document(april_invoice))
    assert ["Invoice", april_invoice.number] in rows
    header = rows.index(reports.invoice_columns(april_invoice.currency))
    lines = []
    for row in rows[header + 1 :]:
        if not row:
            break
        lines.append(row)
    assert [r[1] for r in lines] == [ln.description for ln in april_invoice.lines.all()]
    totals = {r[0]: D(r[-1]) for r in rows if r and r[0] in {"Subtotal", "Total", "Adjustments"}}
    assert totals["Total"] == sum(D(r[-1]) for r in lines) == D("4.73")
    assert totals["Subtotal"] == sum(D(r[-1]) for r in lines if r[2])


def test_draft_csv_is_marked_draft_and_matches_invoice_compute(org):
    april_usage(org)
    draft = invoice_compute(org=org, period_start=APRIL[0])
    rows = csv_rows(reports.invoice_document(draft, as_of=at(2026, 4, 30)))
    assert ["Invoice", "DRAFT"] in rows
    assert ["Total", "", "", "", "", str(draft.total)] in rows


def test_text_cells_that_look_like_formulas_are_defused(org):
    org.name = "=HYPERLINK(evil)"
    org.save()
    draft = invoice_compute(org=org, period_start=APRIL[0])
    rows = csv_rows(reports.invoice_document(draft))
    assert rows[1][1] == "'=HYPERLINK(evil)"


def test_invoice_pdf_shows_number_period_lines_and_totals(april_invoice):
    text = pdf_text(reports.invoice_pdf(reports.invoice_document(april_invoice)))
    assert "Strata" in text
    assert "St. Mary Hospital" in text and "st-mary" in text
    assert april_invoice.number in text
    assert "1 Apr 2026 – 30 Apr 2026" in text
    assert "Issue date" in text
    for line in april_invoice.lines.all():
        assert line.description in text
        assert reports.money_label(line.amount) in text
    assert "10.000 GiB-month" in text
    assert "4.73" in text and "USD" in text
    assert "rounded half-up to the cent once" in text
    assert "GiB-month = byte-hours / 2^30 / hours in the month" in text


def test_void_invoice_pdf_says_void_and_lists_credit_notes(april_invoice):
    credit_note_create(
        org=april_invoice.organization,
        invoice=april_invoice,
        amount=D("1.25"),
        reason="Goodwill <& thanks>",
        actor=SYSTEM,
    )
    invoice_void(
        org=april_invoice.organization, invoice=april_invoice, reason="wrong plan", actor=SYSTEM
    )
    invoice = Invoice.objects.get(pk=april_invoice.pk)
    doc = reports.invoice_document(invoice)
    text = pdf_text(reports.invoice_pdf(doc))
    assert "VOID" in text and "wrong plan" in text
    assert "CN-" in text and "Goodwill <& thanks>" in text and "1.25" in text
    assert "3.48" in text  # 4.73 - 1.25 after credit notes
    rows = csv_rows(doc)
    assert ["Status", "void"] in rows
    assert ["Total after credit notes", "", "", "", "", "3.48"] in rows


def test_draft_pdf_says_it_is_not_a_final_invoice(org):
    april_usage(org)
    draft = invoice_compute(org=org, period_start=APRIL[0])
    text = pdf_text(reports.invoice_pdf(reports.invoice_document(draft, as_of=at(2026, 4, 20))))
    assert "DRAFT — not a final invoice" in text
    for line in draft.lines:
        assert line.description in text
    assert reports.money_label(draft.total) in text


def test_usage_report_pdf_has_a_row_per_meter_and_tier(org):
    april_usage(org)
    report = reports.usage_report(org=org, start=APRIL[0], end=APRIL[1], group_by=["tier"])
    text = pdf_text(reports.usage_report_pdf(report))
    assert "Usage report" in text and "1 Apr 2026 – 30 Apr 2026" in text
    assert "10 GiB-month" in text and "150 GiB" in text and "Egress" in text


def test_draft_overview_reports_budget_use(org):
    april_usage(org)
    budget_set(org=org, monthly_amount="10.00", thresholds=[50, 100], actor=SYSTEM)
    overview = reports.draft_overview(org=org, now=at(2026, 4, 30, 23, 30))
    assert overview.draft.total == invoice_compute(org=org, period_start=APRIL[0]).total
    assert overview.budget is not None
    assert overview.budget.spent == overview.forecast.actual_total
    assert overview.budget.percent_used == (overview.budget.spent * 10).quantize(D("0.1"))


@pytest.mark.parametrize(
    ("start", "end", "label"),
    [
        (at(2026, 4, 1), at(2026, 5, 1), "1 Apr 2026 – 30 Apr 2026"),
        (at(2026, 12, 1), at(2027, 1, 1), "1 Dec 2026 – 31 Dec 2026"),
        (
            at(2026, 4, 1, 6),
            at(2026, 4, 2),
            "1 Apr 2026 06:00 – 2 Apr 2026 00:00 UTC (end excluded)",
        ),
    ],
)
def test_period_labels_read_as_people_read_them(start, end, label):
    assert reports.period_label(start, end) == label


def test_huge_quantities_keep_nine_places_without_overflowing_the_decimal_context():
    # Byte-hours of petabytes over a year need more than Decimal's default 28 digits.
    value = D("123456789012345678901234.5678901234")
    with pytest.raises(ArithmeticError):
        value.quantize(D("0.000000001"))
    assert str(reports.quantity_shown(value)) == "123456789012345678901234.567890123"
    assert reports.quantity_label(value) == "123,456,789,012,345,678,901,234.567890123"


@pytest.mark.parametrize(
    ("quantity", "unit", "label"),
    [
        (D("10.000000000"), "GiB-month", "10 GiB-month"),
        (D("5"), "1,000 requests", "5 × 1,000 requests"),
        (D("0.333333333"), "GiB-month", "0.333333333 GiB-month"),
        (D("0"), "GiB", "0 GiB"),
        (D("5"), "", ""),
    ],
)
def test_quantities_read_naturally(quantity, unit, label):
    assert reports.amount_of_unit(quantity, unit) == label
