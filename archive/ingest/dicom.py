"""Reading what the index needs from a DICOM file on disk, without loading pixel data.

Failure reasons are the PS3.18 / PS3.4 codes a STOW-RS or C-STORE sender understands.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

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


# PS3.5 9.1: a UID is digits and dots, each component a number, at most 64 characters.
UID_MAX_LENGTH = 64
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a UID this archive accepts, or None when it is one.

    Accepted as real devices send them: trailing space or NUL padding (removed by
    ``uid_clean``), and components with a leading zero (``1.2.03``), which PS3.5 forbids but
    older modalities write. Such a UID is kept exactly as sent: it is a different string from
    ``1.2.3``, so it names a different object, and object keys never depend on how a UID looks.
    Everything else is refused: empty, longer than 64 characters (never truncated: two long
    UIDs would become one), letters, separators (``/``, ``\\``), empty components (``..``, a
    leading or trailing dot), spaces inside, control characters.
    """
    if not value:
        return "is empty"
    if len(value) > UID_MAX_LENGTH:
        return f"is {len(value)} characters long; a UID has at most {UID_MAX_LENGTH}"
    if not _UID.fullmatch(value):
        if "\\" in value:
            return "has more than one value; a UID has exactly one"
        bad = next((c for c in value if not (c.isdigit() or c == ".")), None)
        if bad is not None:
            return f"contains {bad!r}; a UID has only digits and dots"
        return "has an empty component (a leading, trailing or doubled dot)"
    return None


def uid_clean(value: str) -> str:
    """A UID value without its padding (trailing spaces and NULs, PS3.5 6.2)."""
    return value.rstrip(" \x00")


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
    # Where the frames of the pixel data lie in the file (``frame_layout``); None: no image.
    frames: FrameLayout | None = None


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    # NUL is padding or garbage in a text value, and PostgreSQL cannot store it.
    return str(value).replace("\x00", "").strip()[:limit]


