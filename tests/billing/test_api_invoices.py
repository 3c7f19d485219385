"""Invoices through the API: the live draft, finalized invoices, their CSV/PDF and line traces."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from django.utils import timezone
from pypdf import PdfReader

from billing import reports
from billing.invoicing import invoice_compute
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Invoice
from billing.periods import month_start
from billing.rollups import rollup_run
from billing.services import (
    budget_set,
    credit_note_create,
    invoice_finalize,
    invoice_void,
    plan_create,
    subscription_change,
)
from tenants.context import Actor

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def pdf_text(content: bytes) -> str:
    text = " ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)
    return re.sub(r"\s+", " ", text)


def csv_rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def line_rows(rows: list[list[str]]) -> list[list[str]]:
    start = rows.index(reports.invoice_columns("USD"))
    out = []
    for row in rows[start + 1 :]:
        if not row:
            break
        out.append(row)
    return out


def totals(rows: list[list[str]]) -> dict[str, D]:
    names = {"Subtotal", "Minimum commitment", "Adjustments", "Total"}
    return {row[0]: D(row[-1]) for row in rows if row and row[0] in names}


@pytest.fixture
def client(token_client, org):
    return token_client(org, ["usage:read"])


@pytest.fixture
def april_invoice(org) -> Invoice:
    """April: 10 GiB hot all month, 30 GiB warm from the 10th 13:20, 150 GiB egress, 5,000 API
    requests; a plan change on the 16th splits every line in two."""
    flat = plan_create(
        code="flat",
        name="Flat",
        currency="USD",
        actor=SYSTEM,
        monthly_minimum=D("10.00"),
        prices=[
            {"meter": "storage", "model": "per_unit", "unit_price": "0.05"},
            {"meter": "egress.bytes", "model": "per_unit", "unit_price": "0.08"},
        ],
    )
    storage_delta(org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="h")
    storage_delta(
        org=org, tier="warm", delta_bytes=30 * GIB, at=at(2026, 4, 10, 13, 20), idempotency_key="w"
    )
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 10), idempotency_key="e"
    )
    record_usage(
        org=org, meter="api.requests", quantity=5000, at=at(2026, 4, 20), idempotency_key="r"
    )
    rollup_run(now=at(2026, 5, 1))
    subscription_change(org=org, plan=flat, starts_at=at(2026, 4, 16), actor=SYSTEM)
    return invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM, now=at(2026, 5, 2))


def test_draft_numbers_equal_invoice_compute(client, org):
    now = timezone.now()
    storage_delta(
        org=org, tier="hot", delta_bytes=25 * GIB, at=month_start(now), idempotency_key="h"
    )
    record_usage(
        org=org, meter="egress.bytes", quantity=170 * GIB, at=now, idempotency_key="egress"
    )
    rollup_run(now=now)
    response = client.get("/api/v1/invoices/draft/")
    assert response.status_code == 200
    body = response.json()
    draft = invoice_compute(org=org, period_start=month_start(now))
    assert body["currency"] == draft.currency
    assert D(body["subtotal"]) == draft.subtotal
    assert D(body["minimum_adjustment"]) == draft.minimum_adjustment
    assert D(body["total"]) == draft.total
    assert [(ln["description"], D(ln["amount"]), ln["base_quantity"]) for ln in body["lines"]] == [
        (ln.description, ln.amount, ln.base_quantity) for ln in draft.lines
    ]
    assert [ln["position"] for ln in body["lines"]] == list(range(1, len(draft.lines) + 1))
    egress = next(ln for ln in body["lines"] if ln["meter"] == "egress.bytes")
    assert egress["amount"] == "6.30"  # 70 GiB over the 100 included, x 0.09
    assert D(body["total"]) == sum(D(ln["amount"]) for ln in body["lines"])
    assert body["budget"] is None
    forecast = body["forecast"]
    assert D(forecast["actual_total"]) == sum(D(m["actual"]) for m in forecast["per_meter"])
    assert D(forecast["projected_total"]) == sum(D(m["forecast"]) for m in forecast["per_meter"])
    assert {(m["meter"], m["tier"]) for m in forecast["per_meter"]} >= {
        ("storage", "hot"),
        ("egress.bytes", ""),
    }


def test_draft_shows_the_budget_and_how_much_is_used(client, org):
    now = timezone.now()
    record_usage(
        org=org, meter="egress.bytes", quantity=200 * GIB, at=now, idempotency_key="egress"
    )
    rollup_run(now=now)
    budget_set(org=org, monthly_amount="18.00", thresholds=[50, 100], actor=SYSTEM)
    budget = client.get("/api/v1/invoices/draft/").json()["budget"]
    assert budget["monthly_amount"] == "18.00"
    assert budget["thresholds"] == [50, 100]
    assert budget["spent"] == "9.00"
    assert budget["percent_used"] == "50.0"
    assert D(budget["forecast_percent"]) == (D(budget["forecast"]) * 100 / 18).quantize(D("0.1"))


def test_draft_csv_and_pdf_show_the_same_lines_as_the_draft(client, org):
    now = timezone.now()
    record_usage(
        org=org, meter="egress.bytes", quantity=170 * GIB, at=now, idempotency_key="egress"
    )
    rollup_run(now=now)
    draft = invoice_compute(org=org, period_start=month_start(now))
    response = client.get("/api/v1/invoices/draft.csv")
    assert response.status_code == 200
    rows = csv_rows(response)
    assert ["Invoice", "DRAFT"] in rows
    assert [D(r[-1]) for r in line_rows(rows)] == [ln.amount for ln in draft.lines]
    assert totals(rows)["Total"] == draft.total
    pdf = client.get("/api/v1/invoices/draft.pdf")
    assert pdf["Content-Type"] == "application/pdf"
    text = pdf_text(pdf.content)
    assert "DRAFT — not a final invoice" in text
    assert "Egress" in text and str(draft.total) in text


def test_list_shows_finalized_and_void_invoices_newest_first(client, org, april_invoice):
    rollup_run(now=at(2026, 6, 1))
    may = invoice_finalize(org=org, period_start=at(2026, 5, 1), actor=SYSTEM, now=at(2026, 6, 2))
    invoice_void(org=org, invoice=april_invoice, reason="wrong plan", actor=SYSTEM)
    body = client.get("/api/v1/invoices/").json()
    assert [(i["number"], i["status"]) for i in body["results"]] == [
        (may.number, "finalized"),
        (april_invoice.number, "void"),
    ]
    assert body["results"][1]["void_reason"] == "wrong plan"
    assert set(body) >= {"next", "previous", "results"}


def test_list_pages_with_a_cursor(client, org, april_invoice):
    rollup_run(now=at(2026, 6, 1))
    invoice_finalize(org=org, period_start=at(2026, 5, 1), actor=SYSTEM, now=at(2026, 6, 2))
    first = client.get("/api/v1/invoices/", {"page_size": 1}).json()
    assert len(first["results"]) == 1 and first["next"]
    second = client.get(first["next"]).json()
    assert [i["number"] for i in second["results"]] == [april_invoice.number]


def test_detail_has_every_line_with_its_usage_window_and_breakdown(client, april_invoice):
    body = client.get(f"/api/v1/invoices/{april_invoice.pk}/").json()
    assert body["number"] == april_invoice.number
    assert body["total"] == str(april_invoice.total)
    stored = list(april_invoice.lines.order_by("position"))
    assert [ln["id"] for ln in body["lines"]] == [ln.pk for ln in stored]
    first = body["lines"][0]
    assert set(first) >= {
        "usage_start",
        "usage_end",
        "meter",
        "dimension_key",
        "base_quantity",
        "quantity",
        "unit",
        "amount",
        "breakdown",
    }
    hot = next(ln for ln in body["lines"] if ln["tier"] == "hot" and ln["plan_code"] == "flat")
    assert hot["usage_start"] == "2026-04-16T00:00:00Z"
    assert hot["usage_end"] == "2026-05-01T00:00:00Z"
    assert hot["base_unit"] == "byte-second"
    assert D(hot["quantity"]) == 5  # 10 GiB for half of April
    assert hot["amount"] == "0.25"
    assert D(hot["breakdown"][0]["unit_price"]) == D("0.05")
    assert D(body["total"]) == sum(D(ln["amount"]) for ln in body["lines"])
    assert body["credit_notes"] == []


def test_credit_notes_appear_on_the_invoice(client, org, april_invoice):
    note = credit_note_create(
        org=org, invoice=april_invoice, amount=D("2.00"), reason="goodwill", actor=SYSTEM
    )
    body = client.get(f"/api/v1/invoices/{april_invoice.pk}/").json()
    assert body["credit_notes"] == [
        {
            "id": note.pk,
            "number": note.number,
            "invoice": april_invoice.number,
            "amount": "2.00",
            "reason": "goodwill",
            "created_at": body["credit_notes"][0]["created_at"],
        }
    ]


def test_invoice_csv_lines_match_and_totals_are_their_sums(client, april_invoice):
    response = client.get(f"/api/v1/invoices/{april_invoice.pk}.csv")
    assert response.status_code == 200
    assert f'filename="{april_invoice.number}.csv"' in response["Content-Disposition"]
    rows = csv_rows(response)
    assert ["Invoice", april_invoice.number] in rows
    assert ["Currency", "USD"] in rows
    lines = line_rows(rows)
    stored = list(april_invoice.lines.order_by("position"))
    assert [(int(r[0]), r[1], D(r[-1])) for r in lines] == [
        (ln.position, ln.description, ln.amount) for ln in stored
    ]
    sums = totals(rows)
    assert sums["Total"] == sum(D(r[-1]) for r in lines) == april_invoice.total
    assert sums["Subtotal"] + sums["Minimum commitment"] + sums["Adjustments"] == sums["Total"]
    assert sums["Minimum commitment"] > 0  # the flat plan's prorated minimum tops up


def test_invoice_pdf_has_every_line_and_the_totals(client, april_invoice):
    response = client.get(f"/api/v1/invoices/{april_invoice.pk}.pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    text = pdf_text(response.content)
    assert april_invoice.number in text
    assert "1 Apr 2026 – 30 Apr 2026" in text
    for line in april_invoice.lines.all():
        assert re.sub(r"\s+", " ", line.description) in text
        assert f"{line.amount:,.2f}" in text
    assert f"{april_invoice.subtotal:,.2f}" in text
    assert f"{april_invoice.total:,.2f}" in text
    assert "each line is rounded half-up to the cent once" in text


def test_void_invoice_pdf_is_marked_void(client, org, april_invoice):
    invoice_void(org=org, invoice=april_invoice, reason="wrong plan", actor=SYSTEM)
    text = pdf_text(client.get(f"/api/v1/invoices/{april_invoice.pk}.pdf").content)
    assert "VOID" in text and "wrong plan" in text


def test_tracing_each_line_to_rollups_sums_back_to_its_base_quantity(client, april_invoice):
    usage_lines = 0
    for line in april_invoice.lines.all():
        response = client.get(f"/api/v1/invoices/{april_invoice.pk}/lines/{line.pk}/rollups/")
        assert response.status_code == 200
        body = response.json()
        assert body["line"] == line.pk
        assert sum(r["quantity"] for r in body["rollups"]) == body["rollups_total"]
        assert body["rollups_total"] == line.base_quantity
        if line.kind == "usage":
            usage_lines += 1
            assert body["rollups"]
            hours = [
                datetime.fromisoformat(r["hour"].replace("Z", "+00:00")) for r in body["rollups"]
            ]
            assert hours == sorted(hours)
            assert line.usage_start <= hours[0] and hours[-1] < line.usage_end
        else:
            assert body["rollups"] == []
    assert usage_lines >= 6


def test_storage_trace_shows_the_balance_per_hour(client, april_invoice):
    warm = april_invoice.lines.get(dimension_key="tier=warm", plan_code="standard")
    body = client.get(f"/api/v1/invoices/{april_invoice.pk}/lines/{warm.pk}/rollups/").json()
    first = body["rollups"][0]
    assert first["hour"] == "2026-04-10T13:00:00Z"
    assert first["quantity"] == 30 * GIB * 40 * 60  # stored from 13:20, 40 minutes of the hour
    assert first["balance_bytes"] == 30 * GIB


def test_late_usage_shows_up_as_a_difference_in_the_trace(client, org, april_invoice):
    record_usage(
        org=org, meter="api.requests", quantity=10, at=at(2026, 4, 20), idempotency_key="late"
    )
    rollup_run(now=at(2026, 5, 1))
    line = april_invoice.lines.get(meter="api.requests")
    body = client.get(f"/api/v1/invoices/{april_invoice.pk}/lines/{line.pk}/rollups/").json()
    assert body["base_quantity"] == 5000
    assert body["rollups_total"] == 5010
