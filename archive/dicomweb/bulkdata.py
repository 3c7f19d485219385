"""WADO-RS bulk data (PS3.18 10.4, 8.7.3.3.2): the pixel data of one instance, by the
BulkDataURI its metadata gives.

``/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}`` with ``tag`` one of
``7FE00010`` (Pixel Data), ``7FE00008`` (Float Pixel Data), ``7FE00009`` (Double Float Pixel
Data), 8 hex digits in either case; the resource exists exactly when the instance's metadata
names it (``archive.ingest.dicom.pixel_bulk_data``).

- Native pixel data: one part, ``application/octet-stream``, the value's bytes in little endian
  order (a big endian object's words are swapped on the way).
- Encapsulated pixel data: one part per frame in the transfer syntax's media type (``image/jpeg``,
  ``image/jls``, ``image/jp2``, ...; video as one part), or ``application/octet-stream;
  transfer-syntax=<uid>`` when the client asks ``type="application/octet-stream";
  transfer-syntax=*``; each frame the data of its fragments, as stored. No transcoding here, so
  ``type="application/octet-stream"`` alone (uncompressed) is not acceptable: decoded frames
  come from ``.../frames/{list}`` (``archive.dicomweb.frames``). Negotiation for both:
  ``pixel_data_offer``.

The value is found by reading the object's header only (``archive.ingest.dicom.pixel_data_locate``)
through ``ObjectReader``, then streamed from the same read: constant memory, usually one request
to the object store. Reading follows the instance retrieve's rules (``archive.dicomweb.wado``):
archive-tier instances answer 503 with the restore, and every read calls
``image_read_record`` once with the bytes sent (a viewer's reads of one series in one minute
share an access-log row).
"""

from __future__ import annotations

import io
import itertools
import logging
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, cast

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from archive.dicomweb.common import (
    MULTIPART_RELATED,
    NotAcceptable,
    accepted_ranges,
    base_url,
    transfer_syntax_name,
)
from archive.dicomweb.multipart import closing, part_header
from archive.dicomweb.wado import (
    RestorePending,
    StorageFailed,
    bulkdata_url,
    require_readable,
    restore_pending_response,
)
from archive.index.services import image_read_record
from archive.ingest.dicom import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    PixelAttribute,
    PixelDataUnreadable,
    encapsulated_frames,
    is_encapsulated,
    pixel_bulk_data_of,
    pixel_data_locate,
    to_little_endian,
)
from archive.models import AccessEvent, Instance, Series, Study
from archive.storage import ObjectStore, StorageUnavailable, store_for
from archive.storage.base import CHUNK
from tenants.context import Actor
from tenants.errors import NotFound
from tenants.models import Organization

logger = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
# PS3.18 Table 8.7.3-4 / -5: the media type of each encapsulated transfer syntax's frames.
MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
# The reader's requests: chunks of this size; a skip forward up to SKIP_LIMIT reads through the
# open response rather than starting a new one.
READ_CHUNK = 256 * 1024
SKIP_LIMIT = CHUNK