def _scrub(value: Any) -> Any:
    """The DICOM JSON with NUL characters removed from its strings (PostgreSQL's JSON cannot
    hold them); the same object when it has none."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _uid_text(ds: Dataset, keyword: str) -> str:
    """A UID attribute as sent, less its padding; several values joined by a backslash (and
    then refused). Never cut to length: a cut UID could name another instance."""
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return uid_clean(str(value))


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


@contextlib.contextmanager
def _without_pixel_data(ds: Dataset) -> Iterator[Dataset]:
    """``ds`` as ``stop_before_pixels`` would have read it, for the duration of the block: the
    pixel data and whatever follows it are set aside (never read), then put back.

    In place rather than copied into a new Dataset: each element is converted from its raw form
    once, and the values read afterwards (UIDs, names, dates) are the converted ones.
    """
    tags = list(ds._dict)
    cut = next((n for n, tag in enumerate(tags) if tag in PIXEL_TAGS), len(tags))
    aside = {tag: ds._dict.pop(tag) for tag in tags[cut:]}
    try:
        yield ds
    finally:
        ds._dict.update(aside)


def _refuse_if_cut_in_pixel_data(path: Path) -> None:
    """The reader gives up on an undefined-length value (encapsulated pixel data) that ends
    before its delimiter and answers an empty data set; the header read alone tells the truth.
    Called only when every UID seems missing, so a good file pays nothing for it."""
    try:
        head = pydicom.dcmread(path, stop_before_pixels=True)
        found = all(_uid_text(head, k) for k in _UID_KEYWORDS)
    except Exception:  # noqa: BLE001 - a header that cannot be read says nothing more
        return
    if found:
        raise DicomRejected(
            CANNOT_UNDERSTAND,
            "The file is truncated: the encapsulated pixel data ends before its sequence "
            "delimiter.",
        )


def read_header(path: Path, *, full: bool = True) -> Header:
    """Parse what the index needs. Raises ``DicomRejected`` with the failure reason code.

    One pass over the file: values larger than ``BULK_THRESHOLD`` (the pixel data) are skipped,
    not read, and their offsets checked against the file size. ``full=False``: the same checks,
    but only the UIDs and transfer syntax are filled in (no DICOM JSON, no index attributes), for
    a sender answered before the object is indexed.
    """
    size = os.path.getsize(path)
    try:
        ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD)
    except InvalidDicomError:
        raise DicomRejected(
            CANNOT_UNDERSTAND, "The data is not a DICOM Part 10 file (no DICM prefix / file meta)."
        ) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be parsed: {exc}."
        ) from None
    try:
        values = {k: _uid_text(ds, k) for k in _UID_KEYWORDS}
    except (EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be parsed: {exc}."
        ) from None
    missing = [k for k, v in values.items() if not v]
    if len(missing) == len(_UID_KEYWORDS):
        _refuse_if_cut_in_pixel_data(path)
    if missing:
        raise DicomRejected(
            DATASET_DOES_NOT_MATCH, f"Required attribute(s) missing: {', '.join(missing)}."
        )
    meta = getattr(ds, "file_meta", None)
    values["TransferSyntaxUID"] = uid_clean(str(getattr(meta, "TransferSyntaxUID", "") or ""))
    invalid = [
        f"{k} {v[:80]!r} {problem}"
        for k, v in values.items()
        if (problem := uid_problem(v)) is not None and (v or k != "TransferSyntaxUID")
    ]
    if invalid:
        raise DicomRejected(DATASET_DOES_NOT_MATCH, f"Invalid UID: {'; '.join(invalid)}.")
    ts = values["TransferSyntaxUID"]
    if ts != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # A deflated data set was inflated by the reader: its offsets are those of the inflated
        # stream, not of the file (a cut deflate stream fails to inflate instead).
        _check_complete(ds, size)
    uids: dict[str, Any] = {
        "sop_instance_uid": values["SOPInstanceUID"],
        "sop_class_uid": values["SOPClassUID"],
        "study_uid": values["StudyInstanceUID"],
        "series_uid": values["SeriesInstanceUID"],
        "transfer_syntax_uid": ts,
    }
    if not full:
        return Header(**uids)
    try:
        with _without_pixel_data(ds) as header:
            metadata = header.to_json_dict(
                bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=lambda _e: ""
            )
    except Exception as exc:  # a value pydicom cannot encode as JSON
        raise DicomRejected(
            CANNOT_UNDERSTAND, f"The DICOM header cannot be converted: {exc}."
        ) from None
    # Bulk values are not kept; a WADO-RS client fetches them with the instance.
    metadata = {tag: _scrub(v) for tag, v in metadata.items() if "BulkDataURI" not in v}
    frames = _frame_layout_of_file(ds, path, size=size, metadata=metadata, transfer_syntax_uid=ts)
    return Header(
        **uids,
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
        frames=frames,
    )


# --- pixel data as bulk data ------------------------------------------------------------------
#
# The index keeps no pixel data. Which pixel data attribute an instance has, and its VR, follow
# from the Image Pixel module attributes its stored metadata holds and from its transfer syntax
# (``pixel_bulk_data``), so rows ingested at any time answer alike and the metadata needs no
# object-storage read. Where the value sits in the object is found by reading the object's
# header only (``pixel_data_locate``).

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
# DICOM JSON keys of the stored metadata the pixel data attribute is derived from.
ROWS_KEY = "00280010"
BITS_ALLOCATED_KEY = "00280100"
PIXEL_REPRESENTATION_KEY = "00280103"
PIXEL_DATA_PROVIDER_URL_KEY = "00287FE0"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
# A Basic Offset Table has 4 bytes per frame: this is 4 million frames.
MAX_OFFSET_TABLE_BYTES = 16 * 1024 * 1024
# The VRs pixel data may have in explicit VR; each has a 4-byte length field (PS3.5 7.1.2).
_PIXEL_VRS = {"OB", "OW", "OF", "OD", "UN"}
_WORD_SIZES = {"OW": 2, "OF": 4, "OD": 8}

# How a frame's first fragment starts when no offset table says where frames begin (PS3.5 A.4):
# the codestream's first marker or the file format's signature box.
_JPEG = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
)
_J2K = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)
_JPEG_XL = ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
FRAME_STARTS: dict[str, tuple[bytes, ...]] = {
    **dict.fromkeys(_JPEG, (b"\xff\xd8",)),
    **dict.fromkeys(_J2K, (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")),
    **dict.fromkeys(_JPEG_XL, (b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")),
}
# Video: all fragments are one stream, whatever the number of frames.
VIDEO_TRANSFER_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))


class PixelDataUnreadable(Exception):
    """A stored object's header cannot be parsed up to its pixel data, or the pixel data's
    encapsulation (items) is broken."""


def is_encapsulated(transfer_syntax_uid: str) -> bool:
    """Every transfer syntax but the four native ones encapsulates pixel data (PS3.5 A.4). An
    object without one was read as implicit VR little endian (native)."""
    return bool(transfer_syntax_uid) and transfer_syntax_uid not in NATIVE_TRANSFER_SYNTAXES


@dataclass(frozen=True)
class PixelAttribute:
    tag: int
    vr: str

    @property
    def key(self) -> str:
        """The DICOM JSON key: 8 upper-case hex digits."""
        return f"{self.tag:08X}"


def pixel_bulk_data(
    *,
    transfer_syntax_uid: str,
    has_rows: bool,
    bits_allocated: int | None,
    has_pixel_representation: bool,
    has_provider_url: bool,
) -> PixelAttribute | None:
    """The pixel data attribute an instance offers as bulk data, from its Image Pixel module
    (PS3.3 C.7.6.3) and transfer syntax; None when it offers none.

    - No Rows or Bits Allocated: not an image. A Pixel Data Provider URL: the pixels are
      elsewhere (JPIP). A deflated dataset: its values can only be found by inflating the whole
      object, so its pixel data is not offered as bulk data (the instance retrieve has it).
    - Bits Allocated 32 / 64 without Pixel Representation: the Floating Point Image Pixel module,
      Float Pixel Data (OF) / Double Float Pixel Data (OD); native only.
    - Pixel Data: OB when encapsulated (PS3.5 A.4); OW in implicit VR (PS3.5 A.1); in explicit
      VR, OW above 8 bits allocated and OB up to 8 (PS3.5 A.2 allows OB or OW there, the bytes
      are the same, and OB is what pydicom writes).
    """
    if not has_rows or bits_allocated is None or has_provider_url:
        return None
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    if is_encapsulated(transfer_syntax_uid):
        return PixelAttribute(PIXEL_DATA, "OB")
    if not has_pixel_representation and bits_allocated == 32:
        return PixelAttribute(FLOAT_PIXEL_DATA, "OF")
    if not has_pixel_representation and bits_allocated == 64:
        return PixelAttribute(DOUBLE_FLOAT_PIXEL_DATA, "OD")
    if transfer_syntax_uid in ("", IMPLICIT_VR_LITTLE_ENDIAN) or bits_allocated > 8:
        return PixelAttribute(PIXEL_DATA, "OW")
    return PixelAttribute(PIXEL_DATA, "OB")


def _first_int(element: Any) -> int | None:
    try:
        return int(element["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def pixel_bulk_data_of(metadata: dict[str, Any], transfer_syntax_uid: str) -> PixelAttribute | None:
    """``pixel_bulk_data`` of one instance's stored DICOM JSON."""
    return pixel_bulk_data(
        transfer_syntax_uid=transfer_syntax_uid,
        has_rows=ROWS_KEY in metadata,
        bits_allocated=_first_int(metadata.get(BITS_ALLOCATED_KEY)),
        has_pixel_representation=PIXEL_REPRESENTATION_KEY in metadata,
        has_provider_url=PIXEL_DATA_PROVIDER_URL_KEY in metadata,
    )


