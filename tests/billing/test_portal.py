"""The portal's "Usage & billing" pages: who may open them, tenant isolation, the figures shown,
the charts, the budget form and the invoice downloads."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from billing.forecast import forecast_month
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Budget, BudgetAlert, Invoice
from billing.periods import month_start
from billing.rollups import rollup_run
from billing.services import credit_note_create, invoice_finalize
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Perm, Role

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
SVG_NS = "{http://www.w3.org/2000/svg}"
ROLES = [Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER]
VIEWERS = {Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR}
MANAGERS = {Role.OWNER, Role.ADMIN, Role.BILLING}


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """One fixed "now" for the pages and for the figures a test computes to compare with them.

    A minute ahead of the clock: rows stamped by model defaults (the real clock) are then
    before it, so the rollup run reads them.
    """
    fixed = (timezone.now() + timedelta(minutes=1)).replace(microsecond=0)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    return fixed


def record_month_usage(org: Organization, now: datetime) -> None:
    """Hot storage for ten days, warm for five, and egress at the start of the month."""
    storage_delta(
        org=org, tier="hot", delta_bytes=400 * GIB, at=now - timedelta(days=10), idempotency_key="h"
    )
    storage_delta(
        org=org, tier="warm", delta_bytes=100 * GIB, at=now - timedelta(days=5), idempotency_key="w"
    )
    record_usage(
        org=org,
        meter="egress.bytes",
        quantity=150 * GIB,
        at=month_start(now),
        idempotency_key="egress",
    )
    record_usage(
        org=org,
        meter="api.requests",
        quantity=25_000,
        at=now - timedelta(days=2),
        idempotency_key="api",
    )
    rollup_run(now=now)


def finalize_april(org: Organization) -> Invoice:
    """April 2026: 10 GiB hot all month and 150 GiB egress; 4.73 USD on the default plan."""
    storage_delta(
        org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="apr-hot"
    )
    record_usage(
        org=org,
        meter="egress.bytes",
        quantity=150 * GIB,
        at=at(2026, 4, 10),
        idempotency_key="apr-egress",
    )
    rollup_run(now=at(2026, 5, 1))
    return invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM, now=at(2026, 5, 2))


@pytest.fixture
def invoice(org: Organization, owner: Membership) -> Invoice:
    return finalize_april(org)


@pytest.fixture
def other_invoice(other_org: Organization) -> Invoice:
    return finalize_april(other_org)


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


@pytest.fixture
def owner_client(owner: Membership) -> Client:
    return client_for(owner)


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


# --- who may open what -----------------------------------------------------------------------

# (URL name, needs an invoice id, extra positional args)
VIEW_PAGES: list[tuple[str, bool, tuple[Any, ...]]] = [
    ("portal-billing", False, ()),
    ("portal-billing-invoices", False, ()),
    ("portal-billing-draft", False, ()),
    ("portal-billing-draft-csv", False, ()),
    ("portal-billing-draft-pdf", False, ()),
    ("portal-billing-usage", False, ()),
    ("portal-billing-plan", False, ()),
    ("portal-billing-invoice", True, ()),
    ("portal-billing-invoice-csv", True, ()),
    ("portal-billing-invoice-pdf", True, ()),
    ("portal-billing-invoice-line", True, (1,)),
]
INVOICE_PAGES = [p for p in VIEW_PAGES if p[1]]


def page_url(page: tuple[str, bool, tuple[Any, ...]], org: Organization, invoice: Invoice) -> str:
    name, needs_invoice, extra = page
    return url(name, org, *([invoice.pk] if needs_invoice else []), *extra)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", VIEW_PAGES, ids=lambda p: p[0])
def test_role_matrix_for_usage_and_invoices(
    role: str,
    page: tuple[str, bool, tuple[Any, ...]],
    org: Organization,
    invoice: Invoice,
    make_member: Callable[..., Membership],
) -> None:
    response = client_for(make_member(org, role)).get(page_url(page, org, invoice))
    if role in VIEWERS:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert Perm.INVOICES_VIEW in response.content.decode()


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix_for_the_budget(
    role: str, org: Organization, make_member: Callable[..., Membership]
) -> None:
    client = client_for(make_member(org, role))
    response = client.get(url("portal-billing-budget", org))
    if role in MANAGERS:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert Perm.BILLING_MANAGE in response.content.decode()
        posted = client.post(
            url("portal-billing-budget", org), {"monthly_amount": "100", "thresholds": ["50"]}
        )
        assert posted.status_code == 403
        assert not Budget.objects.exists()


@pytest.mark.parametrize("page", [*VIEW_PAGES, ("portal-billing-budget", False, ())], ids=str)
def test_non_member_gets_404(
    page: tuple[str, bool, tuple[Any, ...]],
    org: Organization,
    invoice: Invoice,
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    outsider = make_member(other_org, Role.OWNER)
    response = client_for(outsider).get(page_url(page, org, invoice))
    assert response.status_code == 404


@pytest.mark.parametrize("page", INVOICE_PAGES, ids=lambda p: p[0])
def test_other_tenants_invoice_id_gets_404(
    page: tuple[str, bool, tuple[Any, ...]],
    owner_client: Client,
    org: Organization,
    other_invoice: Invoice,
) -> None:
    # Alice's organization in the URL, Charlie's invoice id: never Charlie's data.
    response = owner_client.get(page_url(page, org, other_invoice))
    assert response.status_code == 404
    assert other_invoice.number not in response.content.decode(errors="replace")


def test_unknown_line_and_draft_line_get_404(
    owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    assert (
        owner_client.get(url("portal-billing-invoice-line", org, invoice.pk, 99)).status_code == 404
    )
    assert owner_client.get(url("portal-billing-draft-line", org, 1)).status_code == 404


def test_anonymous_is_sent_to_login(org: Organization) -> None:
    response = Client().get(url("portal-billing", org))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_nav_entry_links_to_the_overview(owner_client: Client, org: Organization) -> None:
    body = owner_client.get(url("portal-dashboard", org)).content.decode()
    assert f'href="{url("portal-billing", org)}"' in body
    page = owner_client.get(url("portal-billing", org)).content.decode()
    assert re.search(
        r'<a class="nav-link" href="[^"]+" aria-current="page">Usage &amp; billing', page
    )


# --- overview --------------------------------------------------------------------------------


def money(value: Decimal) -> str:
    return f"{value:,.2f}"


def test_overview_shows_what_forecast_month_computes(
    now: datetime, owner_client: Client, org: Organization
) -> None:
    record_month_usage(org, now)
    Budget.objects.create(organization=org, monthly_amount=Decimal("50.00"), thresholds=[50, 100])
    forecast = forecast_month(org=org, now=now)
    assert forecast.actual_total > 0
    assert forecast.projected_total > forecast.actual_total

    body = owner_client.get(url("portal-billing", org)).content.decode()

    assert f'id="total-actual">{money(forecast.actual_total)}<' in body
    assert f'id="total-forecast">{money(forecast.projected_total)}<' in body
    assert money(forecast.actual_total) + '<span class="unit">USD' in body
    assert "50.00" in body  # the budget
    for row in forecast.per_meter():
        if row["meter"] == "storage":
            assert f"{row['tier']}".capitalize() in body
        assert money(row["actual"]) in body  # type: ignore[arg-type]
        assert money(row["forecast"]) in body  # type: ignore[arg-type]


def test_overview_without_usage_shows_empty_states(owner_client: Client, org: Organization) -> None:
    response = owner_client.get(url("portal-billing", org))
    assert response.status_code == 200
    body = response.content.decode()
    assert "No billable usage yet this month." in body
    assert "Set a budget" in body


def svgs(body: str) -> list[ET.Element]:
    """Every inline SVG of a page, parsed as XML (a parse error fails the test)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", body, flags=re.S)]


