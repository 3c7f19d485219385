"""A small corpus of malformed DICOM, made here, for every door (STOW-RS, C-STORE, upload, import).

Each case is the bytes of a Part 10 file (or of something pretending to be one) and what the
archive must answer: the failure reason code and words the reason must contain. ``GOOD`` cases
are unusual but valid and must be stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    generate_uid,
)

from archive.ingest.dicom import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH
from archive.synthetic import make_instance, study_spec, to_bytes


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    code: int  # 0: must be stored
    words: tuple[str, ...] = ()


def instance(**uids: str) -> Dataset:
    """A small CT instance of a new study, with the UIDs given (keyword -> value) set as is."""
    ds = make_instance(study_spec("CT"), series_uid=generate_uid(), rows=16, columns=16)
    for keyword, value in uids.items():
        ds[keyword].value = value
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = UID(value)
    return ds


def encoded(ds: Dataset) -> bytes:
    return to_bytes(ds)


def _j2k() -> bytes:
    ds = instance()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(4000)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds)


def _deflated() -> bytes:
    ds = instance()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def _big_endian() -> bytes:
    ds = instance()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return to_bytes(ds)


def _no_preamble() -> bytes:
    """The data set alone, without the 128-byte preamble, DICM prefix and file meta."""
    ds = instance()
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    data = buffer.getvalue()
    return data[data.index(b"DICM") + 4 :] if b"DICM" in data else data


LONG = "1.2.826.0.1.3680043.8.498." + "1" * 40  # 66 characters


def cases() -> list[Case]:
    native = encoded(instance())
    j2k = _j2k()
    return [
        Case("truncated-native", native[:-100], CANNOT_UNDERSTAND, ("truncated",)),
        Case("truncated-encapsulated", j2k[:-1000], CANNOT_UNDERSTAND, ("truncated",)),
        Case("no-preamble", _no_preamble(), CANNOT_UNDERSTAND, ("DICOM",)),
        Case("empty", b"", CANNOT_UNDERSTAND, ()),
        Case("garbage", b"\x00\x01not a dicom file at all" * 20, CANNOT_UNDERSTAND, ("DICOM",)),
        Case(
            "sop-with-slash",
            encoded(instance(SOPInstanceUID="1.2.3.777/9")),
            DATASET_DOES_NOT_MATCH,
            ("SOPInstanceUID", "'/'"),
        ),
        Case(
            "series-with-dotdot",
            encoded(instance(SeriesInstanceUID="1.2..3")),
            DATASET_DOES_NOT_MATCH,
            ("SeriesInstanceUID", "empty component"),
        ),
        Case(
            "study-with-backslash",
            encoded(instance(StudyInstanceUID="1.2.3\\4.5")),
            DATASET_DOES_NOT_MATCH,
            ("StudyInstanceUID",),
        ),
        Case(
            "sop-too-long",
            encoded(instance(SOPInstanceUID=LONG)),
            DATASET_DOES_NOT_MATCH,
            ("SOPInstanceUID", "66 characters"),
        ),
        Case(
            "sop-with-letters",
            encoded(instance(SOPInstanceUID="1.2.3.abc")),
            DATASET_DOES_NOT_MATCH,
            ("SOPInstanceUID", "'a'"),
        ),
        Case(
            "sop-with-nul",
            encoded(instance(SOPInstanceUID="1.2.3\x004.5")),
            DATASET_DOES_NOT_MATCH,
            ("SOPInstanceUID",),
        ),
        Case("deflated", _deflated(), 0),
        Case("truncated-deflated", _deflated()[:-300], CANNOT_UNDERSTAND, ()),
        Case("big-endian", _big_endian(), 0),
        Case("leading-zero-component", encoded(instance(SOPInstanceUID="1.2.03.4")), 0),
    ]
