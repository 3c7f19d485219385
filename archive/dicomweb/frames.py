"""WADO-RS frames (PS3.18 10.4, 8.7.3.5): frames of an image instance, each read from the object
store by one byte range, never by reading the object.

``/studies/{study}/series/{series}/instances/{instance}/frames/{list}``, ``list`` one or more
frame numbers (from 1), comma-separated, each at most once.

Where a frame lies comes from the index (``archive.models.FrameIndex``, computed at ingest by
``archive.ingest.dicom.frame_layout``): native pixel data, frame n starts (n - 1) frame sizes
into the value; encapsulated pixel data, the items of frame n span an object range the index
keeps (found from the Basic or Extended Offset Table, or from the fragments themselves when the
tables are empty). An instance stored before frame indexes existed gets its index on its first
frame request: its header is read, and for encapsulated pixel data without an offset table its
item headers (the object once), and the index is saved.

Media types (``archive.dicomweb.bulkdata.pixel_data_offer``): as stored (``transfer-syntax=*``,
each part typed by its transfer syntax), or uncompressed (``type="application/octet-stream"``
alone): native pixel data in little endian order, encapsulated pixel data decoded one frame at a
time by pydicom's pixel data handlers (pylibjpeg with libjpeg and openjpeg, pydicom's RLE),
colour frames as RGB. A syntax that cannot be decoded is a 406 naming it.

Reading follows the instance retrieve's rules (``archive.dicomweb.wado``): another
organization's UIDs answer 404, an archive-tier instance answers 503 with the restore, and every
request calls ``image_read_record`` once with the bytes sent (a viewer's reads of one series in
one minute share an access-log row). The bytes read from the object store
are sent in ``X-Strata-Store-Bytes`` and logged.

For other code (rendered images, thumbnails): ``frame_bytes`` and ``decoded_frame`` read one frame;
``FrameReader`` reads several of one instance with one reader. They do not check the tier or
record the access: the caller does (``require_readable``, ``image_read_record``).
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import numpy as np
from django.db.models import BinaryField
from django.db.models.functions import Substr
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from archive.dicomweb.bulkdata import (
    READ_CHUNK,
    ObjectReader,
    PixelOffer,
    object_errors,
    pixel_data_offer,
    pixel_data_response,
    transfer_syntax_name,
)
from archive.dicomweb.common import MULTIPART_RELATED, NotAcceptable
from archive.dicomweb.multipart import closing
from archive.dicomweb.transcode import decodable
from archive.dicomweb.wado import (
    RestorePending,
    StorageFailed,
    require_readable,
    restore_pending_response,
)
from archive.ingest.dicom import (
    BITS_ALLOCATED_KEY,
    COLUMNS_KEY,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    DOUBLE_FLOAT_PIXEL_DATA,
    EXPLICIT_VR_LITTLE_ENDIAN,
    FLOAT_PIXEL_DATA,
    NUMBER_OF_FRAMES_KEY,
    PHOTOMETRIC_INTERPRETATION_KEY,
    PIXEL_DATA,
    PIXEL_REPRESENTATION_KEY,
    ROWS_KEY,
    SAMPLES_PER_PIXEL_KEY,
    FrameLayout,
    PixelDataUnreadable,
    frame_data,
    frame_layout,
    is_encapsulated,
    native_frame_bits,
    pixel_bulk_data_of,
    pixel_data_locate,
    to_little_endian,
)
from archive.ingest.pipeline import frame_index_row
from archive.models import FrameIndex, Instance, Series, Study
from archive.storage import store_for
from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.models import Organization

logger = logging.getLogger(__name__)

# The most frames one request may name, and the longest list (a path segment) read at all.
MAX_FRAMES_PER_REQUEST = 10_000
MAX_FRAME_LIST_CHARS = 12 * MAX_FRAMES_PER_REQUEST
# Up to this many frames, their item ranges are read from the index row by substring (16 bytes
# each) rather than with the whole row (8 bytes per frame of the instance: 1 MiB for 130k tiles).
SUBSTRING_FRAMES = 64
# A frame is decoded in memory: refused beyond this many decoded bytes.
MAX_DECODED_FRAME_BYTES = 512 * 1024 * 1024
STORE_BYTES_HEADER = "X-Strata-Store-Bytes"
BITS_STORED_KEY = "00280101"
PLANAR_CONFIGURATION_KEY = "00280006"
_FRAME_NUMBER = re.compile(r"[0-9]{1,10}")
_PIXEL_KEYWORDS = {
    PIXEL_DATA: "PixelData",
    FLOAT_PIXEL_DATA: "FloatPixelData",
    DOUBLE_FLOAT_PIXEL_DATA: "DoubleFloatPixelData",
}


class InvalidFrameList(ServiceError):
    status = 400
    code = "invalid_frame_list"


class NoPixelData(ServiceError):
    """The instance has no pixel data that frames can be read from (not an image, deflated,
    pixels elsewhere, an incomplete Image Pixel module)."""

    status = 404
    code = "no_pixel_data"


class NotDecodable(NotAcceptable):
    """A frame cannot be decoded (no decoder for its transfer syntax, or the decoder failed)."""

    code = "not_decodable"


# --- what the index and the metadata say -------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """The frame numbers of a ``{list}`` path segment, in order; 400 naming what is wrong.

    Refused: an empty list or item, anything but decimal digits, 0 (frames count from 1), a
    number listed twice, more than ``MAX_FRAMES_PER_REQUEST`` numbers.
    """
    if len(text) > MAX_FRAME_LIST_CHARS:
        raise InvalidFrameList(
            f"The frame list is {len(text)} characters long; at most "
            f"{MAX_FRAMES_PER_REQUEST} frames can be asked for at once.",
            fields={"frames": ["Ask for fewer frames per request."]},
        )
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise InvalidFrameList(
            f"{len(items)} frames were asked for; at most {MAX_FRAMES_PER_REQUEST} at once.",
            fields={"frames": ["Ask for fewer frames per request."]},
        )
    numbers: list[int] = []
    seen: set[int] = set()
    for item in items:
        if not _FRAME_NUMBER.fullmatch(item):
            shown = item[:20].encode("unicode_escape").decode("ascii")
            raise InvalidFrameList(
                f"{shown!r} is not a frame number: the list is frame numbers (1, 2, ...) "
                "separated by commas.",
                fields={"frames": [f"{shown!r} is not a frame number."]},
            )
        number = int(item)
        if number == 0:
            raise InvalidFrameList(
                "Frame numbers start at 1; frame 0 does not exist.",
                fields={"frames": ["Frame numbers start at 1."]},
            )
        if number in seen:
            raise InvalidFrameList(
                f"Frame {number} is listed more than once; list each frame once.",
                fields={"frames": [f"Frame {number} is listed more than once."]},
            )
        seen.add(number)
        numbers.append(number)
    return numbers


@dataclass(frozen=True)
class PixelDescription:
    """The Image Pixel module of an instance (PS3.3 C.7.6.3), from its stored metadata."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int


