"""WADO-RS (PS3.18 10.4): retrieve studies, series and instances, and their metadata.

Media types (PS3.18 8.7.3; ``retrieve_delivery``): ``multipart/related; type="application/dicom"``
at every level, one part per instance; ``application/dicom`` (single part: the instance is the
body) for the instance resource only. ``transfer-syntax`` absent, ``*`` or the stored syntax: the
instance as stored; Explicit VR Little Endian (or Implicit VR Little Endian): transcoded to it
when stored otherwise (``archive.dicomweb.transcode``); per instance, the most preferred Accept
range that can send it. A 406 names what was asked and what can be served.

Instances as stored are streamed from object storage chunk by chunk: the response needs the
same memory for a 3 GB instance as for a 3 MB one. A transcoded instance is built in memory (at
most ``WADO_TRANSCODE_MAX_BYTES`` of it), one at a time, just before its part is sent; the first
instance before the response starts, so that a single-instance retrieve that cannot be decoded is
a clean 406. Metadata comes from the index (the stored DICOM JSON, without bulk data values) and
never reads object storage; an instance's pixel data is named in it by a ``BulkDataURI``
(``archive.dicomweb.bulkdata``).

Every retrieve and metadata request calls ``archive.index.services.access_record`` once: the access
log, last-accessed times, ``egress.bytes`` (the instance bytes actually sent, transcoded ones as
sent) and the audit log.

A retrieve that includes archive-tier instances without a restored copy starts a restore and
answers 503 with ``Retry-After`` and a JSON body naming the restore (``require_readable``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, cast

from django.db import NotSupportedError
from django.db.models import F, Func, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone

from archive.dicomweb.common import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    NotAcceptable,
    RestoreRequired,
    accept_asked,
    base_url,
    instance_url,
    preferred_ranges,
    public_url,
    transfer_syntax_name,
)
from archive.dicomweb.multipart import closing, part_header
from archive.dicomweb.transcode import (
    TRANSCODE_TARGETS,
    NotTranscodable,
    stored_syntax,
    transcode,
    transcode_refusal,
)
from archive.index.services import access_record
from archive.ingest.dicom import (
    BITS_ALLOCATED_KEY,
    PIXEL_DATA_PROVIDER_URL_KEY,
    PIXEL_REPRESENTATION_KEY,
    ROWS_KEY,
    pixel_bulk_data,
)
from archive.models import AccessEvent, Instance, Series, Study
from archive.restores.selectors import needs_restore, retry_after_seconds
from archive.restores.services import restore_for_read
from archive.storage import ObjectStore, StorageUnavailable, store_for
from tenants.context import Actor
from tenants.errors import NotFound, ServiceError
from tenants.models import Organization

logger = logging.getLogger(__name__)

# A transcoded instance is sent from memory in pieces of this size.
SEND_CHUNK = 256 * 1024


class StorageFailed(ServiceError):
    status = 503
    code = "storage_unavailable"


class RestorePending(RestoreRequired):
    """A read touched archive-tier objects without a readable copy: a restore is under way."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        fields: dict[str, list[str]],
        restore: dict[str, Any],
    ):
        super().__init__(message, retry_after=retry_after, fields=fields)
        self.restore = restore


def require_readable(
    *, request: HttpRequest, org: Organization, actor: Actor, instances: list[Instance]
) -> None:
    """Refuse a retrieve that includes objects a restore must bring back first, starting that
    restore (or finding the open one) on the way: the caller retries after Retry-After.

    The one place that decides whether stored bytes can be read now: readable unless the tier
    needs a restore and no restored copy exists (``Instance.restored_until`` in the future).
    """
    restore = restore_for_read(org=org, instances=instances, actor=actor)
    if restore is None:
        return
    now = timezone.now()
    archived = [i for i in instances if needs_restore(i, now=now)]
    retry_after = retry_after_seconds(restore, now=now)
    raise RestorePending(
        f"{len(archived)} of {len(instances)} instance(s) are in the archive tier and cannot be "
        f"read directly: restore {restore.pk} is bringing them back ({restore.state}); retry "
        f"after {retry_after} seconds.",
        retry_after=retry_after,
        fields={"archived_instances": [i.sop_instance_uid for i in archived[:20]]},
        restore={
            "id": restore.pk,
            "state": restore.state,
            "instances": len(archived),
            "instances_total": restore.instances_total,
            "instances_ready": restore.instances_ready,
            "bytes": restore.bytes_total,
            "requested_at": restore.requested_at.isoformat(),
            "timeout_at": restore.timeout_at.isoformat(),
            "retry_after": retry_after,
            "url": public_url(request, reverse("api-restore", kwargs={"restore_id": restore.pk})),
        },
    )


