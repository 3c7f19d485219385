"""WADO-RS (PS3.18 10.4): retrieve studies, series and instances as stored, and their metadata.

Instances are sent exactly as they were received (no transcoding), as
``multipart/related; type="application/dicom"`` streamed from object storage chunk by chunk:
the response needs the same memory for a 3 GB instance as for a 3 MB one. Metadata comes from
the index (the stored DICOM JSON, without bulk data values) and never reads object storage; an
instance's pixel data is named in it by a ``BulkDataURI`` (``archive.dicomweb.bulkdata``).

Every retrieve and metadata request calls ``archive.index.services.access_record`` once: the access
log, last-accessed times, ``egress.bytes`` (the instance bytes actually sent) and the audit log.

A retrieve that includes archive-tier instances without a restored copy starts a restore and
answers 503 with ``Retry-After`` and a JSON body naming the restore (``require_readable``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

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
    accepted_ranges,
    base_url,
    instance_url,
    public_url,
)
from archive.dicomweb.multipart import closing, part_header
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


def acceptable_transfer_syntaxes(request: HttpRequest) -> set[str] | None:
    """Transfer syntaxes the Accept header allows; None: any (as stored).

    Accepted: ``multipart/related; type="application/dicom"`` (with or without a
    ``transfer-syntax``), ``multipart/related`` alone, ``multipart/*`` and ``*/*``.
    """
    syntaxes: set[str] = set()
    for media in accepted_ranges(request):
        if media.media_type in ("*/*", "multipart/*"):
            return None
        if media.media_type != MULTIPART_RELATED:
            continue
        if media.params.get("type", DICOM).lower() not in (DICOM, "application/*", "*/*"):
            continue
        syntax = media.params.get("transfer-syntax", "*")
        if syntax == "*":
            return None
        syntaxes.add(syntax)
    if not syntaxes:
        raise NotAcceptable(
            f'Instances are sent as {MULTIPART_RELATED}; type="{DICOM}"; the request accepts '
            f"{request.headers.get('Accept', '')!r}. Rendered, bulk data and XML forms are not "
            "offered.",
            fields={"Accept": [f"Send 'Accept: {MULTIPART_RELATED}; type=\"{DICOM}\"'."]},
        )
    return syntaxes


def _require_transfer_syntax(instances: list[Instance], syntaxes: set[str] | None) -> None:
    if syntaxes is None:
        return
    other = sorted({i.transfer_syntax_uid for i in instances} - syntaxes)
    if other:
        raise NotAcceptable(
            f"Instances are stored in transfer syntax {', '.join(other)} and are sent as stored "
            "(no transcoding); ask for transfer-syntax=* or leave the parameter out.",
            fields={"Accept": ["transfer-syntax=*"]},
        )


@dataclass
class _Item:
    instance: Instance
    header: bytes
    store: ObjectStore


class RetrieveStream:
    """The multipart body as an iterable; ``on_done(bytes, instances)`` runs exactly once.

    It runs after the last instance's bytes and before the closing delimiter, so a client that
    has the whole response also sees the access recorded; on an abort it runs with what was
    sent, and ``close()`` covers a response the server never iterated.
    """

    def __init__(
        self,
        items: list[_Item],
        boundary: str,
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
        self._generator: Generator[bytes, None, None] = self._generate()

    def content_length(self) -> int:
        return sum(len(i.header) + i.instance.size_bytes + 2 for i in self._items) + len(
            closing(self._boundary)
        )

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(self._sent_bytes, self._sent_instances)

    def _generate(self) -> Generator[bytes, None, None]:
        try:
            for position, item in enumerate(self._items):
                instance = item.instance
                yield item.header
                chunks = (
                    self._first_chunks
                    if position == 0
                    else item.store.iter_bytes(key=instance.object_key, tier=instance.tier)
                )
                size = 0
                for chunk in chunks:
                    size += len(chunk)
                    self._sent_bytes += len(chunk)
                    yield chunk
                if size != instance.size_bytes:
                    # The framing promised size_bytes; sending more or less would corrupt it.
                    logger.error(
                        "wado: object %s has %d bytes, the index says %d",
                        instance.object_key,
                        size,
                        instance.size_bytes,
                    )
                    raise StorageUnavailable("stored object size differs from the index")
                yield b"\r\n"
                self._sent_instances += 1
            self._finish()
            yield closing(self._boundary)
        except StorageUnavailable as exc:
            # Headers are out: all that is left is to cut the response short (the client sees
            # fewer bytes than Content-Length).
            logger.warning("wado: storage failed mid-response: %s", exc)
            raise
        finally:
            self._finish()

    def __iter__(self) -> Iterator[bytes]:
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
) -> HttpResponseBase:
    """The multipart response for ``instances`` (already scoped to ``org``)."""
    syntaxes = acceptable_transfer_syntaxes(request)
    if not instances:
        raise NotFound(f"Study {study.study_uid} has no instances.", code="instance_not_found")
    _require_transfer_syntax(instances, syntaxes)
    try:
        require_readable(request=request, org=org, actor=actor, instances=instances)
    except RestorePending as exc:
        return restore_pending_response(exc)
    base = base_url(request)
    boundary = uuid.uuid4().hex
    stores: dict[int, ObjectStore] = {}
    items = []
    for instance in instances:
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        content_type = DICOM
        if instance.transfer_syntax_uid:
            content_type += f"; transfer-syntax={instance.transfer_syntax_uid}"
        location = instance_url(
            base, study.study_uid, instance.series.series_uid, instance.sop_instance_uid
        )
        header = part_header(boundary, content_type, instance.size_bytes, location)
        items.append(_Item(instance=instance, header=header, store=store))
    content_type = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'
    if request.method == "HEAD":
        head = HttpResponse(content_type=content_type)
        head["Content-Length"] = str(
            RetrieveStream(items, boundary, iter(()), lambda *_: None).content_length()
        )
        return head
    first = items[0]
    # Open the first object before answering, so a missing or unreachable object is a clear 503
    # instead of a response cut short.
    try:
        first_chunks = first.store.iter_bytes(
            key=first.instance.object_key, tier=first.instance.tier
        )
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
    response["Content-Length"] = str(stream.content_length())
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