def _value(metadata: dict[str, Any], key: str) -> Any:
    try:
        return metadata[key]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None


def _int_value(metadata: dict[str, Any], key: str, default: int = 0) -> int:
    try:
        return int(_value(metadata, key))
    except (TypeError, ValueError):
        return default


def pixel_description(instance: Instance) -> PixelDescription:
    """The instance's Image Pixel module; ``NoPixelData`` (404) with the reason when it has no
    pixel data frames can be read from. Reads no object storage."""
    metadata = instance.metadata or {}
    syntax = instance.transfer_syntax_uid
    uid = instance.sop_instance_uid
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        raise NoPixelData(
            f"Instance {uid} is stored deflated ({syntax}): its frames cannot be read by range; "
            "retrieve the instance.",
        )
    if pixel_bulk_data_of(metadata, syntax) is None:
        raise NoPixelData(
            f"Instance {uid} (SOP class {instance.sop_class_uid}) has no pixel data: it is not "
            "an image, so it has no frames.",
        )
    description = PixelDescription(
        rows=_int_value(metadata, ROWS_KEY),
        columns=_int_value(metadata, COLUMNS_KEY),
        samples_per_pixel=_int_value(metadata, SAMPLES_PER_PIXEL_KEY, 1),
        bits_allocated=_int_value(metadata, BITS_ALLOCATED_KEY),
        bits_stored=_int_value(metadata, BITS_STORED_KEY)
        or _int_value(metadata, BITS_ALLOCATED_KEY),
        pixel_representation=_int_value(metadata, PIXEL_REPRESENTATION_KEY),
        photometric_interpretation=str(_value(metadata, PHOTOMETRIC_INTERPRETATION_KEY) or ""),
        planar_configuration=_int_value(metadata, PLANAR_CONFIGURATION_KEY),
        number_of_frames=_int_value(metadata, NUMBER_OF_FRAMES_KEY, 1) or 1,
    )
    if min(description.rows, description.columns, description.bits_allocated) <= 0:
        raise NoPixelData(
            f"The Image Pixel module of instance {uid} is incomplete (Rows, Columns, Bits "
            "Allocated): its frames cannot be told apart.",
        )
    return description


