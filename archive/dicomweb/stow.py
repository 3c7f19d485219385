"""STOW-RS (PS3.18 10.5): multipart/related bodies of DICOM Part 10 files, streamed into ingest.

Each part goes straight from the request stream into ``ingest.spool_chunks`` (constant memory,
any size) and then, a batch of parts at a time, through ``ingest.instances_ingest``, the pipeline
every door shares: each part is checked and stored on its own, and the batch is indexed in one
transaction. Parts are independent: one bad part fails alone, with a PS3.18 failure reason, and
the others are stored.

Failure reasons this module adds to those of ``archive.dicom``:
- 0xC000 (cannot understand) for a part that is not ``application/dicom``, that uses a content
  transfer encoding, or that the body cut off before its closing boundary;
- 0xA700 (out of resources) when the part could not be spooled to local disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.http import parse_header_parameters

from archive import ingest
from archive.dicom import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE
from archive.dicomweb import dicomjson as dj
from archive.dicomweb.common import (
    DICOM,
    MULTIPART_RELATED,
    LengthRequired,
    UnsupportedMediaType,
    instance_url,
    study_url,
)
from archive.dicomweb.multipart import MultipartError, MultipartReader, Part, valid_boundary
from archive.models import IngestFailure, IngestJob, StorageLocation
from archive.storage import ObjectStore, store_for
from billing.metering import record_usage
from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

MAX_ERROR_COMMENT = 500
# A batch of parts is ingested (stored, then indexed in one transaction) once it holds this many
# parts or bytes, and at the end of the body.
BATCH_PARTS = 50
BATCH_BYTES = 256 * 1024 * 1024


@dataclass
class StowBody:
    """The request body as a ``read(n)`` callable and the boundary that frames it."""

    read: Callable[[int], bytes]
    boundary: str
    root_type: str


@dataclass
class StowOutcome:
    results: list[ingest.IngestResult] = field(default_factory=list)
    bytes_received: int = 0
    job: IngestJob | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def http_status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored."""
        failed = self.count("failed")
        if failed == 0:
            return 200
        return 409 if failed == len(self.results) else 202


