"""STOW-RS (PS3.18 10.5): multipart/related bodies of DICOM Part 10 files, streamed into ingest.

Each part goes straight from the request stream into ``pipeline.spool_chunks`` (constant memory,
any size). Spooled parts wait on local disk until the body has ended or they hold
``BATCH_BYTES``; then they go, ``BATCH_PARTS`` at a time, through ``pipeline.instances_ingest``, the
pipeline every door shares: each part is checked and stored on its own, and the batch is indexed
in one transaction. Parts are independent: one bad part fails alone, with a PS3.18 failure
reason, and the others are stored; a batch that raises unexpectedly is ingested again part by
part, so that even a bug fails only the part that triggers it (0x0110), never the request.

Limits (docs/security.md): at most ``settings.STOW_MAX_PARTS`` parts per request (more: 413,
and nothing of the request is ingested as long as the parts before the limit held less than
``BATCH_BYTES``); at most ``settings.INGEST_MAX_FAILURE_ROWS`` failure rows per job (the
job's ``failed`` counter counts them all); an empty part fails on its own without touching disk.

Failure reasons this module adds to those of ``archive.ingest.dicom``:
- 0xC000 (cannot understand) for a part that is not ``application/dicom``, that uses a content
  transfer encoding, that is empty, or that the body cut off before its closing boundary;
- 0xA700 (out of resources) when the part could not be spooled to local disk;
- 0x0110 (processing failure) when ingesting the part raised an unexpected error (logged).

The job's counters, failure rows and ``heartbeat_at`` are written after every ingested batch (and
the heartbeat renewed while a long part arrives): a request whose worker is killed leaves its job
``running`` with the counts of what was indexed, and ``archive.ingest.jobs.jobs_sweep`` closes it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from archive.dicomweb import dicomjson as dj
from archive.dicomweb.common import (
    DICOM,
    MULTIPART_RELATED,
    LengthRequired,
    UnsupportedMediaType,
    instance_url,
    study_url,
)
from archive.dicomweb.multipart import (
    MAX_BOUNDARY_LENGTH,
    MultipartError,
    MultipartReader,
    Part,
    TooManyParts,
    boundary_problem,
    header_parameters,
)
from archive.ingest import pipeline
from archive.ingest.dicom import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE
from archive.models import IngestFailure, IngestJob, Instance, StorageLocation
from archive.storage import ObjectStore, StorageUnavailable, store_for
from billing.metering import record_usage
from tenants.context import Actor
from tenants.errors import ServiceError, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

MAX_ERROR_COMMENT = 500
# Failed parts without a SOP Instance UID (not DICOM, empty, cut off) listed one by one in the
# answer; beyond these, one item per failure reason sums them up, so that the answer to a small
# body of many empty parts stays small.
MAX_UNIDENTIFIED_FAILURES = 1000
# Spooled parts are ingested once they hold this many bytes, and at the end of the body; then
# this many parts at a time (one index transaction each).
BATCH_PARTS = 50
BATCH_BYTES = 256 * 1024 * 1024
# While one part arrives, the job's heartbeat is renewed this often (see archive.ingest.jobs.LEASE).
HEARTBEAT_SECONDS = 30.0

INTERNAL_ERROR = (
    "An internal error stopped this instance's ingest; it was not stored. Send it again; if it "
    "fails again, report it with the job's number."
)

OBJECT_MISSING = (
    "An internal error interrupted this instance's ingest: the index holds it, but its stored "
    "object was not found. Report it with the job's number; sending it again does not repair it."
)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "too_many_parts"


@dataclass
class StowBody:
    """The request body as a ``read(n)`` callable and the boundary that frames it."""

    read: Callable[[int], bytes]
    boundary: str
    root_type: str


@dataclass
class StowOutcome:
    results: list[pipeline.IngestResult] = field(default_factory=list)
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
    media_type, params = header_parameters(header) or ("", {})
    expected = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary=...'
    if media_type != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f"STOW-RS takes Content-Type {expected}, not {header[:200] or 'no Content-Type'!r}.",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    root_type = params.get("type", DICOM).strip().lower()
    if root_type != DICOM:
        raise UnsupportedMediaType(
            f"This server stores DICOM Part 10 files ({DICOM} parts); the multipart type "
            f"{root_type[:200]!r} (the metadata and bulk data form) is not supported.",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise ValidationFailed(
            "The Content-Type header has no boundary parameter.",
            code="invalid_multipart",
            fields={"Content-Type": [f"Use {expected}"]},
        )
    problem = boundary_problem(boundary)
    if problem:
        raise ValidationFailed(
            problem,
            code="invalid_multipart",
            fields={
                "Content-Type": [
                    f"Use a boundary of 1-{MAX_BOUNDARY_LENGTH} letters, digits and '()+_,-./:=? "
                    "(RFC 2046 says at most 70; longer ones are accepted up to this limit)."
                ]
            },
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


def _fail_part(index: int, code: int, reason: str, size: int = 0) -> pipeline.IngestResult:
    return pipeline.IngestResult(
        status="failed", size=size, reason_code=code, reason=f"Part {index + 1}: {reason}"
    )


class _Progress:
    """The job row as the request goes: counters and failure rows of the results made final
    since the last write, and ``heartbeat_at``. One writer (the request's thread).

    At most ``limit`` failure rows are written per job; the failures beyond are counted in the
    job's ``failed`` and ``params["failures_unlisted"]``, so that a body of 10,000 bad parts
    costs 1,000 rows, not 10,000.
    """

    def __init__(self, job: IngestJob, limit: int):
        self.job = job
        self.limit = limit
        self.pending: list[pipeline.IngestResult] = []
        self.pending_bytes = 0
        self.listed = 0
        self.unlisted = 0
        self._last_beat = time.monotonic()

    def add(self, result: pipeline.IngestResult) -> None:
        self.pending.append(result)

    def drop_pending(self) -> None:
        self.pending, self.pending_bytes = [], 0

    def write(self, **extra: Any) -> None:
        """Add the pending results to the job's counters and list their failures (one
        transaction, with ``extra`` fields), and renew the heartbeat."""
        results, received_bytes = self.pending, self.pending_bytes
        self.pending, self.pending_bytes = [], 0
        now = timezone.now()
        rows: list[IngestFailure] = []
        for r in results:
            if r.status != "failed":
                continue
            if self.listed < self.limit:
                self.listed += 1
                rows.append(
                    IngestFailure(
                        organization_id=self.job.organization_id,
                        job=self.job,
                        source=f"STOW-RS job {self.job.pk}",
                        sop_instance_uid=r.sop_instance_uid[:64],
                        reason_code=r.reason_code,
                        reason=r.reason[:500],
                        created_at=now,
                    )
                )
            else:
                self.unlisted += 1
        fields: dict[str, Any] = {"heartbeat_at": now, **extra}
        if results or received_bytes:
            stored = [r for r in results if r.status == "stored"]
            fields.update(
                received=F("received") + len(results),
                stored=F("stored") + len(stored),
                duplicate=F("duplicate") + sum(1 for r in results if r.status == "duplicate"),
                failed=F("failed") + sum(1 for r in results if r.status == "failed"),
                bytes_received=F("bytes_received") + received_bytes,
                bytes_stored=F("bytes_stored") + sum(r.size for r in stored),
            )
        if self.unlisted:
            fields["params"] = {"failures_unlisted": self.unlisted}
        with transaction.atomic():
            IngestJob.objects.filter(pk=self.job.pk).update(**fields)
            if rows:
                IngestFailure.objects.bulk_create(rows)
        self._last_beat = time.monotonic()

    def alive(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, renewing the heartbeat every ``HEARTBEAT_SECONDS`` while they come."""
        for chunk in chunks:
            if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
                IngestJob.objects.filter(pk=self.job.pk).update(heartbeat_at=timezone.now())
                self._last_beat = time.monotonic()
            yield chunk