def _index_of(instance: Instance) -> FrameIndex | None:
    """The instance's frame index without its boundaries (read per frame when needed): the one
    loaded with the instance (``instance_by_uids``), else from the index."""
    if Instance.frame_index.is_cached(instance):
        try:
            return instance.frame_index
        except FrameIndex.DoesNotExist:
            return None
    return (
        FrameIndex.objects.for_org(instance.organization_id)
        .filter(instance=instance)
        .defer("boundaries")
        .first()
    )


def _require_frames(instance: Instance, index: FrameIndex, numbers: list[int]) -> None:
    if index.problem:
        raise StorageFailed(
            f"The frames of instance {instance.sop_instance_uid} cannot be told apart: "
            f"{index.problem}",
            code="object_unreadable",
        )
    beyond = [n for n in numbers if n > index.frames]
    if beyond:
        raise InvalidFrameList(
            f"Instance {instance.sop_instance_uid} has {index.frames} frame(s); frame "
            f"{beyond[0]} does not exist.",
            fields={"frames": [f"Frame numbers go from 1 to {index.frames}."]},
        )


# --- reading frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedFrame:
    """A frame's pixels: (rows, columns) or (rows, columns, samples) in the dtype pydicom gives
    for the bits allocated and pixel representation; colour frames decoded from YCbCr are RGB
    (``photometric_interpretation`` says what the pixels are now)."""

    pixels: np.ndarray[Any, Any]
    photometric_interpretation: str
    description: PixelDescription