def chart_in(body: str, element_id: str) -> ET.Element:
    start = body.index(f'id="{element_id}"')
    (svg,) = svgs(body[start : body.index("</svg>", start) + len("</svg>")])
    return svg


def test_charts_are_valid_svg_with_one_series_per_tier(
    now: datetime, owner_client: Client, org: Organization
) -> None:
    record_month_usage(org, now)
    body = owner_client.get(url("portal-billing", org)).content.decode()

    parsed = svgs(body)
    charts = [s for s in parsed if s.get("role") == "img"]
    assert len(charts) >= 4  # gauge, storage, egress, API requests
    for svg in charts:
        assert svg.get("aria-label")
        assert svg.find(f".//{SVG_NS}title") is not None

    storage = chart_in(body, "storage-chart")
    series = [g.get("data-series") for g in storage.iter(f"{SVG_NS}g") if g.get("data-series")]
    assert series == ["hot", "warm"]
    assert "hot 400 GiB, warm 100 GiB" in storage.get("aria-label", "")
    # 90 days, one point per day and tier, each with its tooltip.
    points = list(storage.iter(f"{SVG_NS}circle"))
    assert len(points) == 2 * 90
    assert all(c.find(f"{SVG_NS}title") is not None for c in points)
    legend = [t.text for t in storage.iter(f"{SVG_NS}text") if t.text in ("Hot", "Warm")]
    assert legend == ["Hot", "Warm"]

    usage_section = body[body.index('id="usage-charts"') :]
    labels = [s.get("aria-label", "") for s in svgs(usage_section.split("</section>")[0])]
    assert any(label.startswith("Egress per day") and "GiB" in label for label in labels)
    assert any(label.startswith("API requests per day") for label in labels)
    # The data table fallback of every chart.
    assert body.count('<details class="chart-data">') == len(charts)


