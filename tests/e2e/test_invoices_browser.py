"""Invoices a finance department can check, in a real browser at 1366 and 1920 px: the invoice
lines with unit prices and tier slices, the invoices list, the price plan and the usage report
with its cost column; each page's tables fit their cards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from billing.services import invoice_finalize
from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.billing.test_invoice_lines import APRIL, april_on_rate_card, at
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

WIDTHS = (1366, 1920)


def overflowing_tables(page: Any) -> list[str]:
    """Ids (or indexes) of tables wider than the card that holds them."""
    return page.evaluate(
        """() => [...document.querySelectorAll('table')].filter(t => {
            const box = t.closest('.card') || document.body;
            return t.getBoundingClientRect().right > box.getBoundingClientRect().right + 1;
        }).map((t, i) => t.id || String(i))"""
    )


def test_invoice_price_plan_and_usage_pages_at_two_widths(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    april_on_rate_card(org)
    invoice = invoice_finalize(
        org=org, period_start=APRIL, actor=Actor.system("tests"), now=at(5, 2)
    )
    make_member(org, Role.BILLING, email="finance@stmary.example")
    page = browser_page
    sign_in(page, live_server, "finance@stmary.example", org.slug)
    base = f"{live_server.url}/o/{org.slug}/billing"
    pages = {
        "invoices": f"{base}/invoices/",
        "invoice": f"{base}/invoices/{invoice.pk}/",
        "plan": f"{base}/plan/",
        "usage": f"{base}/usage/?start=2026-04-01&end=2026-04-30&group_by=tier&format=html",
    }
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, url in pages.items():
            page.goto(url)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            assert overflowing_tables(page) == [], (name, width)
            page.screenshot(path=f"/tmp/strata-billing-{name}-{width}.png", full_page=True)
        page.goto(pages["invoice"])
        quantity = page.locator("#invoice-lines tbody tr", has_text="Storage (warm)").locator(
            "span[title]"
        )
        expect(quantity).to_have_text("0.681")
        expect(quantity).to_have_attribute("title", "Exactly 0.681481481 GiB-month")
        page.goto(pages["invoices"])
        expect(page.locator("#invoice-count")).to_have_text("2")
        expect(page.locator("#invoice-table tbody tr")).to_have_count(2)
        page.goto(pages["plan"])
        expect(page.locator("#plan-prices")).to_contain_text("0.40 / 1,000 requests")
        page.goto(pages["usage"])
        expect(page.locator("#usage-total-cost")).to_have_text("17.57 USD")
