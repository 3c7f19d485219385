"""Reading what the index needs from a DICOM file on disk, without loading pixel data.

Failure reasons are the PS3.18 / PS3.4 codes a STOW-RS or C-STORE sender understands.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# PS3.18 Table 10.5.3-1 / PS3.4 C-STORE failure reasons
CANNOT_UNDERSTAND = 0xC000
DATASET_DOES_NOT_MATCH = 0xA900
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_NOT_SUPPORTED = 0x0122
STUDY_UID_MISMATCH = 0xC409  # as used by DICOMweb servers for a part outside the target study

BULK_THRESHOLD = 1024  # bytes: larger binary values are bulk data, kept out of the JSON metadata
UNDEFINED_LENGTH = 0xFFFFFFFF


class DicomRejected(Exception):
    def __init__(self, reason_code: int, message: str):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


@dataclass
class Header:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance_number: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    study_json: dict[str, Any] = field(default_factory=dict)
    series_json: dict[str, Any] = field(default_factory=dict)


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    value = _text(ds, keyword)
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date() if len(value) >= 8 else None
    except ValueError:
        return None


def _time(ds: Dataset, keyword: str) -> dt.time | None:
    value = _text(ds, keyword).split(".")[0]
    for fmt in ("%H%M%S", "%H%M", "%H"):
        try:
            return dt.datetime.strptime(value, fmt).time()
        except ValueError:
            continue
    return None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


STUDY_KEYWORDS = [
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
]
SERIES_KEYWORDS = [
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
]


def _tags(keywords: list[str]) -> list[str]:
    return [f"{tag_for_keyword(k):08X}" for k in keywords]


STUDY_TAGS = _tags(STUDY_KEYWORDS)
SERIES_TAGS = _tags(SERIES_KEYWORDS)
# Where stop_before_pixels would stop: Float / Double Float / Pixel Data.
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def _subset_json(metadata: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    return {tag: metadata[tag] for tag in tags if tag in metadata}


def _check_complete(ds: Dataset, size: int) -> None:
    """Refuse a truncated file: every value must lie inside the file.

    pydicom reads a short pixel-data value without complaint, so the deferred values' offsets are
    checked against the file size instead (nothing large is read).
    """
    for raw in ds._dict.values():
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", 0)
        if tell is not None and length != UNDEFINED_LENGTH and tell + length > size:
            raise DicomRejected(
                CANNOT_UNDERSTAND,
                f"The file is truncated: element {raw.tag} needs {tell + length} bytes, the file has {size}.",
            )


def _header_dataset(ds: Dataset) -> Dataset:
    """The elements before the pixel data, as ``stop_before_pixels`` would have read them
    (a deferred one, larger than ``BULK_THRESHOLD``, is read now; the pixel data never is)."""
    header = Dataset()
    for tag in list(ds._dict):
        if tag in PIXEL_TAGS:
            break
        header.add(ds[tag])
    return header


def read_header(path: Path) -> Header:
    """Parse what the index needs. Raises ``DicomRejected`` with the failure reason code.

    One pass over the file: values larger than ``BULK_THRESHOLD`` (the pixel data) are skipped,
    not read, and their offsets checked against the file size.
    """
    size = os.path.getsize(path)
    try:
        ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD)
    except InvalidDicomError:
        raise DicomRejected(
            CANNOT_UNDERSTAND, "The data is not a DICOM Part 10 file (no DICM prefix / file meta)."
        ) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be parsed: {exc}."
        ) from None
    try:
        missing = [
            k
            for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
            if not _text(ds, k)
        ]
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be parsed: {exc}."
        ) from None
    if missing:
        raise DicomRejected(
            DATASET_DOES_NOT_MATCH, f"Required attribute(s) missing: {', '.join(missing)}."
        )
    _check_complete(ds, size)
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    try:
        metadata = _header_dataset(ds).to_json_dict(
            bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=lambda _e: ""
        )
    except Exception as exc:  # a value pydicom cannot encode as JSON
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be converted: {exc}."
        ) from None
    # Bulk values are not kept; a WADO-RS client fetches them with the instance.
    metadata = {tag: v for tag, v in metadata.items() if "BulkDataURI" not in v}
    return Header(
        sop_instance_uid=_text(ds, "SOPInstanceUID", 64),
        sop_class_uid=_text(ds, "SOPClassUID", 64),
        study_uid=_text(ds, "StudyInstanceUID", 64),
        series_uid=_text(ds, "SeriesInstanceUID", 64),
        transfer_syntax_uid=ts[:64],
        instance_number=_int(ds, "InstanceNumber"),
        study={
            "patient_id": _text(ds, "PatientID", 64),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _date(ds, "PatientBirthDate"),
            "patient_sex": _text(ds, "PatientSex", 16),
            "accession_number": _text(ds, "AccessionNumber", 64),
            "study_date": _date(ds, "StudyDate"),
            "study_time": _time(ds, "StudyTime"),
            "study_description": _text(ds, "StudyDescription", 256),
            "study_id": _text(ds, "StudyID", 16),
            "referring_physician": _text(ds, "ReferringPhysicianName", 324),
        },
        series={
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", 256),
            "body_part": _text(ds, "BodyPartExamined", 64),
        },
        metadata=metadata,
        study_json=_subset_json(metadata, STUDY_TAGS),
        series_json=_subset_json(metadata, SERIES_TAGS),
    )
