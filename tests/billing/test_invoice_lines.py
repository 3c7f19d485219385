"""Invoice lines a finance department can check: quantity rounded for reading (the exact figure in
the CSV and on hover), unit, unit price or the slices of a tiered price, amount; the same columns
in the portal, the PDF and the CSV; the invoices page's count badge."""

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
from billing.meters import GIB, shown_quantity
from billing.models import Invoice, PlanPrice, PricePlan, Subscription
from billing.rollups import rollup_run
from billing.services import invoice_finalize
from tenants.context import Actor
from tenants.labels import quantity_label, rate_label
from tenants.models import Membership, Organization
from tenants.roles import Role

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def at(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def rate_card() -> PricePlan:
    """A plan with every kind of price a line can show, and a minimum that tops April up."""
    plan = PricePlan.objects.create(
        code="rate-card", name="Rate card", currency="USD", monthly_minimum=D("500")
    )
    PlanPrice.objects.create(
        plan=plan,
        meter="storage",
        tier="hot",
        model="graduated",
        tiers=[{"up_to": "5", "unit_price": "0.05"}, {"up_to": None, "unit_price": "0.02"}],
    )
    PlanPrice.objects.create(
        plan=plan,
        meter="egress.bytes",
        model="volume",
        tiers=[{"up_to": "100", "unit_price": "0.09"}, {"up_to": None, "unit_price": "0.05"}],
    )
    PlanPrice.objects.create(
        plan=plan, meter="api.requests", unit_price=D("0.40"), included_quantity=D(1)
    )
    PlanPrice.objects.create(plan=plan, meter="ingest.instances", unit_price=D("0.10"))
    return plan


def april_on_rate_card(org: Organization) -> None:
    """10 GiB hot all April, 1 GiB warm from the 10th 13:20 (not priced on the plan), 150 GiB
    egress, 25,000 API requests and 1,234 instances."""
    Subscription.objects.create(organization=org, plan=rate_card(), starts_at=APRIL)
    storage_delta(org=org, tier="hot", delta_bytes=10 * GIB, at=APRIL, idempotency_key="hot")
    storage_delta(
        org=org, tier="warm", delta_bytes=GIB, at=at(4, 10, 13, 20), idempotency_key="warm"
    )
    for meter, quantity in [
        ("egress.bytes", 150 * GIB),
        ("api.requests", 25_000),
        ("ingest.instances", 1_234),
    ]:
        record_usage(org=org, meter=meter, quantity=quantity, at=at(4, 12), idempotency_key=meter)
    rollup_run(now=at(5, 1))


@pytest.fixture
def invoice(org: Organization) -> Invoice:
    april_on_rate_card(org)
    return invoice_finalize(org=org, period_start=APRIL, actor=SYSTEM, now=at(5, 2))


def figures_by_description(doc: reports.InvoiceDocument) -> dict[str, reports.LineFigures]:
    return {line.description: reports.line_figures(line) for line in doc.lines}


# --- what a line says ----------------------------------------------------------------------------


def test_each_line_shows_rounded_quantity_unit_and_its_unit_price_or_slices(invoice):
    figures = figures_by_description(reports.invoice_document(invoice))
    hot = figures["Storage (hot)"]
    assert (hot.quantity, hot.exact, hot.unit) == ("10.000", "10", "GiB-month")
    assert hot.unit_price == [
        "up to 5.000: 5.000 GiB-month at 0.05 / GiB-month",
        "over 5.000: 5.000 GiB-month at 0.02 / GiB-month",
    ]
    warm = figures["Storage (warm)"]
    # 20 days 10 h 40 min of 1 GiB out of April's 720 hours.
    assert (warm.quantity, warm.exact) == ("0.681", "0.681481481")
    assert warm.unit_price == ["not charged on this plan"]
    egress = figures["Egress"]
    assert (egress.quantity, egress.unit) == ("150.000", "GiB")
    assert egress.unit_price == ["150.000 GiB at 0.05 / GiB (top volume tier)"]
    # Counts read as whole counts, priced per 1,000 as the plan states it.
    api = figures["API requests"]
    assert (api.quantity, api.exact, api.unit) == ("25,000", "25000", "requests")
    assert api.unit_price == [
        "1,000 requests included",
        "24,000 requests at 0.40 / 1,000 requests",
    ]
    instances = figures["Ingested instances"]
    assert (instances.quantity, instances.unit) == ("1,234", "instances")
    assert instances.unit_price == ["0.10 / 1,000 instances"]
    minimum = figures["Minimum commitment (Rate card)"]
    assert (minimum.quantity, minimum.unit) == ("", "")
    assert minimum.unit_price == ["minimum 500.00, usage 17.57"]


def test_amounts_are_what_the_shown_prices_say(invoice):
    lines = {ln.description: ln.amount for ln in invoice.lines.all()}
    assert lines["Storage (hot)"] == D("0.35")  # 5 x 0.05 + 5 x 0.02
    assert lines["Egress"] == D("7.50")  # all 150 at the top tier's 0.05
    assert lines["API requests"] == D("9.60")  # (25 - 1) x 0.40
    assert lines["Ingested instances"] == D("0.12")  # 1.234 x 0.10, rounded once
    assert lines["Storage (warm)"] == D("0.00")
    assert invoice.total == D("500.00")


def test_display_rounding_is_defined_once_per_unit():
    assert quantity_label(D("0.6814814814"), 3) == "0.681"
    assert quantity_label(D("1234.5675"), 3) == "1,234.568"  # half-up
    assert quantity_label(D("-0.0001"), 3) == "0.000"
    shown = shown_quantity("1,000 requests", D("25.5"))
    assert (shown.value, shown.unit, shown.places, shown.per) == (
        D("25500.0"),
        "requests",
        0,
        "1,000 requests",
    )
    assert shown_quantity("GiB-month", D(1)).places == 3
    assert shown_quantity("hour", D(1)).places == 3
    assert [rate_label(D(v)) for v in ("0.02300000", "0.4", "5", "0.00012345", "1234.5")] == [
        "0.023",
        "0.40",
        "5.00",
        "0.00012345",
        "1,234.50",
    ]


def test_a_breakdown_that_is_not_a_price_reads_as_its_label():
    line = reports.DocumentLine(
        position=1,
        kind="usage",
        description="Old line",
        meter="egress.bytes",
        tier="",
        quantity=D(2),
        unit="GiB",
        amount=D(0),
        breakdown=[{"label": "something else"}, "not a dict"],
    )
    assert reports.line_figures(line).unit_price == ["something else"]


# --- the same columns everywhere ---------------------------------------------------------------


def pdf_text(content: bytes) -> str:
    text = " ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)
    return re.sub(r"\s+", " ", text)


def csv_rows(doc: reports.InvoiceDocument) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(reports.invoice_csv(doc)))))