def stow_body(request: HttpRequest) -> StowBody:
    """Check the Content-Type and the body's framing before anything is read.

    Raises ``UnsupportedMediaType`` (415), ``ValidationFailed`` (400) or ``LengthRequired`` (411).
    """
    header = request.META.get("CONTENT_TYPE", "")
    try:
        media_type, params = parse_header_parameters(header)
    except ValueError:
        media_type, params = "", {}
    params = {k.lower(): v for k, v in params.items()}
    expected = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary=...'
    if media_type.strip().lower() != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f"STOW-RS takes Content-Type {expected}, not {header or 'no Content-Type'!r}.",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    root_type = params.get("type", DICOM).strip().lower()
    if root_type != DICOM:
        raise UnsupportedMediaType(
            f"This server stores DICOM Part 10 files ({DICOM} parts); the multipart type "
            f"{root_type!r} (the metadata and bulk data form) is not supported.",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise ValidationFailed(
            "The Content-Type header has no boundary parameter.",
            code="invalid_multipart",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    if not valid_boundary(boundary):
        raise ValidationFailed(
            "The boundary parameter is not a valid RFC 2046 boundary (1-70 characters).",
            code="invalid_multipart",
            fields={"Content-Type": ["Use a boundary of 1-70 letters, digits and '()+_,-./:=?"]},
        )
    return StowBody(read=_body_reader(request), boundary=boundary, root_type=root_type)


def _body_reader(request: HttpRequest) -> Callable[[int], bytes]:
    """The body stream, without ever reading it whole (``request.body`` is not touched).

    With Content-Length, Django's LimitedStream stops at the declared length. A chunked body has
    no length: it is readable only if the WSGI server de-chunks it and ends the stream
    (``wsgi.input_terminated``, as gunicorn and uWSGI do); Django's runserver cannot.
    """
    environ = request.META
    length = environ.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not length:
        if environ.get("wsgi.input_terminated"):
            stream = environ["wsgi.input"]
            return stream.read
        raise LengthRequired(
            "A chunked request body cannot be read by this server; send Content-Length.",
            fields={"Content-Length": ["Required."]},
        )
    try:
        size = int(length)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValidationFailed(
            "The request body is empty: send one or more DICOM files as multipart/related parts.",
            code="empty_body",
        )
    return request.read


def _fail_part(index: int, code: int, reason: str, size: int = 0) -> ingest.IngestResult:
    return ingest.IngestResult(
        status="failed", size=size, reason_code=code, reason=f"Part {index + 1}: {reason}"
    )


def _spool_part(
    *, org: Organization, part: Part, root_type: str, store: ObjectStore
) -> ingest.Spooled | ingest.IngestResult:
    """One part -> its spool file, or the result that refuses it. ``part.size`` is what was read."""
    if part.error:
        part.discard()
        return _fail_part(part.index, CANNOT_UNDERSTAND, part.error, part.size)
    media_type = part.media_type or root_type
    if media_type != DICOM:
        part.discard()
        return _fail_part(
            part.index,
            CANNOT_UNDERSTAND,
            f"Content-Type {media_type!r} is not supported; every part must be {DICOM} "
            "(a DICOM Part 10 file).",
            part.size,
        )
    try:
        spooled = ingest.spool_chunks(store, part.chunks())
    except OSError as exc:
        part.discard()
        logger.warning("stow: spooling failed for org %s: %s", org.pk, exc)
        return _fail_part(
            part.index, OUT_OF_RESOURCES, "The part could not be written to local disk.", part.size
        )
    if part.error:  # cut off before its closing boundary: never ingest half a file
        spooled.path.unlink(missing_ok=True)
        return _fail_part(part.index, CANNOT_UNDERSTAND, part.error, spooled.size)
    return spooled


class _Batch:
    """Spooled parts waiting to be ingested together (one index transaction for all of them).

    Bounded in parts and bytes: the spool files are on local disk, and the sender's parts wait
    for their acknowledgement no longer than one batch.
    """

    def __init__(self, outcome: StowOutcome) -> None:
        self.outcome = outcome
        self.slots: list[tuple[int, int, ingest.Spooled]] = []  # (result slot, part index, file)
        self.bytes = 0

    def full(self) -> bool:
        return len(self.slots) >= BATCH_PARTS or self.bytes >= BATCH_BYTES

    def add(self, part_index: int, spooled: ingest.Spooled) -> None:
        self.outcome.results.append(_fail_part(part_index, PROCESSING_FAILURE, "Not ingested."))
        self.slots.append((len(self.outcome.results) - 1, part_index, spooled))
        self.bytes += spooled.size

    def flush(
        self,
        *,
        org: Organization,
        expected_study_uid: str | None,
        location: StorageLocation,
        quota: ingest.Quota,
    ) -> None:
        if not self.slots:
            return
        slots, self.slots, self.bytes = self.slots, [], 0
        try:
            results = ingest.instances_ingest(
                org=org,
                batch=[spooled for _, _, spooled in slots],
                expected_study_uid=expected_study_uid,
                location=location,
                quota=quota,
            )
        except BaseException:
            for _, _, spooled in slots:
                spooled.path.unlink(missing_ok=True)
            raise
        for (slot, part_index, _), result in zip(slots, results, strict=True):
            if result.status == "failed":
                result.reason = f"Part {part_index + 1}: {result.reason}"
            self.outcome.results[slot] = result

    def discard(self) -> None:
        for _, _, spooled in self.slots:
            spooled.path.unlink(missing_ok=True)
        self.slots = []


def stow_receive(
    *,
    org: Organization,
    actor: Actor,
    body: StowBody,
    expected_study_uid: str | None = None,
    source: str = "STOW-RS",
) -> StowOutcome:
    """Store every part of a STOW-RS body; one ``IngestJob`` records the request.

    Raises ``ValidationFailed`` (nothing stored, no job) when the body cannot be framed at all:
    the boundary does not occur in it, or it has no parts.
    """
    cpu_started = time.thread_time()
    reader = MultipartReader(body.read, body.boundary)
    parts = reader.parts()
    try:
        first = next(parts)
    except MultipartError as exc:
        raise ValidationFailed(str(exc), code="invalid_multipart") from None
    location = ingest.location_primary(org)
    store = store_for(location)
    quota = ingest.Quota(org)
    now = timezone.now()
    outcome = StowOutcome()
    outcome.job = job = IngestJob.objects.create(
        organization=org,
        kind=IngestJob.Kind.STOW,
        state=IngestJob.State.RUNNING,
        source=source[:1000],
        created_by=actor.user if actor.user is not None and actor.user.pk else None,
        created_at=now,
        started_at=now,
    )
    batch = _Batch(outcome)

    def flush() -> None:
        batch.flush(org=org, expected_study_uid=expected_study_uid, location=location, quota=quota)

    try:
        part: Part | None = first
        while part is not None:
            spooled = _spool_part(org=org, part=part, root_type=body.root_type, store=store)
            if isinstance(spooled, ingest.IngestResult):
                outcome.results.append(spooled)
                outcome.bytes_received += spooled.size
            else:
                outcome.bytes_received += spooled.size
                batch.add(part.index, spooled)
                if batch.full():
                    flush()
            part = next(parts, None)
        flush()
    except Exception as exc:
        batch.discard()
        IngestJob.objects.filter(pk=job.pk).update(
            state=IngestJob.State.FAILED,
            finished_at=timezone.now(),
            error=f"Internal error after {len(outcome.results)} part(s): {type(exc).__name__}",
        )
        raise
    _job_finish(org=org, actor=actor, outcome=outcome, job=job, cpu_started=cpu_started)
    return outcome


def _job_finish(
    *, org: Organization, actor: Actor, outcome: StowOutcome, job: IngestJob, cpu_started: float
) -> None:
    """Counts, failures, compute metering and the audit event: one transaction."""
    stored = outcome.count("stored")
    duplicate = outcome.count("duplicate")
    failed = outcome.count("failed")
    now = timezone.now()
    counts = {
        "received": len(outcome.results),
        "stored": stored,
        "duplicate": duplicate,
        "failed": failed,
        "bytes": outcome.bytes_received,
    }
    with transaction.atomic():
        IngestJob.objects.filter(pk=job.pk).update(
            state=IngestJob.State.FAILED
            if failed == len(outcome.results)
            else IngestJob.State.DONE,
            received=len(outcome.results),
            stored=stored,
            duplicate=duplicate,
            failed=failed,
            bytes_received=outcome.bytes_received,
            bytes_stored=sum(r.size for r in outcome.results if r.status == "stored"),
            total_files=len(outcome.results),
            total_bytes=outcome.bytes_received,
            finished_at=now,
            error=(f"All {failed} instance(s) failed." if failed == len(outcome.results) else ""),
        )
        IngestFailure.objects.bulk_create(
            [
                IngestFailure(
                    organization=org,
                    job=job,
                    source=f"STOW-RS job {job.pk}",
                    sop_instance_uid=r.sop_instance_uid[:64],
                    reason_code=r.reason_code,
                    reason=r.reason[:500],
                    created_at=now,
                )
                for r in outcome.results
                if r.status == "failed"
            ]
        )
        # CPU time of this request's thread (parsing, hashing, header reads, indexing), rounded up
        # once to whole seconds; a request always costs at least one second.
        seconds = math.ceil(time.thread_time() - cpu_started)
        if seconds > 0:
            record_usage(
                org=org,
                meter="compute.seconds",
                quantity=seconds,
                at=now,
                idempotency_key=f"compute:stow:{job.pk}",
            )
        audit_record(
            org=org,
            actor=actor,
            action="ingest.stow",
            target=job,
            target_label=f"STOW-RS job {job.pk}",
            details=counts,
        )


def stow_response_body(
    outcome: StowOutcome, *, base: str, expected_study_uid: str | None
) -> dict[str, Any]:
    """PS3.18 10.5.3 Store Instances Response Module as DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies = set()
    for r in outcome.results:
        if r.ok:
            studies.add(r.study_uid)
            referenced.append(
                {
                    dj.REFERENCED_SOP_CLASS_UID: dj.element("UI", r.sop_class_uid),
                    dj.REFERENCED_SOP_INSTANCE_UID: dj.element("UI", r.sop_instance_uid),
                    dj.RETRIEVE_URL: dj.element(
                        "UR", instance_url(base, r.study_uid, r.series_uid, r.sop_instance_uid)
                    ),
                }
            )
        else:
            failed.append(
                {
                    dj.REFERENCED_SOP_CLASS_UID: _optional_uid(r.sop_class_uid),
                    dj.REFERENCED_SOP_INSTANCE_UID: _optional_uid(r.sop_instance_uid),
                    dj.FAILURE_REASON: dj.element("US", r.reason_code),
                    dj.ERROR_COMMENT: dj.element("LO", r.reason[:MAX_ERROR_COMMENT]),
                }
            )
    body: dict[str, Any] = {}
    study_uid = expected_study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study_uid:
        body[dj.RETRIEVE_URL] = dj.element("UR", study_url(base, study_uid))
    if referenced:
        body[dj.REFERENCED_SOP_SEQUENCE] = dj.element("SQ", *referenced)
    if failed:
        body[dj.FAILED_SOP_SEQUENCE] = dj.element("SQ", *failed)
    return body


def _optional_uid(uid: str) -> dict[str, Any]:
    return dj.element("UI", uid) if uid else dj.element("UI")