class FrameReader:
    """Reads frames of one instance from its stored object, one byte range per frame; counts the
    bytes the store sends (``store_bytes``). Computes and saves the frame index of an instance
    stored before frame indexes existed. Close it (or use it as a context manager).

    Precondition: the instance is readable (``require_readable``) and scoped to the caller's
    organization. Raises ``NoPixelData``, ``InvalidFrameList`` (a frame beyond the last),
    ``StorageFailed`` (store unreachable, object unreadable), ``NotDecodable``.
    """

    def __init__(self, instance: Instance, index: FrameIndex | None = None):
        self.instance = instance
        self.description = pixel_description(instance)
        self.transfer_syntax_uid = instance.transfer_syntax_uid
        self.reader = ObjectReader(
            store_for(instance.location),
            key=instance.object_key,
            tier=instance.tier,
            size=instance.size_bytes,
        )
        self._index = index
        self._frame_bits = native_frame_bits(instance.metadata or {})
        self._ranges: dict[int, tuple[int, int]] = {}

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()

    @property
    def store_bytes(self) -> int:
        return self.reader.bytes_read

    @property
    def index(self) -> FrameIndex:
        """The frame index, computed from the object and saved when the index has none."""
        if self._index is None:
            self._index = _index_of(self.instance) or self._index_compute()
        return self._index

    @property
    def frames(self) -> int:
        return self.index.frames

    def _index_compute(self) -> FrameIndex:
        """Read the object's header (and item headers) once and keep what they say."""
        instance = self.instance
        fileobj = cast(BinaryIO, self.reader)
        with object_errors(self.reader, instance=instance):
            value = pixel_data_locate(fileobj, size=instance.size_bytes)
            if value is None:
                raise NoPixelData(
                    f"The stored object of instance {instance.sop_instance_uid} has no pixel data.",
                )
            try:
                layout = frame_layout(
                    fileobj,
                    value,
                    transfer_syntax_uid=self.transfer_syntax_uid,
                    frame_bits=self._frame_bits,
                )
            except PixelDataUnreadable as exc:
                # Kept with the reason, so that the object is not read again for the same answer.
                layout = FrameLayout(
                    value.vr,
                    value.little_endian,
                    value.offset,
                    value.length,
                    0,
                    b"",
                    str(exc)[:400],
                )
        row = frame_index_row(instance.organization_id, instance.pk, layout)
        # Two first requests at once compute the same row: the second insert changes nothing.
        FrameIndex.objects.bulk_create([row], ignore_conflicts=True)
        logger.info(
            "frames: indexed instance %s of org %s: %d frame(s), %d bytes read",
            instance.pk,
            instance.organization_id,
            layout.frames,
            self.reader.bytes_read,
        )
        return row

    def prepare(self, numbers: list[int]) -> int:
        """Check that the frames exist and find their byte ranges; the bytes they take in the
        store (what reading them will read)."""
        index = self.index
        _require_frames(self.instance, index, numbers)
        if index.length is None:
            self._ranges.update(self._item_ranges([n for n in numbers if n not in self._ranges]))
            return sum(self._ranges[n][1] for n in numbers)
        return sum(self._native_range(n)[1] for n in numbers)

    def _item_ranges(self, numbers: list[int]) -> dict[int, tuple[int, int]]:
        """(offset, length) of the items of each frame (encapsulated), from the index."""
        if not numbers:
            return {}
        index = self.index
        blob: bytes
        if "boundaries" not in index.get_deferred_fields():
            blob = bytes(index.boundaries)
        elif len(numbers) <= SUBSTRING_FRAMES:
            pieces = {
                f"frame_{n}": Substr("boundaries", 8 * (n - 1) + 1, 16, output_field=BinaryField())
                for n in numbers
            }
            row = FrameIndex.objects.filter(pk=index.pk).annotate(**pieces).values(*pieces).get()
            return {n: _range_of(bytes(row[f"frame_{n}"]), 0) for n in numbers}
        else:
            blob = bytes(
                FrameIndex.objects.filter(pk=index.pk).values_list("boundaries", flat=True).get()
            )
            index.boundaries = blob
        return {n: _range_of(blob, 8 * (n - 1)) for n in numbers}

    def _native_range(self, number: int) -> tuple[int, int]:
        """(offset, length) of the bytes that hold native frame ``number``."""
        bits = self._frame_bits
        if bits is None:
            raise NoPixelData(
                f"The Image Pixel module of instance {self.instance.sop_instance_uid} is "
                "incomplete: its frames cannot be told apart.",
            )
        first_bit = (number - 1) * bits
        start = first_bit // 8
        end = -(-(first_bit + bits) // 8)
        return self.index.offset + start, end - start

    def sent_size(self, number: int, offer: PixelOffer) -> int | None:
        """The bytes frame ``number`` takes in the response when known before reading it:
        native pixel data (as stored or asked uncompressed); None for encapsulated frames (their
        fragments' item headers are not counted in the index) and decoded ones."""
        if self.index.length is None or (
            offer.decode and is_encapsulated(self.transfer_syntax_uid)
        ):
            return None
        bits = self._frame_bits
        return None if bits is None else -(-bits // 8)

    def stored_chunks(self, number: int) -> Iterator[bytes]:
        """Frame ``number`` as stored, in pieces: native pixel data in little endian byte order
        (Explicit VR Little Endian), encapsulated pixel data its fragments' data. Call
        ``prepare`` first."""
        index = self.index
        if index.length is None:
            start, length = self._ranges[number]
            self.reader.request_until(start + length)
            yield from frame_data(
                cast(BinaryIO, self.reader), start=start, end=start + length, chunk_size=READ_CHUNK
            )
            return
        start, length = self._native_range(number)
        self.reader.request_until(start + length)
        chunks = self.reader.iter_range(start, length, chunk_size=READ_CHUNK)
        bits = self._frame_bits or 0
        if bits % 8:
            # Bit-packed (Bits Allocated 1): the frame does not start on a byte; move it there.
            first = (number - 1) * bits % 8
            packed = np.frombuffer(b"".join(chunks), dtype=np.uint8)
            unpacked = np.unpackbits(packed, bitorder="little")[first : first + bits]
            yield np.packbits(unpacked, bitorder="little").tobytes()
            return
        allocated = self.description.bits_allocated
        word = allocated // 8 if allocated in (16, 32, 64) else 1
        yield from to_little_endian(chunks, vr=index.vr, little=index.little_endian, word=word)

    def stored(self, number: int) -> bytes:
        """Frame ``number`` as stored (see ``stored_chunks``), whole."""
        self.prepare([number])
        with object_errors(self.reader, instance=self.instance):
            return b"".join(self.stored_chunks(number))

    def decoded(self, number: int) -> DecodedFrame:
        """Frame ``number`` decoded (one frame in memory at a time)."""
        d = self.description
        size = d.rows * d.columns * d.samples_per_pixel * max(d.bits_allocated, 8) // 8
        syntax = self.transfer_syntax_uid
        native = not is_encapsulated(syntax)
        if size > MAX_DECODED_FRAME_BYTES:
            raise NotDecodable(
                f"A frame of instance {self.instance.sop_instance_uid} is {size} bytes decoded; "
                f"at most {MAX_DECODED_FRAME_BYTES} are decoded here. Ask for it as stored "
                "(transfer-syntax=*).",
            )
        if not decodable(syntax):
            raise NotDecodable(_cannot_decode(syntax))
        data = self.stored(number)
        decoder = get_decoder(UID(EXPLICIT_VR_LITTLE_ENDIAN if native else syntax))
        options: dict[str, Any] = {
            "rows": d.rows,
            "columns": d.columns,
            "samples_per_pixel": d.samples_per_pixel,
            "bits_allocated": d.bits_allocated,
            "bits_stored": d.bits_stored,
            "pixel_representation": d.pixel_representation,
            "photometric_interpretation": d.photometric_interpretation,
            "number_of_frames": 1,
        }
        if d.samples_per_pixel > 1:
            options["planar_configuration"] = d.planar_configuration
        if native:
            attribute = pixel_bulk_data_of(self.instance.metadata or {}, syntax)
            options["pixel_keyword"] = _PIXEL_KEYWORDS[attribute.tag if attribute else PIXEL_DATA]
        try:
            pixels, properties = decoder.as_array(
                data if native else encapsulate([data]), index=0, **options
            )
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the object's, named
            logger.info(
                "frames: instance %s frame %d not decoded: %s", self.instance.pk, number, exc
            )
            raise NotDecodable(
                f"Frame {number} of instance {self.instance.sop_instance_uid} cannot be decoded "
                f"from {transfer_syntax_name(syntax)}: {str(exc).splitlines()[0][:300]}",
                fields={"Accept": ["transfer-syntax=*"]},
            ) from None
        photometric = str(
            properties.get("photometric_interpretation", d.photometric_interpretation)
        )
        return DecodedFrame(pixels, photometric, d)


def _range_of(blob: bytes, at: int) -> tuple[int, int]:
    try:
        start, end = struct.unpack_from("<QQ", blob, at)
    except struct.error:
        raise StorageFailed(
            "The frame index is shorter than its number of frames.", code="object_unreadable"
        ) from None
    return start, end - start


def _cannot_decode(syntax: str) -> str:
    return (
        f"Frames stored in {transfer_syntax_name(syntax)} cannot be decoded here; ask for them "
        "as stored (transfer-syntax=*)."
    )


def frame_bytes(instance: Instance, number: int) -> tuple[bytes, str]:
    """Frame ``number`` (from 1) of ``instance`` as stored, read by one byte range, and its
    transfer syntax: native pixel data in little endian order (Explicit VR Little Endian),
    encapsulated pixel data the frame's fragments' data in the stored transfer syntax.
    Preconditions and errors: ``FrameReader``."""
    with FrameReader(instance) as reader:
        data = reader.stored(number)
    syntax = instance.transfer_syntax_uid
    return data, syntax if is_encapsulated(syntax) else EXPLICIT_VR_LITTLE_ENDIAN


def decoded_frame(instance: Instance, number: int) -> DecodedFrame:
    """Frame ``number`` (from 1) of ``instance`` decoded to pixels (``DecodedFrame``), read by
    one byte range. Preconditions and errors: ``FrameReader``."""
    with FrameReader(instance) as reader:
        return reader.decoded(number)


# --- the WADO-RS resource ------------------------------------------------------------------------


def _decoded_bytes(frame: DecodedFrame) -> bytes:
    """A decoded frame as Explicit VR Little Endian pixel data (samples interleaved)."""
    pixels = frame.pixels
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def _pieces(frames: FrameReader, numbers: list[int], offer: PixelOffer) -> Iterator[bytes | None]:
    for number in numbers:
        if offer.decode:
            data = _decoded_bytes(frames.decoded(number))
            yield None
            yield data
            continue
        yield None
        yield from frames.stored_chunks(number)


def frames_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series,
    instance: Instance,
    frame_list: str,
) -> HttpResponseBase:
    """The multipart response with the frames ``frame_list`` names of ``instance`` (already
    scoped to ``org``)."""
    numbers = parse_frame_list(frame_list)
    pixel_description(instance)
    offer = pixel_data_offer(
        request,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        decodable=decodable(instance.transfer_syntax_uid),
        resource="frames",
    )
    index = _index_of(instance)
    if index is not None:
        # Before a restore is started for a frame that does not exist.
        _require_frames(instance, index, numbers)
    try:
        require_readable(request=request, org=org, actor=actor, instances=[instance])
    except RestorePending as exc:
        return restore_pending_response(exc)
    frames = FrameReader(instance, index)
    try:
        # What the frames take in the store, plus what computing a missing index read.
        frame_store_bytes = frames.prepare(numbers)
        store_bytes = frames.store_bytes + frame_store_bytes
    except BaseException:
        frames.close()
        raise
    boundary = uuid.uuid4().hex
    content_type = f'{MULTIPART_RELATED}; type="{offer.media_type}"; boundary={boundary}'
    if request.method == "HEAD":
        frames.close()
        head = HttpResponse(content_type=content_type)
        head[STORE_BYTES_HEADER] = "0"
        return head
    opening = f"--{boundary}\r\nContent-Type: {offer.part_type}\r\n\r\n".encode("latin-1")

    def logged(sent_bytes: int) -> None:
        logger.info(
            "frames: org %s instance %s: %d frame(s), %d bytes sent, %d bytes read from the store",
            org.pk,
            instance.pk,
            len(numbers),
            sent_bytes,
            frames.store_bytes,
        )

    try:
        response = pixel_data_response(
            _pieces(frames, numbers, offer),
            opening=opening,
            boundary=boundary,
            reader=frames.reader,
            content_type=content_type,
            org=org,
            actor=actor,
            study=study,
            series=series,
            instance=instance,
            on_recorded=logged,
        )
    except NotDecodable as exc:
        # Found when the first frame is decoded: say what was asked, and what can be sent.
        raise NotDecodable(
            f"Not acceptable: asked {request.headers.get('Accept', '')!r}; {exc.message} "
            f"Can serve: the frames as stored ({transfer_syntax_name(instance.transfer_syntax_uid)}"
            "), with transfer-syntax=*.",
            fields={"Accept": ["transfer-syntax=*"]},
        ) from None
    response[STORE_BYTES_HEADER] = str(store_bytes)
    sizes = [frames.sent_size(n, offer) for n in numbers]
    if None not in sizes:
        # Parts after the first open with CRLF; the body ends with CRLF and the close delimiter.
        framing = len(numbers) * len(opening) + 2 * len(numbers) + len(closing(boundary))
        response["Content-Length"] = str(framing + sum(cast(list[int], sizes)))
    return response
