"""What a hospital admin sees in the first hour, at a 1366 px laptop and a 1920 px desktop: the
charts' last x-axis labels are whole, the audit table fits its card (IP column included) and the
audit event page lists its details; patient names read "Curie, Marie"; the restore pages name the
study and give one time; the ingest jobs table names the kind once and counts failures.
Screenshots of each page are kept for a look."""

from __future__ import annotations

import re
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


def _assert_fits_its_card(page: Any, table: Any) -> None:
    """The table's right edge (its last column) lies inside the card around it."""
    box = table.bounding_box()
    card = table.locator("xpath=ancestor::section[contains(@class, 'card')][1]").bounding_box()
    assert box["x"] + box["width"] <= card["x"] + card["width"] + 0.5, (box, card)


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
        _assert_fits_its_card(page, page.locator("#recent-activity"))
        page.screenshot(path=SCREENSHOTS.format(page="dashboard", width=width), full_page=True)

        page.goto(f"{base}/archive/analytics/")
        _assert_last_labels_inside(page)
        page.screenshot(path=SCREENSHOTS.format(page="analytics", width=width), full_page=True)

        page.goto(f"{base}/audit/")
        _assert_fits_its_card(page, page.locator("#audit-table"))
        card_box = page.locator("#audit-table").locator("..").bounding_box()
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


def test_study_restore_and_ingest_pages_at_laptop_and_desktop_widths(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    default_plan: None,
    settings: Any,
) -> None:
    from playwright.sync_api import expect

    from archive.models import IngestJob, Study
    from tests.archive.test_restores_support import archive_all, seed_study, study_row

    settings.ARCHIVE_FS_RESTORE_SECONDS = 60
    seeded = seed_study(org, n=2)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    Study.objects.filter(pk=study.pk).update(accession_number="ACC-9", study_description="CR STUDY")
    owner = make_member(org, Role.OWNER, email="alice@stmary.example")
    IngestJob.objects.create(
        organization=org,
        kind=IngestJob.Kind.UPLOAD,
        state=IngestJob.State.DONE,
        source="Portal upload",
        total_files=3,
        received=3,
        stored=2,
        failed=1,
        created_by=owner.user,
        started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
    )
    page = browser_page
    sign_in(page, live_server, "alice@stmary.example", org.slug)
    base = f"{live_server.url}/o/{org.slug}/archive"
    title = "Lovelace, Ada · patient PAT-R1 · accession ACC-9 · 2025-06-01 · CR STUDY"

    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})

        page.goto(f"{base}/studies/")
        expect(page.locator("#study-table")).to_contain_text("Lovelace, Ada")
        page.screenshot(path=SCREENSHOTS.format(page="studies", width=width), full_page=True)

        page.goto(f"{base}/studies/{study.pk}/restore/")
        expect(page.locator("#restore-study")).to_have_text(title)
        expect(page.locator("#restore-time")).to_have_text("2 min 00 s")
        page.screenshot(
            path=SCREENSHOTS.format(page="restore-confirm", width=width), full_page=True
        )

        page.goto(f"{base}/ingest/")
        row = page.locator("tr").filter(has_text="Portal upload")
        expect(row).to_contain_text("3 files from alice@stmary.example")
        expect(row.locator(".badge")).to_have_text("Done with 1 failure")
        _assert_fits_its_card(page, page.locator("tbody").filter(has=row).locator(".."))
        page.screenshot(path=SCREENSHOTS.format(page="ingest", width=width), full_page=True)

    page.goto(f"{base}/studies/{study.pk}/restore/")
    page.get_by_role("button", name=re.compile("Restore")).click()
    expect(page.locator(".lead")).to_contain_text(title)
    expect(page.get_by_role("status").filter(has_text="In progress")).to_contain_text(
        re.compile(r"Expect the rest in about (2 min 00 s|1 min 5\d s)")
    )
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=SCREENSHOTS.format(page="restore", width=width), full_page=True)
