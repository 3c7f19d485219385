"""What a hospital admin sees in the first hour, at a 1366 px laptop and a 1920 px desktop: the
charts' last x-axis labels are whole, the audit table fits its card (IP column included) and the
audit event page lists its details. Screenshots of each page are kept for a look."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

import pytest

from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

GIB = 2**30
WIDTHS = [1366, 1920]
SCREENSHOTS = "/tmp/strata-polish-{page}-{width}.png"

# The right end of each chart's last x-axis label, measured by the browser in the SVG's own
# units, and the SVG's view box width.
LAST_LABEL_EXTENTS = """
() => [...document.querySelectorAll("svg.chart-svg")].map((svg) => {
  const labels = svg.querySelectorAll("g.axis-x text");
  const last = labels[labels.length - 1];
  if (!last) return null;
  const box = last.getBBox();
  return {text: last.textContent, left: box.x, right: box.x + box.width,
          width: svg.viewBox.baseVal.width};
}).filter(Boolean)
"""


@pytest.fixture
def default_plan(transactional_db: None) -> None:
    """The standard plan of the data migration (a transactional test flushes it); the dashboard's
    storage chart prices nothing, but the billing pages it links to need a plan."""
    from django.apps import apps

    import_module("billing.migrations.0002_default_plan").create(apps, None)


def _seed(org: Organization) -> None:
    from billing.metering import storage_delta
    from billing.rollups import rollup_run
    from tests.archive.analytics_helpers import add_study, read

    now = datetime.now(UTC)
    for k in range(30):
        received = now - timedelta(days=20 + 12 * k)
        study = add_study(
            org, study_date=received.date(), received=received, series=[("CT", 4, GIB // 8)]
        )
        if k % 3 == 0:
            read(org, study, received + timedelta(days=5 + k))
    storage_delta(
        org=org, tier="hot", delta_bytes=400 * GIB, at=now - timedelta(days=10), idempotency_key="h"
    )
    rollup_run(now=now)
    for n in range(12):
        AuditEvent.objects.create(
            organization=org,
            action="integration.token_rotated_by_scheduled_maintenance",
            actor_label=f"token:pacs-gateway-radiology-east-wing-integration-{n} (abcd{n:04d})",
            target_type="api_token",
            target_label="PACS gateway for the radiology department, east wing, building C",
            ip="2001:db8:85a3:1234:5678:8a2e:370:7334",
            details={} if n else {"scopes": ["dicom:read", "dicom:write"], "rotated": True},
        )


def _assert_last_labels_inside(page: Any) -> None:
    extents = page.evaluate(LAST_LABEL_EXTENTS)
    assert extents, "no chart with an x axis on the page"
    for e in extents:
        assert e["left"] >= 0 and e["right"] <= e["width"], e


def test_first_hour_pages_fit_at_laptop_and_desktop_widths(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    default_plan: None,
) -> None:
    from playwright.sync_api import expect

    _seed(org)
    make_member(org, Role.OWNER, email="alice@stmary.example")
    page = browser_page
    sign_in(page, live_server, "alice@stmary.example", org.slug)
    base = f"{live_server.url}/o/{org.slug}"
    detail = AuditEvent.objects.filter(organization=org).order_by("pk").first()
    assert detail is not None

    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})

        page.goto(f"{base}/")
        _assert_last_labels_inside(page)
        page.screenshot(path=SCREENSHOTS.format(page="dashboard", width=width), full_page=True)

        page.goto(f"{base}/archive/analytics/")
        _assert_last_labels_inside(page)
        page.screenshot(path=SCREENSHOTS.format(page="analytics", width=width), full_page=True)

        page.goto(f"{base}/audit/")
        table, card = page.locator("#audit-table"), page.locator("#audit-table").locator("..")
        table_box, card_box = table.bounding_box(), card.bounding_box()
        assert table_box["x"] + table_box["width"] <= card_box["x"] + card_box["width"] + 0.5
        row = page.locator("#audit-table tbody tr").filter(has_text="pacs-gateway").first
        ip = row.locator("td").last
        expect(ip).to_have_text("2001:db8:85a3:1234:5678:8a2e:370:7334")
        ip_box = ip.bounding_box()
        assert ip_box["x"] + ip_box["width"] <= card_box["x"] + card_box["width"] + 0.5
        page.screenshot(path=SCREENSHOTS.format(page="audit", width=width), full_page=True)

        page.goto(f"{base}/audit/{detail.pk}/")
        expect(page.locator("#event-details")).to_contain_text("scopes")
        expect(page.locator("#event-details")).to_contain_text("dicom:read, dicom:write")
        page.screenshot(path=SCREENSHOTS.format(page="audit-event", width=width), full_page=True)