def restore_pending_response(exc: RestorePending) -> JsonResponse:
    """503 with Retry-After and a JSON body (the API's error shape plus the restore)."""
    response = JsonResponse(
        {
            "error": {"code": exc.code, "message": exc.message, "fields": exc.fields},
            "restore": exc.restore,
        },
        status=exc.status,
    )
    response["Retry-After"] = str(exc.retry_after)
    return response


# --- content negotiation (PS3.18 8.7) ------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRange:
    """An Accept range that names instances: ``multipart`` (``multipart/related; type=
    "application/dicom"``) or single part (``application/dicom``), and the transfer syntax it
    asks for (None: any, as stored)."""

    multipart: bool
    syntax: str | None


def instance_ranges(request: HttpRequest) -> list[InstanceRange]:
    """The Accept header's ranges that instances can be sent in, the most preferred first.

    ``*/*``, ``multipart/*``: multipart, as stored. ``multipart/related`` with ``type``
    ``application/dicom`` (quoted or not), ``application/*``, ``*/*`` or no ``type``: multipart.
    ``application/dicom``, ``application/*``: single part. ``transfer-syntax`` absent or ``*``:
    as stored (PS3.18 makes Explicit VR Little Endian the default; here the stored bytes are,
    which is what every client that says nothing has been getting).
    """
    ranges: list[InstanceRange] = []
    for media in preferred_ranges(request):
        syntax = media.params.get("transfer-syntax", "*").strip()
        asked = None if syntax in ("", "*") else syntax
        if media.media_type in ("*/*", "multipart/*"):
            ranges.append(InstanceRange(multipart=True, syntax=None))
        elif media.media_type == MULTIPART_RELATED:
            if media.params.get("type", DICOM).strip().lower() in (DICOM, "application/*", "*/*"):
                ranges.append(InstanceRange(multipart=True, syntax=asked))
        elif media.media_type in (DICOM, "application/*"):
            ranges.append(InstanceRange(multipart=False, syntax=asked))
    return ranges


@dataclass(frozen=True)
class Delivery:
    """How a retrieve is sent: multipart or the one instance alone, and per instance (in order)
    the transfer syntax it is transcoded to, None when sent as stored."""

    multipart: bool
    targets: list[str | None]


def _first_fit(
    instance: Instance, ranges: list[InstanceRange], refusals: list[str]
) -> tuple[InstanceRange, str | None] | None:
    """The first range that can send ``instance`` and the syntax it is transcoded to for it
    (None: as stored); None when no range can. Why a range could not goes to ``refusals``."""
    stored = stored_syntax(instance)
    for media in ranges:
        if media.syntax is None or media.syntax in (stored, instance.transfer_syntax_uid):
            return media, None
        reason = transcode_refusal(instance, media.syntax)
        if reason is None:
            return media, media.syntax
        if reason not in refusals and len(refusals) < 3:
            refusals.append(reason)
    return None


def retrieve_delivery(request: HttpRequest, instances: list[Instance], *, level: str) -> Delivery:
    """What the Accept header gets for ``instances`` of a study, series or instance (``level``).

    Per instance, the most preferred range that can send it (as stored, or transcoded to
    Explicit or Implicit VR Little Endian when asked and ``transcode_refusal`` allows): each part
    of a multipart response carries its own transfer syntax. Single part only for the instance
    resource (a single-part body holds one instance); for a study or series such a range counts
    as not given, even when it has one instance. Reads the index only. 406 naming what was
    asked and what can be served.
    """
    ranges = [r for r in instance_ranges(request) if r.multipart or level == "instance"]
    refusals: list[str] = []
    if not ranges:
        raise _not_acceptable(request, instances, level=level, refusals=refusals)
    multipart = True
    targets: list[str | None] = []
    for instance in instances:
        fit = _first_fit(instance, ranges, refusals)
        if fit is None:
            raise _not_acceptable(request, instances, level=level, refusals=refusals)
        media, target = fit
        multipart = media.multipart  # single part: the one instance of an instance retrieve
        targets.append(target)
    return Delivery(multipart=multipart, targets=targets)


