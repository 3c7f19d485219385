"""The staff page of the consistency check in a real browser: an organization with differences
listed first with what differs, one that agrees after it; read at 1366 and 1920 px."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.reconcile.services import reconcile_run
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-reconcile-{width}.png"


def test_staff_see_the_organizations_with_differences_first(
    live_server: Any,
    browser_page: Any,
    settings: Any,
    tmp_path: Path,
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    store = store_for(pipeline.location_primary(org))
    data = to_bytes(make_instance(study_spec("CT"), series_uid=generate_uid(), rows=32, columns=32))
    pipeline.instance_ingest(org=org, spooled=pipeline.spool_file(store, io.BytesIO(data)))
    stray = store.spool_dir() / "stray.part"
    stray.write_bytes(b"left behind")
    store.put_file(
        key=f"org-{org.pk}/left/behind.dcm",
        path=stray,
        tier="hot",
        sha256=hashlib.sha256(b"left behind").hexdigest(),
    )
    reconcile_run(org=org)
    reconcile_run(org=other_org)
    member = make_member(org, Role.OWNER, email="ops@strata.example")
    member.user.is_staff = True
    member.user.save(update_fields=["is_staff"])

    page = browser_page
    sign_in(page, live_server, "ops@strata.example", org.slug)
    page.goto(f"{live_server.url}/platform/reconciliations/")
    expect(page.get_by_role("heading", name="Reconciliation", exact=True)).to_be_visible()
    rows = page.locator("#reconcile-table > tbody > tr")
    expect(rows.nth(0)).to_contain_text("St. Mary Hospital")
    expect(rows.nth(0)).to_contain_text("Differences found")
    expect(rows.nth(1)).to_contain_text(f"org-{org.pk}/left/behind.dcm")
    expect(rows.nth(1)).to_contain_text("Not in the index")
    expect(rows.nth(2)).to_contain_text("Other Clinic")
    expect(rows.nth(2)).to_contain_text("No differences")
    for width in (1366, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        overflow = page.evaluate(
            "document.documentElement.scrollWidth > document.documentElement.clientWidth"
        )
        assert not overflow, f"the page scrolls sideways at {width} px"
        page.screenshot(path=SCREENSHOT.format(width=width), full_page=True)
