"""Helpers the DICOMweb tests share (no tests here): bodies, studies and multipart parsing."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field

from django.utils.http import parse_header_parameters
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.models import Instance
from archive.storage import store_for
from archive.synthetic import StudySpec, make_instance, to_bytes
from tenants.models import Organization

BOUNDARY = "strata-test-boundary-7f3a"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], *, part_type: str = "application/dicom") -> bytes:
    """A STOW-RS body: every part a DICOM file (or whatever ``part_type`` says)."""
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """A multipart response -> (headers, exact bytes) per part; checks the framing strictly."""
    media_type, params = parse_header_parameters(content_type)
    assert media_type == "multipart/related", content_type
    assert params.get("type") == "application/dicom", content_type
    delimiter = b"\r\n--" + params["boundary"].encode()
    pieces = (b"\r\n" + body).split(delimiter)
    assert pieces[0] == b"", "no preamble expected"
    assert pieces[-1] == b"--\r\n", "the body must end with the close delimiter"
    parts = []
    for piece in pieces[1:-1]:
        head, sep, content = piece.partition(b"\r\n\r\n")
        assert head.startswith(b"\r\n") and sep, piece[:200]
        headers = {}
        for line in head[2:].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert int(headers["content-length"]) == len(content)
        parts.append((headers, content))
    return parts


@dataclass
class SeededStudy:
    spec: StudySpec
    files: list[bytes] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return self.spec.study_uid


def study(
    *,
    patient_id: str,
    patient_name: str,
    study_date: dt.date,
    modalities: tuple[str, ...] = ("CT",),
    instances_per_series: int = 2,
    accession: str = "",
    description: str = "",
) -> SeededStudy:
    """One study with a series per modality, small images (16x16) so tests stay fast."""
    uid = generate_uid()
    seeded = SeededStudy(
        spec=StudySpec(
            patient_id=patient_id,
            patient_name=patient_name,
            modality=modalities[0],
            study_uid=uid,
            accession=accession or f"ACC{patient_id}",
            study_date=study_date,
            description=description or f"{modalities[0]} STUDY",
        )
    )
    for number, modality in enumerate(modalities, start=1):
        spec = StudySpec(**{**seeded.spec.__dict__, "modality": modality})
        series_uid = generate_uid()
        seeded.series_uids.append(series_uid)
        for n in range(instances_per_series):
            ds = make_instance(
                spec,
                series_uid=series_uid,
                series_number=number,
                instance_number=n + 1,
                rows=16,
                columns=16,
            )
            seeded.sop_uids.append(str(ds.SOPInstanceUID))
            seeded.files.append(to_bytes(ds))
    return seeded


def ingest_study(org: Organization, seeded: SeededStudy) -> SeededStudy:
    """Store a study through the ingest pipeline (the STOW tests cover the HTTP door)."""
    store = store_for(pipeline.location_primary(org))
    for data in seeded.files:
        result = pipeline.instance_ingest(
            org=org, spooled=pipeline.spool_file(store, io.BytesIO(data))
        )
        assert result.status == "stored", result.reason
    return seeded


def stored_bytes(instance: Instance) -> bytes:
    return b"".join(
        store_for(instance.location).iter_bytes(key=instance.object_key, tier=instance.tier)
    )