class ObjectReader(io.RawIOBase):
    """A read-only, seekable file over one stored object, to parse its header where it lies.

    Reads come from one open ranged read of the store (``iter_bytes(offset=...)``): reading on
    continues it, a skip forward of up to ``SKIP_LIMIT`` reads through it, any other seek opens a
    new one at the new position. A header is so read with one request when the pixel data follows
    it, and a large value before the pixel data (an overlay, an ICC profile) is skipped by a new
    request instead of being transferred. Memory: one chunk. ``read()`` without a size (the whole
    rest of the object) is refused.

    ``request_until(end)``: the requests opened from then on ask for the bytes up to ``end`` only
    (one frame) rather than for the rest of the object. ``bytes_read``: what the store sent.
    """

    def __init__(self, store: ObjectStore, *, key: str, tier: str, size: int):
        super().__init__()
        self._store = store
        self._key = key
        self._tier = tier
        self.size = size
        self.bytes_read = 0
        self._pos = 0
        self._chunk = b""
        self._chunk_start = 0
        self._stream: Iterator[bytes] | None = None
        self._request_end: int | None = None
        self._stream_end: int | None = None

    def request_until(self, end: int | None) -> None:
        """Requests opened from now on end at ``end`` (exclusive); None: at the object's end."""
        self._request_end = end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self.size
        elif whence != io.SEEK_SET:
            raise ValueError(f"Invalid whence {whence}.")
        if offset < 0:
            raise ValueError("Negative seek position.")
        self._pos = offset
        return offset

    def readall(self) -> bytes:
        raise ValueError("A stored object is read in bounded pieces, never whole.")

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self.size:
            piece = self._take(len(view) - filled)
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
            self._pos += len(piece)
        return filled

    def iter_range(self, offset: int, length: int, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """``length`` bytes from ``offset`` on in chunks of at most ``chunk_size``, continuing
        the open read when it is there already (the pixel data right after the header)."""
        self.seek(offset)
        remaining = length
        while remaining > 0:
            piece = self._take(min(remaining, chunk_size))
            self._pos += len(piece)
            remaining -= len(piece)
            yield piece

    def close(self) -> None:
        self._close_stream()
        super().close()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()

    def _take(self, size: int) -> bytes:
        """Up to ``size`` bytes at the current position (at least one)."""
        if self._pos >= self.size:
            raise StorageUnavailable(f"Read past the end of {self._key} ({self.size} bytes).")
        end = self._chunk_start + len(self._chunk)
        if not self._chunk_start <= self._pos < end:
            self._advance()
        start = self._pos - self._chunk_start
        return self._chunk[start : start + size]

    def _advance(self) -> None:
        """Make the current chunk hold the current position."""
        end = self._chunk_start + len(self._chunk)
        if (
            self._stream is None
            or self._pos < end
            or self._pos - end > SKIP_LIMIT
            or (self._stream_end is not None and self._pos >= self._stream_end)
        ):
            self._close_stream()
            length = None
            if self._request_end is not None and self._request_end > self._pos:
                length = min(self._request_end, self.size) - self._pos
            self._stream = self._store.iter_bytes(
                key=self._key,
                tier=self._tier,
                chunk_size=READ_CHUNK,
                offset=self._pos,
                length=length,
            )
            self._stream_end = None if length is None else self._pos + length
            self._chunk_start, self._chunk = self._pos, b""
            end = self._pos
        while self._pos >= end:
            chunk = next(self._stream, b"")
            if not chunk:
                raise StorageUnavailable(
                    f"{self._key} ended at byte {end}; the index says {self.size} bytes."
                )
            self.bytes_read += len(chunk)
            self._chunk_start, self._chunk = end, chunk
            end += len(chunk)


# Media types some clients send for a transfer syntax besides the one PS3.18 names.
_MEDIA_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


@dataclass(frozen=True)
class PixelOffer:
    """How pixel data (bulk data, frames) is sent: the multipart's ``type`` and each part's
    Content-Type; ``decode``: encapsulated pixel data decoded to Explicit VR Little Endian."""

    media_type: str
    part_type: str
    decode: bool = False


def _type_matches(wanted: str, media_type: str) -> bool:
    wanted = _MEDIA_ALIASES.get(wanted, wanted)
    if wanted == "*/*":
        return True
    if wanted.endswith("/*"):
        return media_type.lower().split("/")[0] == wanted[:-2]
    return wanted == media_type.lower()


def pixel_data_offer(
    request: HttpRequest, *, transfer_syntax_uid: str, decodable: bool, resource: str
) -> PixelOffer:
    """What the Accept header asks for pixel data stored in ``transfer_syntax_uid`` (PS3.18
    8.7.3.5, 8.7.5), the most preferred acceptable range first; else 406 naming what was asked
    and what can be sent.

    - ``*/*``, ``multipart/*``, ``multipart/related`` alone or with ``type`` ``*/*``, the stored
      media type (``image/jpeg``, ...) or its family (``image/*``), and ``transfer-syntax``
      absent, ``*`` or the stored one: as stored, each part typed by the transfer syntax's media
      type (PS3.18 Table 8.7.3-5), ``application/octet-stream`` for native pixel data.
    - ``type="application/octet-stream"`` (quoted or not) with ``transfer-syntax=*`` or the
      stored one: as stored, each part ``application/octet-stream; transfer-syntax=<stored>``.
    - ``type="application/octet-stream"`` without a transfer syntax, or with Explicit VR Little
      Endian: uncompressed (PS3.18 8.7.3.5.2): native pixel data as it is (little endian),
      encapsulated pixel data decoded when ``decodable``.
    Nothing is transcoded to another compressed syntax.
    """
    native = not is_encapsulated(transfer_syntax_uid)
    stored_syntax = EXPLICIT_VR_LITTLE_ENDIAN if native else transfer_syntax_uid
    stored_media = OCTET_STREAM if native else MEDIA_TYPES.get(transfer_syntax_uid, OCTET_STREAM)
    uncompressed = PixelOffer(OCTET_STREAM, OCTET_STREAM, decode=not native)
    if native:
        as_stored = octet_as_stored = uncompressed
    else:
        as_stored = PixelOffer(stored_media, f"{stored_media}; transfer-syntax={stored_syntax}")
        octet_as_stored = PixelOffer(
            OCTET_STREAM, f"{OCTET_STREAM}; transfer-syntax={stored_syntax}"
        )
    ranges = sorted(accepted_ranges(request), key=lambda media: -media.q)
    for media in ranges:
        if media.media_type in ("*/*", "multipart/*"):
            return as_stored
        if media.media_type != MULTIPART_RELATED:
            continue
        wanted = media.params.get("type", "*/*").lower()
        syntax = media.params.get("transfer-syntax")
        if wanted in (OCTET_STREAM, "application/*"):
            if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) and (native or decodable):
                return uncompressed
            if syntax in ("*", stored_syntax):
                return octet_as_stored
            continue
        if _type_matches(wanted, stored_media):
            if syntax in (None, "*", stored_syntax):
                return as_stored
            if syntax == EXPLICIT_VR_LITTLE_ENDIAN and wanted == "*/*" and decodable:
                return uncompressed
    offers = [f'{MULTIPART_RELATED}; type="{stored_media}"']
    if not native:
        offers[0] += f"; transfer-syntax={stored_syntax} (as stored)"
        offers.append(f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"; transfer-syntax=*')
        if decodable:
            offers.append(
                f'{MULTIPART_RELATED}; type="{OCTET_STREAM}" (decoded to Explicit VR Little Endian)'
            )
    refused = (
        ""
        if native or decodable
        else f" It is not decoded: {transfer_syntax_name(stored_syntax)} cannot be decoded here."
    )
    raise NotAcceptable(
        f"The {resource} of this instance, stored in {transfer_syntax_name(stored_syntax)}, can "
        f"be sent as {' or '.join(offers)}; the request accepts "
        f"{request.headers.get('Accept', '')!r}.{refused}",
        fields={"Accept": offers},
    )


def _attribute_requested(instance: Instance, tag: str) -> PixelAttribute:
    """The attribute ``tag`` names, if the instance's metadata offers it as bulk data; else 404."""
    attribute = pixel_bulk_data_of(instance.metadata or {}, instance.transfer_syntax_uid)
    if attribute is None or tag.upper() != attribute.key:
        offered = f"; its pixel data is bulkdata/{attribute.key}" if attribute else ""
        raise NotFound(
            f"Instance {instance.sop_instance_uid} has no bulk data {tag[:16]!r}{offered}.",
            code="bulkdata_not_found",
        )
    return attribute


class BulkDataStream:
    """The multipart body as an iterable; ``on_done(bytes, complete)`` runs exactly once.

    ``pieces`` yields ``None`` to open a part (``opening``: its delimiter and headers) and the
    part's bytes after it. ``on_done`` runs after the last byte and before the closing
    delimiter, so a client with the whole response also sees the access recorded; on an abort it
    runs with what was sent, and ``close()`` covers a response the server never iterated.
    """

    def __init__(
        self,
        pieces: Iterator[bytes | None],
        *,
        opening: bytes,
        boundary: str,
        reader: ObjectReader,
        on_done: Callable[[int, bool], None],
    ):
        self._pieces = pieces
        self._opening = opening
        self._boundary = boundary
        self._reader = reader
        self._on_done = on_done
        self._done = False
        self._sent = 0
        self._generator: Generator[bytes, None, None] = self._generate()

    def _finish(self, complete: bool) -> None:
        if not self._done:
            self._done = True
            self._on_done(self._sent, complete)

    def _generate(self) -> Generator[bytes, None, None]:
        try:
            parts = 0
            for piece in self._pieces:
                if piece is None:
                    yield (b"\r\n" if parts else b"") + self._opening
                    parts += 1
                    continue
                self._sent += len(piece)
                yield piece
            self._finish(True)
            yield (b"\r\n" if parts else b"") + closing(self._boundary)
        except (StorageUnavailable, PixelDataUnreadable) as exc:
            # Headers are out: all that is left is to cut the response short.
            logger.warning("bulkdata: read failed mid-response: %s", exc)
            raise
        finally:
            self._finish(False)
            self._reader.close()

    def __iter__(self) -> Iterator[bytes]:
        return self._generator

    def close(self) -> None:
        self._generator.close()
        self._finish(False)
        self._reader.close()


@contextmanager
def object_errors(reader: ObjectReader, *, instance: Instance) -> Iterator[None]:
    """Before the response: an unreachable store or an object that cannot be parsed is a 503
    saying which (the reader is closed)."""
    try:
        yield
    except StorageUnavailable as exc:
        reader.close()
        logger.warning(
            "bulkdata: storage unavailable for org %s: %s", instance.organization_id, exc
        )
        raise StorageFailed(
            "The object store cannot be read right now; retry later.", code="storage_unavailable"
        ) from None
    except PixelDataUnreadable as exc:
        reader.close()
        logger.error("bulkdata: object %s: %s", instance.object_key, exc)
        raise StorageFailed(
            f"The stored object of instance {instance.sop_instance_uid} cannot be read as "
            f"DICOM: {exc}",
            code="object_unreadable",
        ) from None


def bulkdata_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series,
    instance: Instance,
    tag: str,
) -> HttpResponseBase:
    """The multipart response with the value of ``tag`` of ``instance`` (already scoped to
    ``org``); 404 for an attribute the instance does not offer as bulk data."""
    attribute = _attribute_requested(instance, tag)
    offer = pixel_data_offer(
        request,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        decodable=False,  # whole pixel data as stored; decoded frames come from .../frames
        resource="bulk data",
    )
    try:
        require_readable(request=request, org=org, actor=actor, instances=[instance])
    except RestorePending as exc:
        return restore_pending_response(exc)
    reader = ObjectReader(
        store_for(instance.location),
        key=instance.object_key,
        tier=instance.tier,
        size=instance.size_bytes,
    )
    with object_errors(reader, instance=instance):
        value = pixel_data_locate(cast(BinaryIO, reader), size=instance.size_bytes)
    if value is None or value.tag != attribute.tag:
        reader.close()
        raise NotFound(
            f"The stored object of instance {instance.sop_instance_uid} has no {attribute.key}.",
            code="bulkdata_not_found",
        )
    encapsulated = is_encapsulated(instance.transfer_syntax_uid)
    if encapsulated != (value.length is None):
        reader.close()
        raise StorageFailed(
            f"The pixel data of instance {instance.sop_instance_uid} has "
            f"{'a defined' if encapsulated else 'an undefined'} length, which its transfer "
            f"syntax {instance.transfer_syntax_uid or '(none)'} does not allow.",
            code="object_unreadable",
        )
    boundary = uuid.uuid4().hex
    content_type = f'{MULTIPART_RELATED}; type="{offer.media_type}"; boundary={boundary}'
    location = bulkdata_url(
        base_url(request),
        study.study_uid,
        series.series_uid,
        instance.sop_instance_uid,
        attribute.tag,
    )
    pieces: Iterator[bytes | None]
    if value.length is None:
        # A frame's size is known only at its end: its part is delimited by the boundary alone.
        opening = f"--{boundary}\r\nContent-Type: {offer.part_type}\r\n\r\n".encode("latin-1")
        pieces = encapsulated_frames(
            cast(BinaryIO, reader),
            value,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            chunk_size=READ_CHUNK,
        )
        content_length = None
    else:
        opening = part_header(boundary, OCTET_STREAM, value.length, location)
        chunks = reader.iter_range(value.offset, value.length)
        pieces = _one_part(to_little_endian(chunks, vr=value.vr, little=value.little_endian))
        content_length = len(opening) + value.length + 2 + len(closing(boundary))
    if request.method == "HEAD":
        reader.close()
        head = HttpResponse(content_type=content_type)
        if content_length is not None:
            head["Content-Length"] = str(content_length)
        return head
    response = pixel_data_response(
        pieces,
        opening=opening,
        boundary=boundary,
        reader=reader,
        content_type=content_type,
        org=org,
        actor=actor,
        study=study,
        series=series,
        instance=instance,
    )
    if content_length is not None:
        response["Content-Length"] = str(content_length)
    return response