def test_storage_chart_carries_the_balance_into_a_day_without_a_complete_hour(
    monkeypatch: pytest.MonkeyPatch, owner: Membership, org: Organization
) -> None:
    """At 00:20 no hour of the day is rolled up yet: the day shows the last balance, not 0."""
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    fixed = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 0, 20, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    record_month_usage(org, fixed)
    # Signed in at the moved clock: a session from today would have reached its lifetime.
    body = client_for(owner).get(url("portal-billing", org)).content.decode()
    storage = chart_in(body, "storage-chart")
    assert "Latest day: hot 400 GiB, warm 100 GiB." in storage.get("aria-label", "")


# --- invoices --------------------------------------------------------------------------------


def test_invoice_list_has_the_draft_on_top_then_invoices(
    now: datetime, owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    record_month_usage(org, now)
    invoice_void_and_reissue = Invoice.objects.filter(pk=invoice.pk)
    assert invoice_void_and_reissue.exists()
    body = owner_client.get(url("portal-billing-invoices", org)).content.decode()
    table = body[body.index('id="invoice-table"') :]
    assert table.index("DRAFT") < table.index(invoice.number)
    assert "1 Apr 2026 – 30 Apr 2026" in table
    assert "4.73 USD" in table
    assert "Finalized" in table


def test_invoice_detail_shows_lines_totals_traces_and_credit_notes(
    owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    credit_note_create(
        org=org, invoice=invoice, amount=Decimal("1.00"), reason="Goodwill", actor=SYSTEM
    )
    body = owner_client.get(url("portal-billing-invoice", org, invoice.pk)).content.decode()
    assert invoice.number in body
    assert "Storage (hot)" in body
    assert "GiB-month" in body
    assert "Egress" in body
    assert "4.73 USD" in body
    assert "Goodwill" in body
    assert "3.73 USD" in body  # after the credit note
    for line in invoice.lines.filter(kind="usage"):
        assert url("portal-billing-invoice-line", org, invoice.pk, line.position) in body


def test_line_trace_adds_up_to_the_line(
    owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    line = invoice.lines.get(meter="storage")
    response = owner_client.get(url("portal-billing-invoice-line", org, invoice.pk, line.position))
    body = response.content.decode()
    assert response.status_code == 200
    assert "The 720 hourly rollups add up to" in body
    assert f"{line.base_quantity:,}" in body
    assert "10 GiB" in body  # the balance per day
    assert 'id="hours"' not in body
    day = owner_client.get(
        url("portal-billing-invoice-line", org, invoice.pk, line.position), {"day": "2026-04-07"}
    ).content.decode()
    assert "Hours of Tue 7 Apr 2026" in day
    assert day.count("10 GiB</td>") == 30 + 24  # every day of April, then the hours of the 7th


def test_line_trace_shows_usage_recorded_after_finalization(
    owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    record_usage(
        org=org,
        meter="egress.bytes",
        quantity=GIB,
        at=at(2026, 4, 20),
        idempotency_key="late-egress",
    )
    rollup_run(now=at(2026, 5, 3))
    line = invoice.lines.get(meter="egress.bytes")
    body = owner_client.get(
        url("portal-billing-invoice-line", org, invoice.pk, line.position)
    ).content.decode()
    assert "The 2 hourly rollups now add up to" in body
    assert f"a difference of {GIB:,}" in body
    assert "billed as an adjustment on a later invoice" in body


def test_void_invoice_is_marked(owner_client: Client, org: Organization, invoice: Invoice) -> None:
    from billing.services import invoice_void

    invoice_void(org=org, invoice=invoice, reason="Wrong plan", actor=SYSTEM)
    body = owner_client.get(url("portal-billing-invoice", org, invoice.pk)).content.decode()
    assert "VOID" in body
    assert "Wrong plan" in body


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("portal-billing-invoice-csv", "text/csv"), ("portal-billing-invoice-pdf", "application/pdf")],
)
def test_invoice_downloads(
    name: str, content_type: str, owner_client: Client, org: Organization, invoice: Invoice
) -> None:
    response = owner_client.get(url(name, org, invoice.pk))
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    extension = name.rsplit("-", 1)[1]
    assert response["Content-Disposition"] == f'attachment; filename="{invoice.number}.{extension}"'
    assert "no-store" in response["Cache-Control"]
    if extension == "csv":
        text = response.content.decode()
        assert invoice.number in text
        assert "4.73" in text
    else:
        assert response.content.startswith(b"%PDF")
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(response.content)).pages)
        assert invoice.number in text


