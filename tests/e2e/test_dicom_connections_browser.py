"""DICOM connections in a real browser: a modality and a PACS talk to the listener over real
associations (C-ECHO, C-STORE, C-FIND), an owner opens DICOM connections from the navigation,
sees the listener's address, the AE titles, the destinations and those associations with their
operations, tests a destination (a C-ECHO to a running SCP) and opens an association's page; the
same page on a phone-sized screen. Screenshots at 1280 and 390 pixels wide."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt

from archive.ae_titles.services import ae_create
from archive.dimse.listener import StrataSCP
from archive.models import DicomAssociation, DicomDestination
from archive.synthetic import make_instance, study_spec
from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SCREENSHOT_WIDE = "/tmp/strata-dicom-connections-1280.png"
SCREENSHOT_NARROW = "/tmp/strata-dicom-connections-390.png"
SCREENSHOT_ASSOCIATION = "/tmp/strata-dicom-association-1280.png"
SCREENSHOT_ASSOCIATION_NARROW = "/tmp/strata-dicom-association-390.png"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def listener(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    for switch in ("STORE_RECV_CHUNKED_DATASET", "LOG_HANDLER_LEVEL"):
        monkeypatch.setattr(_config, switch, getattr(_config, switch))
    scp = StrataSCP(ae_title="STRATA")
    host, port = scp.start("127.0.0.1", 0)
    settings.DICOM_SCP_HOST = "dicom.stmary.example"
    settings.DICOM_SCP_PORT = port
    yield scp, host, port
    scp.stop(grace=5)


@pytest.fixture
def echo_scp() -> Iterator[int]:
    ae = AE(ae_title="READING-1")
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)]
    )
    assert server is not None
    yield int(server.server_address[1])
    server.shutdown()


def talk(scp: StrataSCP, host: str, port: int) -> None:
    """A modality stores two images (one refused), a PACS queries twice (one refused)."""
    modality = AE(ae_title="CT-SCANNER-1")
    modality.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    modality.add_requested_context(VERIFICATION, [ExplicitVRLittleEndian])
    assoc = modality.associate(host, port, ae_title="ST-MARY")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    spec = study_spec("CT")
    series = generate_uid()
    for number in (1, 2):
        ds = make_instance(spec, series_uid=series, instance_number=number, rows=32, columns=32)
        assert assoc.send_c_store(ds).Status == 0x0000
    broken = make_instance(spec, series_uid=series, instance_number=3, rows=32, columns=32)
    del broken.StudyInstanceUID
    assert assoc.send_c_store(broken).Status == 0xA900
    assoc.release()
    deadline = time.monotonic() + 20
    while scp.associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scp.wait_indexed(20)  # acknowledged, then indexed: now it can be found

    pacs = AE(ae_title="PACS-QR")
    pacs.add_requested_context(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])
    assoc = pacs.associate(host, port, ae_title="ST-MARY")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = spec.patient_id
    query.StudyDate = ""
    query.ModalitiesInStudy = ""
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, STUDY_ROOT_FIND)]
    assert statuses == [0xFF00, 0x0000]
    bad = Dataset()
    bad.QueryRetrieveLevel = "WARD"
    assert [int(s.Status) for s, _ in assoc.send_c_find(bad, STUDY_ROOT_FIND)] == [0xA900]
    assoc.release()


def test_owner_sees_connections_tests_a_destination_and_opens_an_association(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    listener: Any,
    echo_scp: int,
) -> None:
    from playwright.sync_api import expect

    scp, host, port = listener
    ae_create(
        org=org,
        ae_title="ST-MARY",
        allowed_calling_ae_titles=["CT-SCANNER-1", "PACS-QR"],
        allowed_networks=["127.0.0.1/32"],
        actor=Actor.system("tests"),
    )
    DicomDestination.objects.create(
        organization=org,
        ae_title="READING-1",
        host="127.0.0.1",
        port=echo_scp,
        description="Reading room workstation",
    )
    talk(scp, host, port)
    assert scp.activity.wait_written(20)
    assert DicomAssociation.objects.for_org(org).count() == 2
    make_member(org, Role.OWNER, email="alice@stmary.example")

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, "alice@stmary.example", org.slug)
    page.get_by_role("link", name="DICOM connections").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("DICOM connections")
    expect(page.locator("#scp-host")).to_have_text("dicom.stmary.example")
    expect(page.locator("#scp-port")).to_have_text(str(port))
    expect(page.locator("#ae-table")).to_contain_text("CT-SCANNER-1")
    table = page.locator("#association-table")
    expect(table).to_contain_text("PACS-QR")
    expect(table).to_contain_text("C-FIND 2 (1 failure)")
    expect(table).to_contain_text("Study Root · STUDY · keys PatientID → 1 match")
    expect(table).to_contain_text("QueryRetrieveLevel 'WARD' is not one of")
    expect(table).to_contain_text("2 stored, 1 refused")
    expect(table).to_contain_text("C-ECHO 1 answered")

    page.get_by_role("button", name="Test READING-1").click()
    expect(page.get_by_role("status")).to_contain_text("C-ECHO succeeded")
    expect(page.locator("#destination-table")).to_contain_text("Works")
    page.screenshot(path=SCREENSHOT_WIDE, full_page=True)

    page.locator("#association-table a.cell-primary").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("PACS-QR")
    expect(page.locator("#operation-table")).to_contain_text("0xA900")
    page.screenshot(path=SCREENSHOT_ASSOCIATION, full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=SCREENSHOT_ASSOCIATION_NARROW, full_page=True)

    page.goto(f"{live_server.url}/o/{org.slug}/archive/dicom/")
    expect(page.locator("#association-table")).to_be_visible()
    # Nothing but the tables (which scroll inside their card) is wider than the screen.
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, overflow
    page.screenshot(path=SCREENSHOT_NARROW, full_page=True)
