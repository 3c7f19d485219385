"""Usage & billing in a real browser: the owner of a hospital with a month and a half of usage opens
the overview, sees the charts, opens last month's invoice and downloads its PDF."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from billing.demo import generate_usage
from billing.periods import month_start
from billing.rollups import floor_hour
from billing.services import budget_set, invoice_finalize
from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-billing.png"


@pytest.fixture
def default_plan(transactional_db: None) -> None:
    """The standard plan of the data migration. Transactional tests (this one, and any that ran
    before it) flush the database afterwards, data migrations included; invoices need a plan."""
    from django.apps import apps

    import_module("billing.migrations.0002_default_plan").create(apps, None)


def test_owner_reads_usage_and_downloads_an_invoice_pdf(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    default_plan: None,
) -> None:
    from playwright.sync_api import expect

    now = timezone.now()
    generate_usage(
        org=org,
        start=floor_hour(now - timedelta(days=45)),
        end=now,
        scale=0.3,
        migrate_years=0.25,
    )
    last_month = month_start(month_start(now) - timedelta(days=1))
    invoice = invoice_finalize(org=org, period_start=last_month, actor=Actor.system("tests"))
    budget_set(org=org, monthly_amount="250", thresholds=[50, 80, 100], actor=Actor.system("tests"))
    make_member(org, Role.OWNER, email="alice@stmary.example")

    page = browser_page
    sign_in(page, live_server, "alice@stmary.example", org.slug)

    page.get_by_role("navigation", name=org.name).get_by_role(
        "link", name="Usage & billing"
    ).click()
    expect(page).to_have_url(f"{live_server.url}/o/{org.slug}/billing/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("to date")

    # The daily usage charts are server-side SVG, drawn at a readable size.
    egress = page.locator("#usage-charts svg[role=img][aria-label^='Egress per day']")
    expect(egress).to_be_visible()
    box = egress.bounding_box()
    assert box is not None and box["width"] > 250 and box["height"] > 100
    assert egress.locator("rect title").count() > 0
    storage = page.locator("#storage-chart svg[role=img]")
    expect(storage).to_be_visible()
    series = storage.locator("g[data-series]").evaluate_all(
        "groups => groups.map(g => g.dataset.series)"
    )
    assert "hot" in series and len(series) == len(set(series))
    assert set(series) <= {"hot", "warm", "cold", "archive"}
    # The accessible fallback opens into a table with one row per day.
    page.locator("#storage-chart summary").click()
    expect(page.locator("#storage-chart details table tbody tr")).to_have_count(90)
    page.locator("#storage-chart summary").click()
    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar belongs at the top of the shot
    page.screenshot(path=SCREENSHOT, full_page=True)

    page.get_by_role("navigation", name="Usage and billing").get_by_role(
        "link", name="Invoices"
    ).click()
    rows = page.locator("#invoice-table tbody tr")
    expect(rows.first).to_contain_text("DRAFT")
    expect(rows.nth(1)).to_contain_text(invoice.number)
    page.get_by_role("link", name=invoice.number, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(invoice.number)
    expect(page.locator("#invoice-lines")).to_contain_text("Storage (hot)")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download PDF").click()
    download = download_info.value
    assert download.suggested_filename == f"{invoice.number}.pdf"
    content = Path(download.path()).read_bytes()
    assert content.startswith(b"%PDF")

    # A usage line traces to its hourly rollups, which add up to the line's base quantity.
    page.locator("#invoice-lines tbody tr", has_text="Egress").get_by_role(
        "link", name=re.compile("^Trace line")
    ).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Egress")
    expect(page.get_by_role("status")).to_contain_text("hourly rollups add up to")