def _not_acceptable(
    request: HttpRequest, instances: list[Instance], *, level: str, refusals: list[str]
) -> NotAcceptable:
    """The 406: what was asked, what can be served (the transfer syntaxes every one of the
    instances can be sent in) and why a transcoding was refused."""
    syntaxes = ["*"]
    stored = {stored_syntax(i) for i in instances}
    if len(stored) == 1:
        syntaxes.extend(stored)
    for target in TRANSCODE_TARGETS:
        if (
            target not in syntaxes
            and instances
            and all(transcode_refusal(i, target) is None for i in instances)
        ):
            syntaxes.append(target)
    multipart = f'{MULTIPART_RELATED}; type="{DICOM}"'
    offers = [f"{multipart}; transfer-syntax={s}" for s in syntaxes]
    if level == "instance":
        offers += [f"{DICOM}; transfer-syntax={s}" for s in syntaxes]
        single = f"; {DICOM} with the same transfer syntaxes"
    else:
        single = f"; {DICOM} (single part) for one instance only, and this is a {level}"
    served = " or ".join(
        ["* (as stored)"] + [transfer_syntax_name(s) for s in syntaxes[1:]],
    )
    why = ""
    if refusals:
        why = f" Not transcoded: {'; '.join(refusals)}. transfer-syntax=* sends the stored bytes."
    return NotAcceptable(
        f"Not acceptable: asked {accept_asked(request)}; can serve {multipart}; "
        f"transfer-syntax={served}{single}.{why}",
        fields={"Accept": offers},
    )


# --- the retrieve --------------------------------------------------------------------------------


@dataclass
class _Item:
    instance: Instance
    store: ObjectStore
    location: str
    # The syntax the instance is transcoded to (None: sent as stored), and the transcoded bytes
    # once built: just before its part, the first instance's before the response starts.
    target: str | None = None
    transcoded: bytes | None = None

    @property
    def content_type(self) -> str:
        syntax = self.target or self.instance.transfer_syntax_uid
        return f"{DICOM}; transfer-syntax={syntax}" if syntax else DICOM

    def size(self) -> int | None:
        """The bytes of its body: None for a transcoded instance not built yet."""
        if self.target is None:
            return self.instance.size_bytes
        return None if self.transcoded is None else len(self.transcoded)

    def stored_bytes(self, chunks: Iterator[bytes] | None = None) -> bytes:
        """The stored object whole (a transcoding's input, at most ``WADO_TRANSCODE_MAX_BYTES``
        by ``transcode_refusal``); StorageUnavailable when it is not the size the index says."""
        instance = self.instance
        if chunks is None:
            chunks = self.store.iter_bytes(key=instance.object_key, tier=instance.tier)
        data = b"".join(chunks)
        if len(data) != instance.size_bytes:
            _size_differs(instance, len(data))
        return data

    def transcoded_bytes(self, chunks: Iterator[bytes] | None = None) -> bytes:
        assert self.target is not None  # only instances negotiated for transcoding get here
        return transcode(self.stored_bytes(chunks), target=self.target, instance=self.instance)


def _size_differs(instance: Instance, size: int) -> None:
    # The framing promised size_bytes; sending more or less would corrupt it.
    logger.error(
        "wado: object %s has %d bytes, the index says %d",
        instance.object_key,
        size,
        instance.size_bytes,
    )
    raise StorageUnavailable("stored object size differs from the index")


def _slices(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(data), SEND_CHUNK):
        yield view[start : start + SEND_CHUNK]