def csv_lines(rows: list[list[str]], columns: list[str]) -> list[list[str]]:
    start = rows.index(columns)
    out = []
    for row in rows[start + 1 :]:
        if not row:
            break
        out.append(row)
    return out


@pytest.mark.parametrize("kind", ["finalized", "draft"])
def test_csv_and_pdf_carry_the_same_columns_and_figures(org, kind):
    april_on_rate_card(org)
    if kind == "draft":
        doc = reports.invoice_document(invoice_compute(org=org, period_start=APRIL))
    else:
        invoice = invoice_finalize(org=org, period_start=APRIL, actor=SYSTEM, now=at(5, 2))
        doc = reports.invoice_document(invoice)
    columns = reports.invoice_columns("USD")
    assert columns == ["#", "Description", "Quantity", "Unit", "Unit price (USD)", "Amount (USD)"]
    rows = csv_lines(csv_rows(doc), columns)
    text = pdf_text(reports.invoice_pdf(doc))
    # The PDF's header row is the CSV's.
    assert " ".join(columns) in text
    assert len(rows) == len(doc.lines) == 6
    for row, line in zip(rows, doc.lines, strict=True):
        figures = reports.line_figures(line)
        # The CSV has the exact quantity, the PDF the rounded one; unit, price and amount agree.
        assert row == [
            str(line.position),
            line.description,
            figures.exact,
            figures.unit,
            "; ".join(figures.unit_price),
            str(line.amount),
        ]
        assert line.description in text
        for cell in (figures.quantity, figures.unit, *figures.unit_price):
            assert cell in text
    assert "0.681" in text and "0.681481481" not in text
    assert [r[2] for r in rows if r[1] == "Storage (warm)"] == ["0.681481481"]