def test_draft_downloads_are_marked_draft(
    now: datetime, owner_client: Client, org: Organization
) -> None:
    record_month_usage(org, now)
    csv_response = owner_client.get(url("portal-billing-draft-csv", org))
    assert csv_response["Content-Type"].startswith("text/csv")
    assert f"draft-{org.slug}-{now:%Y-%m}.csv" in csv_response["Content-Disposition"]
    assert "DRAFT" in csv_response.content.decode()
    pdf_response = owner_client.get(url("portal-billing-draft-pdf", org))
    assert pdf_response.content.startswith(b"%PDF")
    draft_page = owner_client.get(url("portal-billing-draft", org)).content.decode()
    assert "DRAFT" in draft_page
    assert url("portal-billing-draft-line", org, 1) in draft_page
    trace = owner_client.get(url("portal-billing-draft-line", org, 1))
    assert trace.status_code == 200


# --- budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"monthly_amount": "abc", "thresholds": ["50"]}, "monthly_amount", "Enter a number."),
        ({"monthly_amount": "0", "thresholds": ["50"]}, "monthly_amount", "greater than or equal"),
        ({"monthly_amount": "-5", "thresholds": ["50"]}, "monthly_amount", "greater than or equal"),
        ({"monthly_amount": "100"}, "thresholds", "Choose at least one threshold"),
        ({"monthly_amount": "100", "thresholds": ["33"]}, "thresholds", "not one of the available"),
        (
            {"monthly_amount": "100", "custom_thresholds": "90, lots"},
            "custom_thresholds",
            "is not a whole percentage",
        ),
        (
            {"monthly_amount": "100", "custom_thresholds": "2000"},
            "custom_thresholds",
            "outside 1–1000%",
        ),
        ({"monthly_amount": "1e400", "thresholds": ["50"]}, "monthly_amount", ""),
    ],
)
def test_budget_bad_input_is_400_and_saves_nothing(
    data: dict[str, Any], field: str, message: str, owner_client: Client, org: Organization
) -> None:
    response = owner_client.post(url("portal-billing-budget", org), data)
    assert response.status_code == 400
    form = response.context["form"]
    assert field in form.errors
    assert message in " ".join(form.errors[field])
    body = response.content.decode()
    assert 'aria-invalid="true"' in body
    assert not Budget.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="budget.").exists()


