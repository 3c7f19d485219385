"""Whole instances in another transfer syntax (PS3.18 8.7.3): what the WADO-RS retrieve
(``archive.dicomweb.wado``) sends when a client asks for Explicit (or Implicit) VR Little Endian
and an instance is stored in another syntax.

pydicom reads the stored object, decodes compressed pixel data with its pixel data handlers
(pylibjpeg with libjpeg and openjpeg: JPEG, JPEG-LS, JPEG 2000, HTJ2K; RLE by pydicom itself),
swaps the words of a big endian object's binary values (``archive.ingest.dicom.to_little_endian``,
as bulk data and frames do), inflates a deflated one, and writes the data set uncompressed with
the same SOP Instance UID and File Meta Information (its transfer syntax changed). Colour pixel
data decoded from YBR is RGB, as decoded frames are. Nothing is ever compressed.

A transcoded instance is built in memory, so only instances whose decoded pixel data and stored
object both fit in ``settings.WADO_TRANSCODE_MAX_BYTES`` are transcoded: ``transcode_refusal``
says why not from the index alone, before anything is read. The peak is about three times that
per request (the stored bytes, the decoded pixels, the instance written).

``decodable`` (whether pixel data stored in a syntax can be decoded here) serves frames and
rendered images too.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from functools import lru_cache
from typing import Any

import pydicom
from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from archive.dicomweb.common import NotAcceptable, transfer_syntax_name
from archive.ingest.dicom import (
    BITS_ALLOCATED_KEY,
    COLUMNS_KEY,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NUMBER_OF_FRAMES_KEY,
    ROWS_KEY,
    SAMPLES_PER_PIXEL_KEY,
    is_encapsulated,
    to_little_endian,
)
from archive.models import Instance

logger = logging.getLogger(__name__)

# The syntaxes an instance is transcoded to (both uncompressed: decoding is all it takes).
TRANSCODE_TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Bytes per word of the binary VRs whose values pydicom keeps as bytes (PS3.5 6.2).
_WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
# The VRs of File Meta Information elements with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


class NotTranscodable(NotAcceptable):
    """A stored instance could not be decoded (the decoder failed on its pixel data, or the
    object cannot be parsed): a 406 naming its stored syntax, never a 500."""

    code = "not_decodable"


@lru_cache(maxsize=128)
def decodable(transfer_syntax_uid: str) -> bool:
    """Whether pixel data stored in this transfer syntax can be decoded here (native:
    trivially). The installed decoders do not change while the process runs."""
    if not is_encapsulated(transfer_syntax_uid):
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def stored_syntax(instance: Instance) -> str:
    """The instance's transfer syntax; an object without one was read as Implicit VR Little
    Endian (PS3.10 7.1 makes the syntax mandatory; the index keeps what the object said)."""
    return instance.transfer_syntax_uid or IMPLICIT_VR_LITTLE_ENDIAN


def _first_int(metadata: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(metadata[key]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return default


def decoded_bytes(metadata: dict[str, Any]) -> int:
    """Bytes of the instance's pixel data decoded, from the Image Pixel module in its stored
    DICOM JSON (rows x columns x samples x bytes per sample x frames; 0 without pixels)."""
    rows = _first_int(metadata, ROWS_KEY, 0)
    columns = _first_int(metadata, COLUMNS_KEY, 0)
    samples = _first_int(metadata, SAMPLES_PER_PIXEL_KEY, 1)
    bits = _first_int(metadata, BITS_ALLOCATED_KEY, 8)
    frames = _first_int(metadata, NUMBER_OF_FRAMES_KEY, 1)
    if min(rows, columns, samples, bits, frames) <= 0:
        return 0
    return rows * columns * samples * -(-bits // 8) * frames


def transcode_limit() -> int:
    return int(settings.WADO_TRANSCODE_MAX_BYTES)


def transcode_refusal(instance: Instance, target: str) -> str | None:
    """Why ``instance`` cannot be sent in ``target``; None when it can (as stored when it is
    stored in ``target``, else transcoded). Reads the index only."""
    stored = stored_syntax(instance)
    if stored == target:
        return None
    if target not in TRANSCODE_TARGETS:
        return (
            f"instances are transcoded to {_names(TRANSCODE_TARGETS)} only, never to "
            f"{transfer_syntax_name(target)}"
        )
    if not decodable(stored):
        return (
            f"instance {instance.sop_instance_uid} is stored in {transfer_syntax_name(stored)}, "
            "which cannot be decoded here"
        )
    needed = max(decoded_bytes(instance.metadata or {}), instance.size_bytes)
    limit = transcode_limit()
    if needed > limit:
        return (
            f"instance {instance.sop_instance_uid} (stored in {transfer_syntax_name(stored)}) "
            f"takes {needed:,} bytes decoded, more than the {limit:,} bytes an instance may take "
            "to be transcoded in memory (WADO_TRANSCODE_MAX_BYTES)"
        )
    return None


def _names(uids: tuple[str, ...]) -> str:
    return " and ".join(transfer_syntax_name(uid) for uid in uids)


def _file_meta_end(data: bytes) -> int | None:
    """Where the data set starts in a Part 10 object (after the preamble, ``DICM`` and the File
    Meta Information, which is always explicit VR little endian); None when it cannot tell."""
    position = 132
    if data[128:132] != b"DICM":
        return None
    while position + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            return position
        vr = data[position + 4 : position + 6]
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<L", data, position + 8)
            position += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            position += 8 + length
    return None


def _require_inflates_within(data: bytes, limit: int) -> None:
    """A deflated data set inflates to at most ``limit`` bytes (pydicom inflates it whole)."""
    start = _file_meta_end(data)
    if start is None:
        raise ValueError("the File Meta Information cannot be read")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    if len(inflater.decompress(data[start:], limit + 1)) > limit:
        raise ValueError(f"the deflated data set inflates to more than {limit:,} bytes")


def _swap_words(ds: Dataset, *, top: bool = True) -> None:
    """A data set read as big endian: the binary values pydicom keeps as bytes (OW, OF, OL, OD,
    OV) in little endian order, items included; pydicom encodes the other values itself. The
    pixel data's words are its samples (Bits Allocated 16, 32 or 64)."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value or ():
                _swap_words(item, top=False)
            continue
        word = _WORD_BYTES.get(str(element.VR))
        if word is None or not isinstance(element.value, bytes):
            continue
        if top and element.tag == _PIXEL_DATA and ds.get("BitsAllocated") in (16, 32, 64):
            word = int(ds.BitsAllocated) // 8
        chunks = to_little_endian([element.value], vr=str(element.VR), little=False, word=word)
        element.value = b"".join(chunks)