@dataclass(frozen=True)
class PixelValue:
    """Where a pixel data attribute's value is in a stored object."""

    tag: int
    vr: str
    offset: int  # the value's first byte
    length: int | None  # None: undefined (encapsulated: items up to a sequence delimiter)
    little_endian: bool
    frames: int  # Number of Frames, 1 when absent
    # Extended Offset Table (frame starts as Basic Offset Table offsets), empty when absent.
    extended_offsets: tuple[int, ...] = ()


def _read_exact(fileobj: BinaryIO, size: int) -> bytes:
    data = fileobj.read(size)
    if len(data) != size:
        raise PixelDataUnreadable(
            f"The object ends inside its pixel data (byte {fileobj.tell()}, {size} expected)."
        )
    return data


# What pydicom raises on a header it cannot parse.
_PARSE_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    NameError,
    struct.error,
)


def _extended_offsets(ds: Dataset, fileobj: BinaryIO) -> tuple[int, ...]:
    """The Extended Offset Table of ``ds`` (read from ``fileobj``), empty when absent."""
    # A RawDataElement while unread (its value None when deferred), else a DataElement.
    table: Any = ds.get_item(EXTENDED_OFFSET_TABLE, keep_deferred=True)
    if table is None:
        return ()
    raw = table.value
    length = getattr(table, "length", 0)
    # Deferred (above BULK_THRESHOLD): read it where it is, 8 bytes per frame.
    if raw is None and 0 < length <= 2 * MAX_OFFSET_TABLE_BYTES:
        fileobj.seek(table.value_tell)
        raw = _read_exact(fileobj, length)
    if not raw:
        return ()
    return struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8])