def test_budget_good_input_saves_and_audits(
    owner: Membership, owner_client: Client, org: Organization
) -> None:
    response = owner_client.post(
        url("portal-billing-budget", org),
        {"monthly_amount": "1250.5", "thresholds": ["50", "80"], "custom_thresholds": "120, 95%"},
    )
    assert response.status_code == 302
    assert response["Location"] == url("portal-billing-budget", org)
    budget = Budget.objects.get(organization=org)
    assert budget.monthly_amount == Decimal("1250.50")
    assert budget.thresholds == [50, 80, 95, 120]
    event = AuditEvent.objects.for_org(org).get(action="budget.created")
    assert event.actor_label == owner.user.email

    page = owner_client.get(url("portal-billing-budget", org)).content.decode()
    assert "Budget saved: 1,250.50 USD a month, alerts at 50%, 80%, 95%, 120%." in page
    assert 'value="1250.50"' in page
    assert 'value="95, 120"' in page

    owner_client.post(
        url("portal-billing-budget", org), {"monthly_amount": "900", "thresholds": ["100"]}
    )
    assert Budget.objects.get(organization=org).thresholds == [100]
    assert AuditEvent.objects.for_org(org).filter(action="budget.updated").count() == 1


def test_budget_page_lists_alerts_fired_this_month(
    now: datetime, owner_client: Client, org: Organization
) -> None:
    month = month_start(now).date()
    BudgetAlert.objects.create(
        organization=org,
        month=month,
        threshold=80,
        kind=BudgetAlert.Kind.FORECAST,
        amount=Decimal("812.00"),
        budget_amount=Decimal("1000.00"),
    )
    BudgetAlert.objects.create(
        organization=org,
        month=(month_start(now) - timedelta(days=1)).date().replace(day=1),
        threshold=50,
        kind=BudgetAlert.Kind.ACTUAL,
        amount=Decimal("777.00"),
        budget_amount=Decimal("1000.00"),
    )
    body = owner_client.get(url("portal-billing-budget", org)).content.decode()
    assert "812.00" in body
    assert "Forecast spend" in body
    assert "777.00" not in body  # last month's


# --- usage report ----------------------------------------------------------------------------


def test_usage_report_page_and_downloads(
    now: datetime, owner_client: Client, org: Organization
) -> None:
    record_month_usage(org, now)
    start = (month_start(now) - timedelta(days=1)).date().isoformat()
    end = now.date().isoformat()
    params = {"start": start, "end": end, "group_by": ["tier"]}
    page = owner_client.get(url("portal-billing-usage", org), {**params, "format": "html"})
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="usage-report"' in body
    assert "Egress" in body
    assert "Warm" in body
    csv_response = owner_client.get(url("portal-billing-usage", org), {**params, "format": "csv"})
    assert csv_response["Content-Type"].startswith("text/csv")
    assert "attachment;" in csv_response["Content-Disposition"]
    assert "egress.bytes" in csv_response.content.decode()
    pdf_response = owner_client.get(url("portal-billing-usage", org), {**params, "format": "pdf"})
    assert pdf_response.content.startswith(b"%PDF")


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2026-05-10", "end": "2026-05-01"},
        {"start": "not a date", "end": "2026-05-01"},
        {"start": "2020-01-01", "end": "2026-05-01"},
        {"start": "2026-05-01", "end": "2026-05-02", "group_by": "planet"},
        {"start": "2026-05-01", "end": "2026-05-02", "format": "xls"},
    ],
)
def test_usage_report_bad_input_is_400(
    params: dict[str, str], owner_client: Client, org: Organization
) -> None:
    response = owner_client.get(url("portal-billing-usage", org), params)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