def pixel_data_response(
    pieces: Iterator[bytes | None],
    *,
    opening: bytes,
    boundary: str,
    reader: ObjectReader,
    content_type: str,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series,
    instance: Instance,
    on_recorded: Callable[[int], None] | None = None,
) -> StreamingHttpResponse:
    """The streamed multipart response of pixel data of ``instance`` (bulk data, frames):
    ``pieces`` as ``BulkDataStream`` takes them, the access recorded once with the bytes sent
    (then ``on_recorded(bytes sent)``).

    The first part's opening and first bytes are read before answering, so that a broken
    encapsulation, an unreachable store or a frame that cannot be decoded is a clear error
    instead of a response cut short (the reader is closed then)."""
    try:
        with object_errors(reader, instance=instance):
            first = list(itertools.islice(pieces, 2))
    except BaseException:
        reader.close()
        raise

    def record(sent_bytes: int, complete: bool) -> None:
        image_read_record(
            org=org,
            study=study,
            series=series,
            kind=AccessEvent.Kind.RETRIEVE,
            actor=actor,
            instance=instance,
            bytes_read=sent_bytes,
            instances=1 if complete else 0,
        )
        if on_recorded is not None:
            on_recorded(sent_bytes)

    stream = BulkDataStream(
        itertools.chain(first, pieces),
        opening=opening,
        boundary=boundary,
        reader=reader,
        on_done=record,
    )
    return StreamingHttpResponse(stream, content_type=content_type)


def _one_part(chunks: Iterator[bytes]) -> Iterator[bytes | None]:
    yield None
    yield from chunks