def pixel_data_locate(fileobj: BinaryIO, *, size: int) -> PixelValue | None:
    """Parse a Part 10 object's header up to its pixel data and say where that value is.

    ``fileobj`` is read from its start; values larger than ``BULK_THRESHOLD`` before the pixel
    data are skipped by seeking, not read, so only the header passes through memory. None: the
    object has no top-level pixel data attribute. Raises ``PixelDataUnreadable``.

    Precondition: the object is not deflated (pydicom would inflate the whole dataset at once).
    """
    try:
        ds = pydicom.dcmread(fileobj, defer_size=BULK_THRESHOLD, stop_before_pixels=True)
        implicit, read_little = ds.original_encoding
        little = bool(read_little)
        start = fileobj.tell()
        head = fileobj.read(8)
        if len(head) < 8:
            return None
        group, element = struct.unpack("<HH" if little else ">HH", head[:4])
        tag = group << 16 | element
        if tag not in PIXEL_TAGS:
            raise PixelDataUnreadable(f"Pixel data expected at byte {start}, found {tag:08X}.")
        vr = {PIXEL_DATA: "OW", FLOAT_PIXEL_DATA: "OF", DOUBLE_FLOAT_PIXEL_DATA: "OD"}[tag]
        if implicit:
            (length,) = struct.unpack("<L" if little else ">L", head[4:8])
        else:
            vr = head[4:6].decode("ascii")
            if vr not in _PIXEL_VRS:
                raise PixelDataUnreadable(f"Pixel data {tag:08X} has the VR {vr!r}.")
            (length,) = struct.unpack("<L" if little else ">L", _read_exact(fileobj, 4))
        offset = fileobj.tell()
        frames = _int(ds, "NumberOfFrames") or 1
        extended = _extended_offsets(ds, fileobj)
    except _PARSE_ERRORS as exc:
        raise PixelDataUnreadable(f"The stored object's header cannot be parsed: {exc}") from None
    if length == UNDEFINED_LENGTH:
        return PixelValue(tag, vr, offset, None, little, frames, extended)
    if offset + length > size:
        raise PixelDataUnreadable(
            f"The pixel data needs {offset + length} bytes, the object has {size}."
        )
    return PixelValue(tag, vr, offset, length, little, frames, extended)