def _spool_part(
    *, org: Organization, part: Part, root_type: str, store: ObjectStore, progress: _Progress
) -> pipeline.Spooled | pipeline.IngestResult:
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
            f"Content-Type {media_type[:200]!r} is not supported; every part must be {DICOM} "
            "(a DICOM Part 10 file).",
            part.size,
        )
    chunks = progress.alive(part.chunks())
    first = next(chunks, b"")
    if not first:  # an empty part costs no spool file
        if part.error:
            return _fail_part(part.index, CANNOT_UNDERSTAND, part.error)
        return _fail_part(part.index, CANNOT_UNDERSTAND, "The part is empty (0 bytes).")
    try:
        spooled = pipeline.spool_chunks(store, itertools.chain([first], chunks))
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


def _spare(spooled: pipeline.Spooled) -> pipeline.Spooled | None:
    """A second name of a spool file (a hard link: no copy), for ingesting it again should its
    batch raise: ``instances_ingest`` consumes its spool files even when it raises."""
    path = spooled.path.with_name(spooled.path.name + ".spare")
    try:
        os.link(spooled.path, path)
    except OSError as exc:
        logger.warning("stow: no spare link of a spool file (%s)", exc.strerror or exc)
        return None
    return pipeline.Spooled(path=path, size=spooled.size, sha256=spooled.sha256)


