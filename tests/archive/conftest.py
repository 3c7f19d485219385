from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archive.storage.s3 import shared_clients_clear
from archive.synthetic import make_instance, study_spec, to_bytes


@pytest.fixture(autouse=True)
def _fresh_s3_clients() -> Iterator[None]:
    """Tests hook events onto store clients; a client shared across tests would carry them on."""
    shared_clients_clear()
    yield
    shared_clients_clear()


@pytest.fixture(autouse=True)
def archive_root(settings, tmp_path) -> Path:
    """Every archive test gets its own filesystem storage root."""
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    return settings.ARCHIVE_ROOT


@pytest.fixture
def ct_study():
    """Three CT instances of one study and series (as DICOM Part 10 bytes)."""
    spec = study_spec("CT")
    from pydicom.uid import generate_uid

    series = generate_uid()
    return [
        to_bytes(make_instance(spec, series_uid=series, instance_number=i + 1, rows=64, columns=64))
        for i in range(3)
    ]


DIMSE_CALLED_AE = "ST-MARY"


@pytest.fixture
def dicom_ae(org):
    """The organization's called AE title for the C-STORE listener tests, open to any sender."""
    from archive.ae_titles.services import ae_create
    from tenants.context import Actor

    return ae_create(
        org=org,
        ae_title=DIMSE_CALLED_AE,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )


@pytest.fixture
def start_listener(monkeypatch, tmp_path):
    """Start a C-STORE listener (``StrataSCP`` options as keywords) on a free port; returns
    ``(scp, host, port, receive_dir)``; every listener started is stopped at the end."""
    import tempfile

    from pynetdicom import _config

    from archive.dimse.listener import StrataSCP

    # StrataSCP flips process-wide pynetdicom switches; put them back after the test.
    for switch in ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET", "LOG_HANDLER_LEVEL"):
        monkeypatch.setattr(_config, switch, getattr(_config, switch))
    receive_dir = tmp_path / "dimse-receive"
    receive_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(receive_dir))
    started = []

    def start(**options):
        scp = StrataSCP(ae_title="STRATA", **options)
        host, port = scp.start("127.0.0.1", 0)
        started.append(scp)
        return scp, host, port, receive_dir

    yield start
    for scp in started:
        scp.stop(grace=5)