def to_little_endian(
    chunks: Iterable[bytes], *, vr: str, little: bool, word: int | None = None
) -> Iterator[bytes]:
    """Native pixel data in little endian byte order, as ``application/octet-stream`` bulk data
    is (PS3.18 8.7.3.3.2): a big endian object's words (OW 2, OF 4, OD 8 bytes, or ``word``
    bytes) are reversed, chunk by chunk; OB values are bytes and stay as they are."""
    size = word or _WORD_SIZES.get(vr, 1)
    if little or size == 1:
        yield from chunks
        return
    code = next(c for c in "HILQ" if array(c).itemsize == size)
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = len(data) - len(data) % size
        carry = data[cut:]
        if cut:
            words = array(code, data[:cut])
            words.byteswap()
            yield words.tobytes()
    if carry:
        yield carry  # a length that is not a whole number of words: the rest as it is


def _item(fileobj: BinaryIO) -> tuple[int, int, int]:
    position = fileobj.tell()
    group, element, length = struct.unpack("<HHL", _read_exact(fileobj, 8))
    return position, group << 16 | element, length


def _basic_offset_table(fileobj: BinaryIO, value: PixelValue) -> tuple[int, ...]:
    """The Basic Offset Table of encapsulated pixel data (empty when the item is), leaving
    ``fileobj`` at the first fragment's item."""
    fileobj.seek(value.offset)
    _, tag, length = _item(fileobj)
    if tag != ITEM or length == UNDEFINED_LENGTH or length % 4 or length > MAX_OFFSET_TABLE_BYTES:
        raise PixelDataUnreadable("The encapsulated pixel data does not open with an offset table.")
    return struct.unpack(f"<{length // 4}L", _read_exact(fileobj, length))


