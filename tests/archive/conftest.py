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