def _ingest_isolated(
    *,
    org: Organization,
    batch: list[pipeline.Spooled],
    expected_study_uid: str | None,
    location: StorageLocation,
    quota: pipeline.Quota,
    job_id: int,
) -> list[pipeline.IngestResult]:
    """``pipeline.instances_ingest``, with an unexpected error confined to the part that raises it.

    The pipeline never raises for bad input; should it raise anyway (a bug, a header value the
    database refuses), the batch's parts are ingested again one by one from their spare links,
    and a part that raises on its own fails with 0x0110 and a logged error. Every spool file and
    spare link is consumed. Whatever the batch stored before raising, the pipeline removed
    (objects of a failed index transaction are deleted) or indexed (it then comes back as a
    duplicate of itself).
    """
    spares = [_spare(spooled) for spooled in batch]
    try:
        try:
            return pipeline.instances_ingest(
                org=org,
                batch=batch,
                expected_study_uid=expected_study_uid,
                location=location,
                quota=quota,
            )
        except Exception:
            logger.exception(
                "stow job %s of org %s: a batch of %d part(s) raised; ingesting them one by one",
                job_id,
                org.pk,
                len(batch),
            )
        results: list[pipeline.IngestResult] = []
        for spare in spares:
            if spare is None:
                results.append(
                    pipeline.IngestResult(
                        status="failed", reason_code=PROCESSING_FAILURE, reason=INTERNAL_ERROR
                    )
                )
                continue
            try:
                results.append(
                    pipeline.instance_ingest(
                        org=org,
                        spooled=spare,
                        expected_study_uid=expected_study_uid,
                        location=location,
                        quota=quota,
                    )
                )
            except Exception:
                logger.exception("stow job %s of org %s: a part raised", job_id, org.pk)
                results.append(
                    pipeline.IngestResult(
                        status="failed",
                        size=spare.size,
                        reason_code=PROCESSING_FAILURE,
                        reason=INTERNAL_ERROR,
                    )
                )
        return _objects_checked(org=org, results=results, job_id=job_id)
    finally:
        for spooled, spare in zip(batch, spares, strict=True):
            spooled.path.unlink(missing_ok=True)
            if spare is not None:
                spare.path.unlink(missing_ok=True)


def _objects_checked(
    *, org: Organization, results: list[pipeline.IngestResult], job_id: int
) -> list[pipeline.IngestResult]:
    """After a batch raised: success only for instances whose object is in the store.

    The batch may have raised after its index transaction committed (a follow-up that failed at
    commit) and then removed objects it had stored, and the parts ingested again come back as
    duplicates of the index rows: the sender must not be told that such an instance is stored.
    """
    ids = [r.instance_id for r in results if r.ok and r.instance_id]
    instances = {
        i.pk: i for i in Instance.objects.for_org(org).select_related("location").filter(pk__in=ids)
    }
    checked: list[pipeline.IngestResult] = []
    for r in results:
        instance = instances.get(r.instance_id or 0) if r.ok else None
        if instance is not None:
            try:
                found = store_for(instance.location).head(
                    key=instance.object_key, tier=instance.tier
                )
            except StorageUnavailable:
                found = None
            if found is None or found.size != instance.size_bytes:
                logger.error(
                    "stow job %s of org %s: instance %s is indexed but its object is missing",
                    job_id,
                    org.pk,
                    instance.pk,
                )
                r = pipeline.IngestResult(
                    status="failed",
                    sop_instance_uid=r.sop_instance_uid,
                    sop_class_uid=r.sop_class_uid,
                    study_uid=r.study_uid,
                    series_uid=r.series_uid,
                    size=r.size,
                    reason_code=PROCESSING_FAILURE,
                    reason=OBJECT_MISSING,
                )
        checked.append(r)
    return checked


