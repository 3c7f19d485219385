"""The archive in a real browser: an owner uploads a DICOM file through the Ingest page's drop
area, watches the job finish, finds the study under Studies and opens it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from archive.models import IngestJob, Instance, Study
from archive.synthetic import make_instance, study_spec, write
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-archive.png"
SCREENSHOT_INGEST = "/tmp/strata-archive-ingest.png"
SCREENSHOT_JOB = "/tmp/strata-archive-job.png"
SCREENSHOT_STUDY = "/tmp/strata-archive-study.png"
SCREENSHOT_STORAGE = "/tmp/strata-archive-storage.png"


@pytest.fixture
def archive_storage(settings: Any, tmp_path: Path) -> Path:
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    return tmp_path


def test_owner_uploads_a_dicom_file_and_finds_the_study(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    archive_storage: Path,
) -> None:
    from playwright.sync_api import expect

    spec = study_spec("CT")
    spec.patient_name = "Lovelace^Ada"
    spec.description = "CT CHEST W CONTRAST"
    series = generate_uid()
    dicom_file = archive_storage / "IM0001.dcm"
    write(make_instance(spec, series_uid=series, rows=64, columns=64), dicom_file)
    second = archive_storage / "IM0002.dcm"
    write(make_instance(spec, series_uid=series, instance_number=2, rows=64, columns=64), second)
    make_member(org, Role.OWNER, email="alice@stmary.example")

    page = browser_page
    sign_in(page, live_server, "alice@stmary.example", org.slug)

    page.goto(f"{live_server.url}/o/{org.slug}/archive/ingest/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ingest")
    expect(page.locator("#stow-url")).to_contain_text("/dicomweb/studies")
    page.screenshot(path=SCREENSHOT_INGEST, full_page=True)

    # The drop area's file input: choosing files starts the upload at once.
    page.get_by_label("Choose files").set_input_files([str(dicom_file), str(second)])

    # The upload finishes, the job runs, and the page lands on the job's progress.
    expect(page).to_have_url(re.compile(r"/archive/ingest/jobs/\d+/$"), timeout=30_000)
    badge = page.locator("[data-job-progress] [data-badge]")
    expect(badge).to_have_text("Done", timeout=30_000)
    expect(page.locator("[data-field=stored]")).to_have_text("2")
    expect(page.locator("[data-field=failed]")).to_have_text("0")
    expect(page.locator("[data-progress-bar]")).to_have_class(re.compile("is-done"))
    page.screenshot(path=SCREENSHOT_JOB, full_page=True)

    job = IngestJob.objects.get(organization=org)
    assert (job.state, job.stored, job.kind) == ("done", 2, "upload")
    assert Instance.objects.for_org(org).count() == 2

    page.get_by_role("link", name="View studies").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Studies")
    row = page.locator("#study-table tbody tr").filter(has_text="Lovelace, Ada")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("CT CHEST W CONTRAST")
    expect(row).to_contain_text("1 / 2")
    expect(row.locator(".tier-hot")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=SCREENSHOT, full_page=True)

    row.get_by_role("link", name="Lovelace, Ada").click()
    study = Study.objects.for_org(org).get()
    expect(page).to_have_url(f"{live_server.url}/o/{org.slug}/archive/studies/{study.pk}/")
    expect(page.locator("#series-table tbody tr")).to_have_count(1)
    page.get_by_role("link", name="Download ZIP").click()
    expect(page.locator("#download-instances")).to_have_text("2")
    expect(page.locator("#download-cost")).to_contain_text("USD")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#storage-heading")).to_be_visible()
    page.screenshot(path=SCREENSHOT_STUDY, full_page=True)

    page.goto(f"{live_server.url}/o/{org.slug}/archive/storage/")
    expect(page.locator("#location-table")).to_contain_text("Platform storage")
    expect(page.locator("#tier-hot")).to_contain_text("KiB")
    page.screenshot(path=SCREENSHOT_STORAGE, full_page=True)