class RetrieveStream:
    """The response body as an iterable: a multipart body (``boundary``), or the one instance
    alone (``boundary`` None); ``on_done(bytes, instances)`` runs exactly once.

    It runs after the last instance's bytes and before the closing delimiter, so a client that
    has the whole response also sees the access recorded; on an abort it runs with what was
    sent, and ``close()`` covers a response the server never iterated. ``bytes`` counts the
    instances' bytes sent (transcoded ones as sent), not the framing.
    """

    def __init__(
        self,
        items: list[_Item],
        boundary: str | None,
        first_chunks: Iterator[bytes],
        on_done: Callable[[int, int], None],
    ):
        self._items = items
        self._boundary = boundary
        self._first_chunks = first_chunks
        self._on_done = on_done
        self._done = False
        self._sent_bytes = 0
        self._sent_instances = 0
        self._generator: Generator[bytes | memoryview, None, None] = self._generate()

    def _header(self, item: _Item, size: int) -> bytes:
        if self._boundary is None:
            return b""
        return part_header(self._boundary, item.content_type, size, item.location)

    def content_length(self) -> int | None:
        """None while a transcoded instance's size is not known."""
        sizes = [item.size() for item in self._items]
        if None in sizes:
            return None
        known = cast(list[int], sizes)
        if self._boundary is None:
            return known[0]
        return sum(
            len(self._header(item, size)) + size + 2
            for item, size in zip(self._items, known, strict=True)
        ) + len(closing(self._boundary))

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(self._sent_bytes, self._sent_instances)

    def _body(self, position: int, item: _Item) -> tuple[int, Iterator[bytes | memoryview]]:
        """The size of the item's body and its bytes; a transcoded instance is built here, before
        its part starts, and let go once sent."""
        if item.target is None:
            chunks = (
                self._first_chunks
                if position == 0
                else item.store.iter_bytes(key=item.instance.object_key, tier=item.instance.tier)
            )
            return item.instance.size_bytes, chunks
        data = item.transcoded if item.transcoded is not None else item.transcoded_bytes()
        item.transcoded = None
        return len(data), _slices(data)

    def _generate(self) -> Generator[bytes | memoryview, None, None]:
        try:
            for position, item in enumerate(self._items):
                size, chunks = self._body(position, item)
                yield self._header(item, size)
                sent = 0
                for chunk in chunks:
                    sent += len(chunk)
                    self._sent_bytes += len(chunk)
                    yield chunk
                if sent != size:
                    _size_differs(item.instance, sent)
                if self._boundary is not None:
                    yield b"\r\n"
                self._sent_instances += 1
            self._finish()
            if self._boundary is not None:
                yield closing(self._boundary)
        except (StorageUnavailable, NotTranscodable) as exc:
            # Headers are out: all that is left is to cut the response short (the client sees
            # fewer bytes than Content-Length, or no closing delimiter).
            logger.warning("wado: response cut short: %s", exc)
            raise
        finally:
            self._finish()

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return self._generator

    def close(self) -> None:
        self._generator.close()
        self._finish()


def retrieve_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series | None,
    instances: list[Instance],
    single_instance: bool = False,
) -> HttpResponseBase:
    """The response for ``instances`` (already scoped to ``org``) of a study, a series or
    (``single_instance``) the instance resource: multipart, or the instance alone when
    ``application/dicom`` is the preferred acceptable range (``retrieve_delivery``)."""
    level = "instance" if single_instance else "series" if series is not None else "study"
    if not instances:
        retrieve_delivery(request, instances, level=level)  # a 406 before the 404, as always
        raise NotFound(f"Study {study.study_uid} has no instances.", code="instance_not_found")
    delivery = retrieve_delivery(request, instances, level=level)
    try:
        require_readable(request=request, org=org, actor=actor, instances=instances)
    except RestorePending as exc:
        return restore_pending_response(exc)
    base = base_url(request)
    boundary = uuid.uuid4().hex if delivery.multipart else None
    stores: dict[int, ObjectStore] = {}
    items = []
    for instance, target in zip(instances, delivery.targets, strict=True):
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        location = instance_url(
            base, study.study_uid, instance.series.series_uid, instance.sop_instance_uid
        )
        items.append(_Item(instance=instance, store=store, location=location, target=target))
    first = items[0]
    content_type = (
        f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'
        if boundary is not None
        else first.content_type
    )
    if request.method == "HEAD":
        length = RetrieveStream(items, boundary, iter(()), lambda *_: None).content_length()
        if length is None:
            # Not transcoded for a HEAD: the length is not known (a plain response would get
            # "Content-Length: 0" from the middleware).
            return StreamingHttpResponse(iter(()), content_type=content_type)
        head = HttpResponse(content_type=content_type)
        head["Content-Length"] = str(length)
        return head
    # Open the first object (transcode the first instance) before answering, so a missing or
    # unreachable object is a clear 503, and one that cannot be decoded a clear 406, instead of
    # a response cut short.
    try:
        first_chunks = first.store.iter_bytes(
            key=first.instance.object_key, tier=first.instance.tier
        )
        if first.target is not None:
            first.transcoded = first.transcoded_bytes(first_chunks)
            first_chunks = iter(())
        opening = next(first_chunks, b"")
    except StorageUnavailable as exc:
        logger.warning("wado: storage unavailable for org %s: %s", org.pk, exc)
        raise StorageFailed(
            "The object store cannot be read right now; retry later.", code="storage_unavailable"
        ) from None

    def primed() -> Iterator[bytes]:
        if opening:
            yield opening
        yield from first_chunks

    def record(sent_bytes: int, sent_instances: int) -> None:
        access_record(
            org=org,
            study=study,
            series=series,
            kind=AccessEvent.Kind.RETRIEVE,
            actor=actor,
            bytes_read=sent_bytes,
            instances=sent_instances,
        )

    stream = RetrieveStream(items, boundary, primed(), record)
    response = StreamingHttpResponse(stream, content_type=content_type)
    length = stream.content_length()
    if length is not None:
        response["Content-Length"] = str(length)
    return response