class _Batch:
    """Spooled parts waiting to be ingested.

    Bounded in bytes (the spool files are on local disk) and, through the parts limit, in
    parts. Held back until the body ends (or the bytes bound is reached) so that a body found
    to carry too many parts is refused before anything of it was ingested.
    """

    def __init__(self, outcome: StowOutcome, progress: _Progress) -> None:
        self.outcome = outcome
        self.progress = progress
        self.slots: list[tuple[int, int, pipeline.Spooled]] = []  # (result slot, part index, file)
        self.bytes = 0

    def full(self) -> bool:
        return self.bytes >= BATCH_BYTES

    def add(self, part_index: int, spooled: pipeline.Spooled) -> None:
        self.outcome.results.append(_fail_part(part_index, PROCESSING_FAILURE, "Not ingested."))
        self.slots.append((len(self.outcome.results) - 1, part_index, spooled))
        self.bytes += spooled.size

    def flush(
        self,
        *,
        org: Organization,
        expected_study_uid: str | None,
        location: StorageLocation,
        quota: pipeline.Quota,
    ) -> None:
        """Ingest the waiting parts ``BATCH_PARTS`` at a time; the job's counters are written
        after each (a killed worker leaves them true up to its last batch)."""
        while self.slots:
            slots, self.slots = self.slots[:BATCH_PARTS], self.slots[BATCH_PARTS:]
            self.bytes -= sum(spooled.size for _, _, spooled in slots)
            try:
                results = _ingest_isolated(
                    org=org,
                    batch=[spooled for _, _, spooled in slots],
                    expected_study_uid=expected_study_uid,
                    location=location,
                    quota=quota,
                    job_id=self.progress.job.pk,
                )
            except BaseException:
                for _, _, spooled in slots:
                    spooled.path.unlink(missing_ok=True)
                raise
            for (slot, part_index, _), result in zip(slots, results, strict=True):
                if result.status == "failed":
                    result.reason = f"Part {part_index + 1}: {result.reason}"
                self.outcome.results[slot] = result
                self.progress.add(result)
            self.progress.write()
        self.bytes = 0

    def discard(self) -> None:
        for _, _, spooled in self.slots:
            spooled.path.unlink(missing_ok=True)
        self.slots = []
        self.bytes = 0


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
    the boundary does not occur in it, or it has no parts. Raises ``PayloadTooLarge`` (413, the
    job failed with the reason) when it has more than ``settings.STOW_MAX_PARTS`` parts.
    """
    cpu_started = time.thread_time()
    limit = int(settings.STOW_MAX_PARTS)
    reader = MultipartReader(body.read, body.boundary, max_parts=limit)
    parts = reader.parts()
    try:
        first = next(parts)
    except MultipartError as exc:
        raise ValidationFailed(str(exc), code="invalid_multipart") from None
    location = pipeline.location_primary(org)
    store = store_for(location)
    quota = pipeline.Quota(org)
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
        heartbeat_at=now,
    )
    progress = _Progress(job, int(settings.INGEST_MAX_FAILURE_ROWS))
    batch = _Batch(outcome, progress)

    def flush() -> None:
        batch.flush(org=org, expected_study_uid=expected_study_uid, location=location, quota=quota)

    try:
        part: Part | None = first
        while part is not None:
            spooled = _spool_part(
                org=org, part=part, root_type=body.root_type, store=store, progress=progress
            )
            if isinstance(spooled, pipeline.IngestResult):
                outcome.results.append(spooled)
                outcome.bytes_received += spooled.size
                progress.pending_bytes += spooled.size
                progress.add(spooled)
            else:
                outcome.bytes_received += spooled.size
                progress.pending_bytes += spooled.size
                batch.add(part.index, spooled)
                if batch.full():
                    flush()
            part = next(parts, None)
        flush()
    except TooManyParts as exc:
        batch.discard()
        progress.drop_pending()
        _job_refuse(org=org, actor=actor, outcome=outcome, job=job, reason=str(exc))
        stored = outcome.count("stored") + outcome.count("duplicate")
        kept = (
            f" {stored} instance(s) sent before the limit was reached were stored (more than "
            f"{BATCH_BYTES // 2**20} MiB of parts had arrived); send the rest in new requests."
            if stored
            else " Nothing of it was stored."
        )
        raise PayloadTooLarge(
            str(exc) + kept,
            fields={"body": [f"Send at most {limit:,} parts per request."]},
        ) from None
    except Exception as exc:
        batch.discard()
        IngestJob.objects.filter(pk=job.pk).update(
            state=IngestJob.State.FAILED,
            finished_at=timezone.now(),
            error=f"Internal error after {len(outcome.results)} part(s): {type(exc).__name__}",
        )
        raise
    _job_finish(org=org, actor=actor, outcome=outcome, progress=progress, cpu_started=cpu_started)
    return outcome


def _job_finish(
    *,
    org: Organization,
    actor: Actor,
    outcome: StowOutcome,
    progress: _Progress,
    cpu_started: float,
) -> None:
    """The last counts and failures, the final state, compute metering and the audit event: one
    transaction."""
    job = progress.job
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
        progress.write(
            state=IngestJob.State.FAILED
            if failed == len(outcome.results)
            else IngestJob.State.DONE,
            total_files=len(outcome.results),
            total_bytes=outcome.bytes_received,
            finished_at=now,
            error=(f"All {failed} instance(s) failed." if failed == len(outcome.results) else ""),
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
        if progress.unlisted:
            counts["failures_unlisted"] = progress.unlisted
        audit_record(
            org=org,
            actor=actor,
            action="ingest.stow",
            target=job,
            target_label=f"STOW-RS job {job.pk}",
            details=counts,
        )


def _job_refuse(
    *, org: Organization, actor: Actor, outcome: StowOutcome, job: IngestJob, reason: str
) -> None:
    """A body with too many parts: the job fails with the reason. Its counters keep what was
    ingested before the limit was found (nothing, unless the parts before it held more than
    ``BATCH_BYTES``); the parts still waiting were discarded, unread ones never read."""
    now = timezone.now()
    with transaction.atomic():
        IngestJob.objects.filter(pk=job.pk).update(
            state=IngestJob.State.FAILED,
            finished_at=now,
            heartbeat_at=now,
            error=f"Refused: {reason}"[:1000],
        )
        audit_record(
            org=org,
            actor=actor,
            action="ingest.stow",
            target=job,
            target_label=f"STOW-RS job {job.pk}",
            details={"refused": "too_many_parts", "parts_read": len(outcome.results)},
        )


def stow_response_body(
    outcome: StowOutcome, *, base: str, expected_study_uid: str | None
) -> dict[str, Any]:
    """PS3.18 10.5.3 Store Instances Response Module as DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    unidentified = 0
    not_listed: dict[int, int] = {}  # failure reason -> parts
    studies = set()
    for r in outcome.results:
        if not r.ok and not r.sop_instance_uid:
            unidentified += 1
            if unidentified > MAX_UNIDENTIFIED_FAILURES:
                not_listed[r.reason_code] = not_listed.get(r.reason_code, 0) + 1
                continue
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
    for code, count in sorted(not_listed.items()):
        failed.append(
            {
                dj.REFERENCED_SOP_CLASS_UID: _optional_uid(""),
                dj.REFERENCED_SOP_INSTANCE_UID: _optional_uid(""),
                dj.FAILURE_REASON: dj.element("US", code),
                dj.ERROR_COMMENT: dj.element(
                    "LO",
                    f"{count:,} more parts failed with this reason (not listed one by one: "
                    f"only the first {MAX_UNIDENTIFIED_FAILURES:,} parts that are no "
                    "identifiable instance are).",
                ),
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