# --- the portal --------------------------------------------------------------------------------


@pytest.fixture
def owner_client(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def test_portal_invoice_page_has_the_columns_and_the_exact_quantity_on_hover(
    owner_client, org, invoice
):
    body = owner_client.get(reverse("portal-billing-invoice", args=[org.slug, invoice.pk]))
    html = body.content.decode()
    assert body.status_code == 200
    table = html[
        html.index('id="invoice-lines"') : html.index("</table>", html.index("invoice-lines"))
    ]
    headers = re.findall(r"<th scope=\"col\"[^>]*>([^<]*)</th>", table)
    assert headers == reports.invoice_columns("USD")
    assert '<span title="Exactly 0.681481481 GiB-month">0.681</span>' in table
    assert '<span title="Exactly 25000 requests">25,000</span>' in table
    assert "<li>24,000 requests at 0.40 / 1,000 requests</li>" in table
    assert "0.10 / 1,000 instances" in table


def test_portal_draft_page_shows_the_same_columns(owner_client, org, monkeypatch):
    from django.utils import timezone

    april_on_rate_card(org)
    monkeypatch.setattr(timezone, "now", lambda: at(4, 30, 12))
    html = owner_client.get(reverse("portal-billing-draft", args=[org.slug])).content.decode()
    assert "Unit price (USD)" in html
    assert "<li>over 5.000: 5.000 GiB-month at 0.02 / GiB-month</li>" in html


def test_invoices_badge_counts_the_draft_and_the_issued_invoices(owner_client, org):
    page = owner_client.get(reverse("portal-billing-invoices", args=[org.slug])).content.decode()
    assert '<span class="count" id="invoice-count">1</span>' in page
    assert "This month's draft and 0 issued invoices" in page
    april_on_rate_card(org)
    invoice_finalize(org=org, period_start=APRIL, actor=SYSTEM, now=at(5, 2))
    page = owner_client.get(reverse("portal-billing-invoices", args=[org.slug])).content.decode()
    assert '<span class="count" id="invoice-count">2</span>' in page
    assert "draft and 1 issued invoice<" in page
    rows = re.findall(r"<tr class=\"is-", page)
    assert len(rows) == 2


def test_other_organization_invoice_is_404(owner_client, other_org):
    april_on_rate_card(other_org)
    theirs = invoice_finalize(org=other_org, period_start=APRIL, actor=SYSTEM, now=at(5, 2))
    org_slug = Membership.objects.filter(role=Role.OWNER).first().organization.slug
    for name in (
        "portal-billing-invoice",
        "portal-billing-invoice-csv",
        "portal-billing-invoice-pdf",
    ):
        assert owner_client.get(reverse(name, args=[org_slug, theirs.pk])).status_code == 404


# --- the API -------------------------------------------------------------------------------------


def test_api_lines_carry_what_the_documents_show(token_client, org, invoice, monkeypatch):
    client = token_client(org, ["usage:read"])
    body = client.get(f"/api/v1/invoices/{invoice.pk}/").json()
    api = next(ln for ln in body["lines"] if ln["meter"] == "api.requests")
    assert api["quantity"] == "25.000000000"  # in billing units, exact, as stored
    assert api["shown"] == {
        "quantity": "25,000",
        "exact": "25000",
        "unit": "requests",
        "unit_price": ["1,000 requests included", "24,000 requests at 0.40 / 1,000 requests"],
    }
    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: at(4, 30, 12))
    draft = client.get("/api/v1/invoices/draft/").json()
    hot = next(ln for ln in draft["lines"] if ln["description"] == "Storage (hot)")
    assert hot["shown"]["unit_price"] == [
        "up to 5.000: 5.000 GiB-month at 0.05 / GiB-month",
        "over 5.000: 5.000 GiB-month at 0.02 / GiB-month",
    ]
