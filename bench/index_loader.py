"""A synthetic index loaded with COPY, shared by the benchmarks that search it (``ingest.py``'s
QIDO-RS part, ``dimse_qr.py``'s C-FIND and storage commitment parts).

Importing this module has no side effect: the caller has set Django up on its own scratch
database (``bench.scratch.ScratchDatabase``) before it calls ``load_studies``. PostgreSQL only
(COPY).

Study ``i`` has one series and one instance, hot tier, 512 KiB; patient ``i // 2`` (about two
studies per patient, ``patient``) has a Patient ID ``P<8 digits>`` and a name
``FAMILY^GIVEN``, one of 12,000 (400 family names x 30 given names with distinct first two
letters), so a ``FAMILY^GI*`` prefix matches 1 study in 12,000: ~83 at 1M studies. Each study's
person-name words (``archive.index.names``, for fuzzy matching) are loaded with it, as ingest
writes them: two of the patient's name, two of the referring physician's.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection

from archive.index.names import split_words

if TYPE_CHECKING:
    from archive.models import StorageLocation
    from tenants.models import Organization

# fmt: off
FAMILIES = [
    a + b + c
    for a in ("BAR", "KAL", "MOR", "SEV", "TAN", "VIL", "HOL", "DEN", "RAS", "FOR")
    for b in ("AN", "EL", "OR", "IS", "UM")
    for c in ("DO", "SKI", "TON", "MAN", "EZ", "BERG", "SEN", "OV")
]  # 400 family names
GIVEN = [
    "ADA", "ALAN", "ANNA", "BORIS", "CARLA", "DAVID", "EMMA", "FELIX", "GRACE", "HUGO",
    "IRIS", "JONAS", "KARIN", "LEON", "MARIE", "NIELS", "OLGA", "PAUL", "ROSA", "SVEN",
    "TARA", "URS", "VERA", "WALT", "XENIA", "YUSUF", "ZOE", "AMIR", "BEA", "CLEO",
]
# fmt: on
MODALITIES = ["CT", "MR", "CR", "US", "MG"]
SIZE = 524_288


def pct(samples: list[float], p: int) -> float:
    """The ``p``-th percentile of ``samples`` (inclusive method)."""
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def patient(index: int) -> tuple[str, str]:
    """Patient of study ``index``: (ID, name). About two studies per patient."""
    n = index // 2
    return f"P{n:08d}", f"{FAMILIES[n % len(FAMILIES)]}^{GIVEN[(n // len(FAMILIES)) % len(GIVEN)]}"


def _copy(table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


STUDY_COLUMNS = [
    "id", "organization_id", "study_uid", "patient_id", "patient_name", "patient_birth_date",
    "patient_sex", "accession_number", "study_date", "study_time", "study_description",
    "study_id", "referring_physician", "modalities", "series_count", "instance_count",
    "total_bytes", "bytes_hot", "bytes_warm", "bytes_cold", "bytes_archive", "created_at",
    "updated_at", "metadata", "legal_hold", "trash_reason",
]  # fmt: skip
SERIES_COLUMNS = [
    "id", "organization_id", "study_id", "series_uid", "modality", "series_number",
    "series_description", "body_part", "instance_count", "total_bytes", "bytes_hot",
    "bytes_warm", "bytes_cold", "bytes_archive", "created_at", "metadata",
]  # fmt: skip
INSTANCE_COLUMNS = [
    "id", "organization_id", "study_id", "series_id", "sop_instance_uid", "sop_class_uid",
    "transfer_syntax_uid", "instance_number", "size_bytes", "sha256", "location_id",
    "object_key", "tier", "received_at", "metadata",
]  # fmt: skip


def _next_id(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
        return int(cursor.fetchone()[0])


def load_studies(org: Organization, location: StorageLocation, first: int, last: int) -> None:
    """Studies ``first``..``last - 1`` of ``org``, one series and one instance each (stored in
    ``location``), loaded with COPY; the tables analysed afterwards."""
    rng = random.Random(first)
    now = datetime.now(UTC)
    study0, series0, instance0 = (
        _next_id(t) for t in ("archive_study", "archive_series", "archive_instance")
    )
    count = last - first
    modalities = [rng.choice(MODALITIES) for _ in range(count)]
    dates = [date(2016, 1, 1) + timedelta(days=rng.randrange(3650)) for _ in range(count)]

    def study_row(k: int) -> tuple[Any, ...]:
        i = first + k
        patient_id, name = patient(i)
        uid, accession, day = f"1.2.826.0.1.3680043.10.1.{i}", f"A{i:09d}", dates[k]
        metadata = {
            "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
            "00080020": {"vr": "DA", "Value": [day.strftime("%Y%m%d")]},
            "00080030": {"vr": "TM", "Value": ["101500"]},
            "00080050": {"vr": "SH", "Value": [accession]},
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": "WELBY^MARCUS"}]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
            "00100020": {"vr": "LO", "Value": [patient_id]},
            "00100030": {"vr": "DA", "Value": ["19700101"]},
            "00100040": {"vr": "CS", "Value": ["O"]},
            "0020000D": {"vr": "UI", "Value": [uid]},
            "00081030": {"vr": "LO", "Value": [f"{modalities[k]} EXAM"]},
        }
        return (
            study0 + k, org.pk, uid, patient_id, name, date(1970, 1, 1), "O", accession, day,
            "10:15:00", f"{modalities[k]} EXAM", str(i % 10**6), "WELBY^MARCUS",
            f"\\{modalities[k]}\\", 1, 1, SIZE, SIZE, 0, 0, 0, now, now, json.dumps(metadata),
            False, "",
        )  # fmt: skip

    def series_row(k: int) -> tuple[Any, ...]:
        return (
            series0 + k, org.pk, study0 + k, f"1.2.826.0.1.3680043.10.2.{first + k}",
            modalities[k], 1, "", "", 1, SIZE, SIZE, 0, 0, 0, now,
            json.dumps({"00080060": {"vr": "CS", "Value": [modalities[k]]}}),
        )  # fmt: skip

    def instance_row(k: int) -> tuple[Any, ...]:
        return (
            instance0 + k, org.pk, study0 + k, series0 + k,
            f"1.2.826.0.1.3680043.10.3.{first + k}", "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1", 1, SIZE, "0" * 64, location.pk,
            f"org-{org.pk}/{first + k}.dcm", "hot", now, "{}",
        )  # fmt: skip

    _copy("archive_study", STUDY_COLUMNS, (study_row(k) for k in range(count)))
    _copy("archive_series", SERIES_COLUMNS, (series_row(k) for k in range(count)))
    _copy("archive_instance", INSTANCE_COLUMNS, (instance_row(k) for k in range(count)))
    word_columns = ["organization_id", "study_id", "word"]
    _copy(
        "archive_patientnameword",
        word_columns,
        (
            (org.pk, study0 + k, word)
            for k in range(count)
            for word in split_words(patient(first + k)[1])
        ),
    )
    referring_words = split_words("WELBY^MARCUS")
    _copy(
        "archive_referringphysiciannameword",
        word_columns,
        ((org.pk, study0 + k, word) for k in range(count) for word in referring_words),
    )
    with connection.cursor() as cursor:
        for table in ("archive_study", "archive_series", "archive_instance"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT MAX(id) FROM {table}))"
            )
            cursor.execute(f"ANALYZE {table}")
        # Vacuumed, as autovacuum does after many inserts, so that searches read the words'
        # indexes only (the visibility map).
        for table in ("archive_patientnameword", "archive_referringphysiciannameword"):
            cursor.execute(f"VACUUM ANALYZE {table}")