def bulkdata_url(base: str, study_uid: str, series_uid: str, sop_uid: str, tag: int) -> str:
    """The bulk data resource of one attribute of an instance (the BulkDataURI)."""
    return f"{instance_url(base, study_uid, series_uid, sop_uid)}/bulkdata/{tag:08X}"


class JsonPathText(Func):
    """The value at a path in a JSON column, as text (numbers may come as numbers on SQLite);
    NULL where the path is absent. Keys are always object keys: Django's key transforms take an
    all-digit key such as the tag ``00280010`` for an array index."""

    output_field = TextField()

    def __init__(self, column: str, *path: str | int):
        super().__init__(F(column))
        self.path = path

    def as_sqlite(
        self, compiler: Any, connection: Any, **extra_context: Any
    ) -> tuple[str, tuple[Any, ...]]:
        sql, params = compiler.compile(self.source_expressions[0])
        json_path = "$" + "".join(
            f"[{key}]" if isinstance(key, int) else f".{json.dumps(key)}" for key in self.path
        )
        return f"json_extract({sql}, %s)", (*params, json_path)

    def as_postgresql(
        self, compiler: Any, connection: Any, **extra_context: Any
    ) -> tuple[str, tuple[Any, ...]]:
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} #>> %s::text[])", (*params, [str(key) for key in self.path])

    def as_sql(
        self,
        compiler: Any,
        connection: Any,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> tuple[str, tuple[Any, ...]]:
        raise NotSupportedError(f"JSON paths are not implemented for {connection.vendor}.")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def with_attribute(raw: str, key: str, element: dict[str, Any]) -> str:
    """``raw`` (the text of a JSON object) with one more member at its end.

    Stored metadata ends before the pixel data (``archive.ingest.dicom.read_header``), so a pixel data
    tag added last keeps the tags in ascending order, as PS3.18 F.2 lists them.
    """
    body = raw.rstrip()
    if not body.endswith("}"):
        raise ValueError("The stored metadata is not a JSON object.")
    body = body[:-1].rstrip()
    separator = "" if body.endswith("{") else ", "
    return f"{body}{separator}{json.dumps(key)}: {json.dumps(element)}}}"


def metadata_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series | None,
    instances: QuerySet[Instance],
    count: int,
) -> StreamingHttpResponse:
    """A JSON array of the instances' stored DICOM JSON, streamed from the database in batches,
    each with the BulkDataURI of its pixel data (``archive.ingest.dicom.pixel_bulk_data``, derived from
    columns the query reads along: no object-storage read)."""
    access_record(
        org=org,
        study=study,
        series=series,
        kind=AccessEvent.Kind.METADATA,
        actor=actor,
        bytes_read=0,
        instances=count,
    )
    base = base_url(request)
    # The stored JSON text as it is (no decoding and re-encoding per instance), and the few
    # values that say which pixel data attribute the instance has.
    rows = instances.annotate(
        raw=Cast("metadata", output_field=TextField()),
        pixel_rows=JsonPathText("metadata", ROWS_KEY),
        pixel_bits=JsonPathText("metadata", BITS_ALLOCATED_KEY, "Value", 0),
        pixel_representation=JsonPathText("metadata", PIXEL_REPRESENTATION_KEY),
        pixel_provider=JsonPathText("metadata", PIXEL_DATA_PROVIDER_URL_KEY),
    ).values_list(
        "raw",
        "transfer_syntax_uid",
        "series__series_uid",
        "sop_instance_uid",
        "pixel_rows",
        "pixel_bits",
        "pixel_representation",
        "pixel_provider",
    )

    def generate() -> Iterator[bytes]:
        yield b"["
        for position, row in enumerate(rows.iterator(chunk_size=500)):
            raw, syntax, series_uid, sop_uid, rows_, bits, representation, provider = row
            text = str(raw)
            attribute = pixel_bulk_data(
                transfer_syntax_uid=syntax,
                has_rows=rows_ is not None,
                bits_allocated=_int_or_none(bits),
                has_pixel_representation=representation is not None,
                has_provider_url=provider is not None,
            )
            if attribute is not None:
                uri = bulkdata_url(base, study.study_uid, series_uid, sop_uid, attribute.tag)
                text = with_attribute(text, attribute.key, {"vr": attribute.vr, "BulkDataURI": uri})
            yield (b"," if position else b"") + text.encode()
        yield b"]"

    return StreamingHttpResponse(generate(), content_type=DICOM_JSON)