def _fragments(fileobj: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """The fragment items from ``fileobj``'s position to the sequence delimiter: (the item's
    position, its data's length, the data's first bytes, up to 12). The caller may read the rest
    of the fragment's data or not: the next item is found by seeking past it."""
    while True:
        position, tag, length = _item(fileobj)
        if tag == SEQUENCE_DELIMITER:
            return
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise PixelDataUnreadable(f"A fragment item was expected at byte {position}.")
        head = _read_exact(fileobj, min(length, 12))
        yield position, length, head
        fileobj.seek(position + 8 + length)


class _FrameStarts:
    """Which fragments open a frame (PS3.5 A.4).

    A frame starts at an offset of the Basic Offset Table, else of the Extended Offset Table;
    without either, a single-frame object (and video) is one frame of all fragments; a multi-frame
    one starts a frame at each fragment that opens with its codestream's start marker (JPEG
    family, JPEG 2000, JPEG XL) or at every fragment (RLE and the others keep one fragment per
    frame).
    """

    def __init__(self, value: PixelValue, basic: tuple[int, ...], transfer_syntax_uid: str):
        self.tables: set[int] | None = None
        if basic:
            self.tables = set(basic)
        elif value.extended_offsets:
            self.tables = set(value.extended_offsets)
        self.whole = value.frames <= 1 or transfer_syntax_uid in VIDEO_TRANSFER_SYNTAXES
        self.markers = FRAME_STARTS.get(transfer_syntax_uid)

    def opens(self, offset: int, head: bytes) -> bool:
        """Whether the fragment at ``offset`` (from the first fragment's item) opens a frame."""
        if self.tables is not None:
            return offset in self.tables
        if self.whole:
            return False
        if self.markers is not None:
            return head.startswith(self.markers)
        return True


def encapsulated_frames(
    fileobj: BinaryIO, value: PixelValue, *, transfer_syntax_uid: str, chunk_size: int
) -> Iterator[bytes | None]:
    """The frames of encapsulated pixel data (PS3.5 A.4), streamed: ``None`` opens a frame and
    the bytes that follow are its fragments' data, item headers left out. Frames are told apart
    as ``_FrameStarts`` says. ``fileobj`` is read forward from the value's start, ``chunk_size``
    bytes at a time.
    """
    starts = _FrameStarts(value, _basic_offset_table(fileobj, value), transfer_syntax_uid)
    first_fragment = fileobj.tell()
    opened = False
    for position, length, head in _fragments(fileobj):
        if starts.opens(position - first_fragment, head) or not opened:
            opened = True
            yield None
        if head:
            yield head
        remaining = length - len(head)
        while remaining > 0:
            chunk = _read_exact(fileobj, min(chunk_size, remaining))
            remaining -= len(chunk)
            yield chunk


# --- where each frame lies ---------------------------------------------------------------------
#
# A frame is read from the object store by one byte range. Native pixel data: frame n (from 1)
# starts (n - 1) frame sizes into the value. Encapsulated: the items of frame n span
# [boundaries[n - 1], boundaries[n]) of the object. Both are computed once, when the object is
# ingested (``read_header``), and kept in the index (``archive.models.FrameIndex``).

COLUMNS_KEY = "00280011"
SAMPLES_PER_PIXEL_KEY = "00280002"
PHOTOMETRIC_INTERPRETATION_KEY = "00280004"
NUMBER_OF_FRAMES_KEY = "00280008"
# A frame of native pixel data at most this large (bits): 4 GiB, the largest value there is.
_MAX_FRAME_BITS = 8 * UNDEFINED_LENGTH


@dataclass(frozen=True)
class FrameLayout:
    """Where the frames of an instance's pixel data lie in its stored object.

    ``boundaries`` (encapsulated pixel data): ``frames + 1`` object offsets, little endian
    unsigned 64-bit, the items of frame n (from 1) spanning ``[boundaries[n-1], boundaries[n])``.
    ``problem``: why the frames cannot be told apart (broken encapsulation); ``frames`` is then 0.
    """

    vr: str
    little_endian: bool
    offset: int  # the value's first byte
    length: int | None  # None: encapsulated
    frames: int
    boundaries: bytes = b""
    problem: str = ""

    @property
    def encapsulated(self) -> bool:
        return self.length is None

    def item_range(self, number: int) -> tuple[int, int]:
        """(offset, length) of the items of frame ``number`` (from 1), encapsulated only."""
        start, end = struct.unpack_from("<QQ", self.boundaries, 8 * (number - 1))
        return start, end - start


def frame_data(fileobj: BinaryIO, *, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
    """The data of one frame of encapsulated pixel data: its items in ``[start, end)`` of the
    object (``FrameLayout.item_range``) without their headers, ``chunk_size`` bytes at most at a
    time. Raises ``PixelDataUnreadable`` when the range does not hold whole fragment items."""
    fileobj.seek(start)
    position = start
    while position < end:
        _, tag, length = _item(fileobj)
        if tag != ITEM or length == UNDEFINED_LENGTH or position + 8 + length > end:
            raise PixelDataUnreadable(f"No fragment item of the frame at byte {position}.")
        remaining = length
        while remaining > 0:
            chunk = _read_exact(fileobj, min(chunk_size, remaining))
            remaining -= len(chunk)
            yield chunk
        position += 8 + length


def native_frame_bits(metadata: dict[str, Any]) -> int | None:
    """The size in bits of one frame of native pixel data, from the Image Pixel module in the
    stored DICOM JSON (PS3.5 8.1.1: rows x columns x samples x bits allocated; YBR_FULL_422
    keeps two samples per pixel). None when the module is incomplete or the size absurd."""
    rows = _first_int(metadata.get(ROWS_KEY))
    columns = _first_int(metadata.get(COLUMNS_KEY))
    bits = _first_int(metadata.get(BITS_ALLOCATED_KEY))
    samples = _first_int(metadata.get(SAMPLES_PER_PIXEL_KEY)) or 1
    if not rows or not columns or not bits or rows < 0 or columns < 0 or bits < 0 or samples < 0:
        return None
    photometric = metadata.get(PHOTOMETRIC_INTERPRETATION_KEY, {}).get("Value", [""])[0]
    if photometric == "YBR_FULL_422" and samples == 3:
        samples = 2
    size = rows * columns * samples * bits
    return size if 0 < size <= _MAX_FRAME_BITS else None


def frame_layout(
    fileobj: BinaryIO, value: PixelValue, *, transfer_syntax_uid: str, frame_bits: int | None
) -> FrameLayout:
    """Where each frame of ``value`` lies; reads only item headers (encapsulated pixel data).

    Native: frames of ``frame_bits`` each, as many as Number of Frames says and the value holds.
    Encapsulated: with an Extended Offset Table (one fragment per frame, PS3.3 C.7.6.3.1.8) or
    a Basic Offset Table, the items of the last frame only are walked to find the end; without,
    every fragment's item header (and first bytes) is read, and frames told apart by
    ``_FrameStarts`` -- or one per fragment when there are exactly Number of Frames of them.
    Raises ``PixelDataUnreadable``.
    """
    if value.length is not None:
        frames = value.frames
        if frame_bits:
            frames = min(frames, value.length * 8 // frame_bits)
        return FrameLayout(
            value.vr, value.little_endian, value.offset, value.length, max(frames, 0)
        )
    try:
        basic = _basic_offset_table(fileobj, value)
        first = fileobj.tell()
        table = basic or value.extended_offsets
        starts = array("Q")
        if table:
            if any(b <= a for a, b in itertools.pairwise(table)):
                raise PixelDataUnreadable("The offset table's offsets do not increase.")
            starts.extend(first + offset for offset in table)
            fileobj.seek(starts[-1])
            end = starts[-1]
            for position, length, _ in _fragments(fileobj):
                end = position + 8 + length
            if end == starts[-1]:
                raise PixelDataUnreadable("The last frame of the offset table has no fragment.")
        else:
            decide = _FrameStarts(value, (), transfer_syntax_uid)
            fragments = array("Q")
            end = first
            for position, length, head in _fragments(fileobj):
                if not starts or decide.opens(position - first, head):
                    starts.append(position)
                fragments.append(position)
                end = position + 8 + length
            if not fragments:
                raise PixelDataUnreadable("The encapsulated pixel data has no fragment.")
            if len(starts) != value.frames and len(fragments) == value.frames:
                starts = fragments
    except (OSError, struct.error) as exc:
        raise PixelDataUnreadable(f"The encapsulated pixel data cannot be read: {exc}") from None
    starts.append(end)
    if sys.byteorder != "little":
        starts.byteswap()
    return FrameLayout(
        value.vr, value.little_endian, value.offset, None, len(starts) - 1, starts.tobytes()
    )


def _frame_layout_of_file(
    ds: Dataset, path: Path, *, size: int, metadata: dict[str, Any], transfer_syntax_uid: str
) -> FrameLayout | None:
    """The frame layout of a file ``read_header`` parsed (``ds``, pixel data deferred); None
    when the object offers no pixel data (``pixel_bulk_data``). Broken encapsulation is not the
    header's business: the layout then says what is wrong (``problem``), the object is kept."""
    attribute = pixel_bulk_data_of(metadata, transfer_syntax_uid)
    if attribute is None:
        return None
    raw: Any = ds.get_item(attribute.tag, keep_deferred=True)
    if raw is None or getattr(raw, "value_tell", None) is None:
        return None
    implicit, little = ds.original_encoding
    # Implicit VR: OW (PS3.5 A.1); a VR the reader could not settle ("OB or OW"): the derived one.
    vr = raw.VR if not implicit and raw.VR in _PIXEL_VRS else attribute.vr
    if implicit and attribute.tag == PIXEL_DATA:
        vr = "OW"
    length = None if raw.length == UNDEFINED_LENGTH else raw.length
    try:
        with open(path, "rb") as handle:
            value = PixelValue(
                attribute.tag,
                vr,
                raw.value_tell,
                length,
                bool(little),
                _int(ds, "NumberOfFrames") or 1,
                _extended_offsets(ds, cast(BinaryIO, handle)),
            )
            if length is not None and raw.value_tell + length > size:
                raise PixelDataUnreadable("The pixel data ends after the object.")
            return frame_layout(
                cast(BinaryIO, handle),
                value,
                transfer_syntax_uid=transfer_syntax_uid,
                frame_bits=native_frame_bits(metadata),
            )
    except (PixelDataUnreadable, *_PARSE_ERRORS) as exc:
        return FrameLayout(
            vr=vr,
            little_endian=bool(little),
            offset=raw.value_tell,
            length=length,
            frames=0,
            problem=str(exc)[:400],
        )