def transcode(data: bytes, *, target: str, instance: Instance) -> bytes:
    """The Part 10 object ``data`` (``instance``'s stored bytes) written in ``target`` (one of
    ``TRANSCODE_TARGETS``), its pixel data decoded. ``NotTranscodable`` (406) naming the stored
    syntax when it cannot be decoded.

    Precondition: ``transcode_refusal(instance, target)`` is None (the size fits in memory).
    """
    stored = stored_syntax(instance)
    try:
        if stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            _require_inflates_within(data, transcode_limit())
        ds = pydicom.dcmread(io.BytesIO(data))
        if is_encapsulated(stored) and "PixelData" in ds:
            # The same instance decoded: its UID stays (a lossy source keeps its Lossy Image
            # Compression attributes).
            ds.decompress(generate_instance_uid=False)
        elif stored == EXPLICIT_VR_BIG_ENDIAN:
            _swap_words(ds)
        ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        # dcmwrite, not save_as: save_as refuses to turn a big endian data set little endian.
        dcmwrite(
            out,
            ds,
            implicit_vr=target == IMPLICIT_VR_LITTLE_ENDIAN,
            little_endian=True,
            enforce_file_format=True,
        )
    except Exception as exc:  # noqa: BLE001 - any decoder or parser failure is the object's
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        logger.info(
            "wado: instance %s not transcoded from %s to %s: %s",
            instance.pk,
            stored,
            target,
            reason,
        )
        raise NotTranscodable(
            f"Instance {instance.sop_instance_uid} is stored in {transfer_syntax_name(stored)} "
            f"and cannot be decoded to {transfer_syntax_name(target)}: {reason}. "
            "transfer-syntax=* sends the stored bytes.",
            fields={"Accept": ["transfer-syntax=*"]},
        ) from None
    return out.getvalue()
