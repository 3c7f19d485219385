"""Ingest jobs: portal uploads and bulk imports from a bucket, processed in bounded batches.

Upload: the browser sends each file in chunks to ``upload_chunk_append``, which streams them into
the job's folder (constant memory, any size; an interrupted file resumes at the offset the server
has). ``upload_job_finish`` queues the job. Import: ``import_job_create`` stores the bucket's
settings (the secret encrypted) and queues the job.

Processing (``job_process``, called by ``archive.ingest.tasks.ingest_job_run``): one task run claims
the job with a conditional UPDATE on ``heartbeat_at`` (a lease), ingests a bounded batch through
``pipeline.instance_ingest``, and hands the lease on to the run it queues next, Saleor style. Every
item's counters, failure row and cursor are written in one transaction that also renews the lease,
so a second worker never processes the same job and a killed one is resumed where it stopped: by
the sweeper once the lease has expired. Zip files are expanded member by member (the cursor names
the member), in the worker, never in the web process.

What a rerun after a crash may repeat is one item: stored again, it comes back as a duplicate of
itself (ingest deduplicates by SOP Instance UID and SHA-256), so the index stays exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from archive.ingest import pipeline
from archive.ingest.dicom import CANNOT_UNDERSTAND, PROCESSING_FAILURE
from archive.locations.services import bucket_errors, endpoint_check
from archive.models import IngestFailure, IngestJob, StorageLocation
from archive.storage import ObjectStore, StorageUnavailable, store_for
from archive.storage.credentials import decrypt, encrypt
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# One upload request carries at most this much; the browser sends 8 MiB slices.
MAX_CHUNK_BYTES = 64 * 1024 * 1024
# A task run stops after this many items or seconds and queues the next run.
BATCH_ITEMS = 200
BATCH_SECONDS = 60.0
# A claim older than this is considered lost with its worker. It must cover the longest single
# step without a heartbeat: storing one 3 GB instance in the destination bucket.
LEASE = timedelta(minutes=10)
# While spooling one object, the lease is renewed this often.
HEARTBEAT_SECONDS = 30.0
# Uploads that were never finished are discarded after this long.
ABANDONED_AFTER = timedelta(hours=24)
# This many storage or source failures in a row: stop instead of failing every remaining file.
INFRA_FAILURES_TO_STOP = 10
LIST_PAGE_SIZE = 1000

INTERNAL_ERROR = "An internal error stopped this object's ingest."

UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
ZIP_MAGIC = b"PK\x03\x04"


class LeaseLost(Exception):
    """Another worker took the job over (this one was too slow) or the job was stopped."""


# --- folders -----------------------------------------------------------------------------------


def upload_root() -> Path:
    return Path(settings.ARCHIVE_SPOOL_ROOT) / "uploads"


def job_folder(job: IngestJob) -> Path:
    # The organization is part of the path, as in every object-storage key.
    return upload_root() / f"org-{job.organization_id}" / f"job-{job.pk}"


def _remove_folder(job: IngestJob) -> None:
    shutil.rmtree(job_folder(job), ignore_errors=True)


# --- creating jobs -----------------------------------------------------------------------------


def _queue(job: IngestJob) -> None:
    from archive.ingest.tasks import ingest_job_run  # deferred: tasks imports this module

    org_id, job_id = job.organization_id, job.pk
    transaction.on_commit(lambda: ingest_job_run.apply_async((org_id, job_id, None)))


def upload_job_create(*, org: Organization, actor: Actor) -> IngestJob:
    """A job that receives files until ``upload_job_finish``."""
    with transaction.atomic():
        job = IngestJob.objects.create(
            organization=org,
            kind=IngestJob.Kind.UPLOAD,
            state=IngestJob.State.PENDING,
            source="Portal upload",
            params={"phase": "receiving"},
            total_files=0,
            total_bytes=0,
            created_by=actor.user,
        )
        audit_record(org=org, actor=actor, action="ingest_job.created", target=job)
    job_folder(job).mkdir(parents=True, exist_ok=True)
    return job


@dataclass(frozen=True)
class ChunkResult:
    upload_id: str
    received: int
    complete: bool


def _receiving(job: IngestJob) -> bool:
    return (
        job.kind == IngestJob.Kind.UPLOAD
        and job.state == IngestJob.State.PENDING
        and (job.params or {}).get("phase") == "receiving"
    )


def upload_chunk_append(
    *,
    org: Organization,
    job: IngestJob,
    upload_id: str,
    name: str,
    offset: int,
    size: int,
    final: bool,
    stream: BinaryIO,
    length: int,
) -> ChunkResult:
    """Append ``length`` bytes read from ``stream`` at ``offset`` of the file ``upload_id``.

    The final chunk checks the size and moves the file into the job, with its name beside it.
    An offset other than what the server has answers ``Conflict`` with the right one in
    ``fields["offset"]``, so the browser resumes there. Reads and writes 1 MiB at a time.
    """
    if job.organization_id != org.pk:
        raise NotFound("Ingest job not found.")
    if not _receiving(job):
        raise Conflict("This upload was finished; start a new one to send more files.")
    errors: dict[str, list[str]] = {}
    if not UPLOAD_ID.match(upload_id or ""):
        errors["upload"] = ["Send an upload id of 8-64 letters, digits, '-' or '_'."]
    name = (name or "").replace("\\", "/").strip().lstrip("/")
    if not name or len(name) > 1000 or "\x00" in name:
        errors["name"] = ["Send the file's name (at most 1000 characters)."]
    if offset < 0 or size < 0 or length < 0 or offset + length > size:
        errors["offset"] = ["The chunk does not fit in the file's size."]
    if length > MAX_CHUNK_BYTES:
        errors["length"] = [f"Send at most {MAX_CHUNK_BYTES // (1024 * 1024)} MiB per request."]
    if errors:
        raise ValidationFailed("The upload request is not valid.", fields=errors)
    folder = job_folder(job)
    folder.mkdir(parents=True, exist_ok=True)
    done_marker = folder / f"{upload_id}.done"
    if done_marker.exists():
        # A retried final chunk whose answer was lost: the file is already in.
        return ChunkResult(upload_id, size, True)
    part = folder / f"{upload_id}.part"
    current = part.stat().st_size if part.exists() else 0
    if offset not in (0, current):
        raise Conflict(
            f"The server has {current} bytes of this file; continue from there.",
            code="offset_mismatch",
            fields={"offset": [str(current)]},
        )
    written = 0
    with open(part, "r+b" if part.exists() else "wb") as out:
        out.seek(offset)
        out.truncate()
        while written < length:
            chunk = stream.read(min(CHUNK, length - written))
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
    received = offset + written
    if written != length:
        raise ValidationFailed(
            "The request ended before the announced length; send the rest again.",
            code="incomplete",
            fields={"offset": [str(received)]},
        )
    if not final:
        return ChunkResult(upload_id, received, False)
    if received != size:
        raise ValidationFailed(
            f"The file is {size} bytes but {received} arrived.",
            code="incomplete",
            fields={"offset": [str(received)]},
        )
    file_id = f"{time.time_ns():020d}-{upload_id}"
    sidecar = folder / f"{file_id}.json"
    tmp = folder / f"{file_id}.json.tmp"
    tmp.write_text(json.dumps({"name": name[:1000], "size": size}))
    # The data file first, then its sidecar: the worker only picks up files with a sidecar.
    os.replace(part, folder / f"{file_id}.data")
    os.replace(tmp, sidecar)
    done_marker.write_text(file_id)
    IngestJob.objects.for_org(org).filter(pk=job.pk).update(
        total_files=Coalesce(F("total_files"), 0) + 1,
        total_bytes=Coalesce(F("total_bytes"), 0) + size,
    )
    return ChunkResult(upload_id, size, True)


def upload_job_finish(*, org: Organization, job: IngestJob, actor: Actor) -> IngestJob:
    """Stop receiving and queue the ingest. Finishing twice is harmless."""
    if job.organization_id != org.pk:
        raise NotFound("Ingest job not found.")
    with transaction.atomic():
        locked = IngestJob.objects.for_org(org).select_for_update().get(pk=job.pk)
        if locked.kind != IngestJob.Kind.UPLOAD:
            raise Conflict("Only portal uploads are finished this way.")
        if not _receiving(locked):
            return locked
        if not locked.total_files:
            raise ValidationFailed(
                "No file has arrived completely yet; nothing to ingest.",
                fields={"files": ["Send at least one file before finishing."]},
            )
        locked.params = {**(locked.params or {}), "phase": "queued"}
        locked.save(update_fields=["params"])
        audit_record(
            org=org,
            actor=actor,
            action="ingest_job.upload_finished",
            target=locked,
            details={"files": locked.total_files, "bytes": locked.total_bytes},
        )
        _queue(locked)
    return locked


@dataclass(frozen=True)
class ImportInput:
    bucket: str
    access_key_id: str
    secret_access_key: str
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""


def import_job_create(*, org: Organization, data: ImportInput, actor: Actor) -> IngestJob:
    """A bulk import of every object under ``s3://bucket/prefix``. Nothing is contacted here: the
    worker lists the bucket, and an unreachable one fails the job with the reason."""
    bucket = (data.bucket or "").strip()
    prefix = (data.prefix or "").strip()
    endpoint_url = (data.endpoint_url or "").strip().rstrip("/")
    region = (data.region or "").strip()
    errors = bucket_errors(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=(data.access_key_id or "").strip(),
        secret_access_key=data.secret_access_key or "",
    )
    if errors:
        raise ValidationFailed("The import settings are not valid.", fields=errors)
    with transaction.atomic():
        job = IngestJob.objects.create(
            organization=org,
            kind=IngestJob.Kind.IMPORT,
            state=IngestJob.State.PENDING,
            source=f"s3://{bucket}/{prefix}",
            params={
                "phase": "count",
                "bucket": bucket,
                "prefix": prefix,
                "endpoint_url": endpoint_url,
                "region": region,
                "access_key_id": data.access_key_id.strip(),
                "secret": encrypt(data.secret_access_key),
                "cursor": {"key": "", "member": None},
                "count_cursor": "",
            },
            total_files=0,
            total_bytes=0,
            created_by=actor.user,
        )
        audit_record(
            org=org,
            actor=actor,
            action="ingest_job.created",
            target=job,
            details={"source": job.source, "endpoint_url": endpoint_url, "region": region},
        )
        _queue(job)
    return job


# --- the lease ---------------------------------------------------------------------------------


class _Lease:
    """The claim on a job: ``heartbeat_at`` as this worker last wrote it.

    Every write goes through ``update``, conditional on that value; a write that finds another
    value (another worker took over after the lease expired) or a job no longer running raises
    ``LeaseLost`` and changes nothing.
    """

    def __init__(self, org: Organization, job_id: int, beat_at: datetime):
        self.org = org
        self.job_id = job_id
        self.beat_at = beat_at
        self._last_beat = time.monotonic()

    def update(self, **fields: Any) -> None:
        now = timezone.now()
        if now <= self.beat_at:  # each write's value must be new to identify it
            now = self.beat_at + timedelta(microseconds=1)
        updated = (
            IngestJob.objects.for_org(self.org)
            .filter(pk=self.job_id, heartbeat_at=self.beat_at, state=IngestJob.State.RUNNING)
            .update(heartbeat_at=now, **fields)
        )
        if not updated:
            raise LeaseLost()
        self.beat_at = now
        self._last_beat = time.monotonic()

    def keep_alive(self) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self.update()

    @property
    def token(self) -> str:
        return self.beat_at.isoformat()


def _claim(org: Organization, job_id: int, handoff: str | None) -> _Lease | None:
    now = timezone.now()
    free = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - LEASE)
    if handoff:
        # A malformed token is no token: the job is then taken only once its lease expired.
        with contextlib.suppress(ValueError):
            free |= Q(heartbeat_at=datetime.fromisoformat(handoff))
    claimed = (
        IngestJob.objects.for_org(org)
        .filter(pk=job_id, state__in=[IngestJob.State.PENDING, IngestJob.State.RUNNING])
        .filter(free)
        .update(
            state=IngestJob.State.RUNNING,
            heartbeat_at=now,
            started_at=Coalesce("started_at", Value(now, output_field=DateTimeField())),
        )
    )
    return _Lease(org, job_id, now) if claimed else None


# --- processing --------------------------------------------------------------------------------


@dataclass
class _Batch:
    org: Organization
    job: IngestJob
    lease: _Lease
    location: StorageLocation
    store: ObjectStore
    deadline: float
    items_left: int
    infra_failures: int = 0
    # Failure rows the job has; at most settings.INGEST_MAX_FAILURE_ROWS are written.
    failures_listed: int = 0

    def exhausted(self) -> bool:
        return self.items_left <= 0 or time.monotonic() >= self.deadline


class _StopJob(Exception):
    """The job cannot go on; the message says why (shown to the user)."""


def _record(
    batch: _Batch,
    *,
    source: str,
    result: pipeline.IngestResult,
    params: dict[str, Any] | None = None,
    infra: bool = False,
) -> None:
    """Count one item, keep its failure reason and move the cursor, in one transaction.

    ``infra``: the failure is the source's or the destination's, not the object's; enough of them
    in a row stop the job instead of failing every remaining object the same way.
    """
    fields: dict[str, Any] = {
        "received": F("received") + 1,
        "bytes_received": F("bytes_received") + result.size,
    }
    if result.status == "stored":
        fields["stored"] = F("stored") + 1
        fields["bytes_stored"] = F("bytes_stored") + result.size
    elif result.status == "duplicate":
        fields["duplicate"] = F("duplicate") + 1
    else:
        fields["failed"] = F("failed") + 1
    listed = result.status == "failed" and batch.failures_listed < settings.INGEST_MAX_FAILURE_ROWS
    if result.status == "failed" and not listed:
        # Counted in ``failed`` but not listed: a source of a million bad files must not write
        # a million rows.
        params = dict(params if params is not None else batch.job.params or {})
        params["failures_unlisted"] = int(params.get("failures_unlisted") or 0) + 1
    if params is not None:
        fields["params"] = params
        batch.job.params = params
    with transaction.atomic():
        batch.lease.update(**fields)
        if listed:
            batch.failures_listed += 1
            IngestFailure.objects.create(
                organization=batch.org,
                job=batch.job,
                source=source[:1000],
                sop_instance_uid=result.sop_instance_uid[:64],
                reason_code=result.reason_code,
                reason=result.reason[:500],
            )
    batch.items_left -= 1
    stored_failed = result.status == "failed" and result.reason.startswith(
        ("The object store", INTERNAL_ERROR)
    )
    if infra or stored_failed:
        batch.infra_failures += 1
        if batch.infra_failures >= INFRA_FAILURES_TO_STOP:
            where = (
                f"the storage location '{batch.location.name}' is not accepting objects"
                if stored_failed
                else "the source cannot be read"
            )
            raise _StopJob(
                f"Stopped after {INFRA_FAILURES_TO_STOP} failures in a row: {where}. "
                f"Last error: {result.reason}"
            )
    elif result.ok:
        batch.infra_failures = 0


def _failed(reason: str, *, size: int = 0, code: int = CANNOT_UNDERSTAND) -> pipeline.IngestResult:
    return pipeline.IngestResult(status="failed", size=size, reason_code=code, reason=reason)


def _heartbeat_chunks(chunks: Iterator[bytes], lease: _Lease) -> Iterator[bytes]:
    for chunk in chunks:
        lease.keep_alive()
        yield chunk


def _spool(batch: _Batch, chunks: Iterator[bytes]) -> pipeline.Spooled:
    """Spool a stream while renewing the lease. A source that fails midway (a corrupt zip
    member, a dropped connection) leaves no partial spool file behind: its error is re-raised
    after the file is removed."""
    errors: list[Exception] = []

    def guarded() -> Iterator[bytes]:
        try:
            yield from _heartbeat_chunks(chunks, batch.lease)
        except Exception as exc:  # re-raised below, once the spool file is gone
            errors.append(exc)

    spooled = pipeline.spool_chunks(batch.store, guarded())
    if errors:
        spooled.path.unlink(missing_ok=True)
        raise errors[0]
    return spooled


def _ingest_stream(batch: _Batch, read: Callable[[int], bytes]) -> pipeline.IngestResult:
    """Spool a stream (hashing it) and ingest it; an unexpected error becomes a failure."""
    spooled = _spool(batch, iter(lambda: read(CHUNK), b""))
    return _ingest_spooled(batch, spooled)


def _ingest_spooled(batch: _Batch, spooled: pipeline.Spooled) -> pipeline.IngestResult:
    try:
        return pipeline.instance_ingest(org=batch.org, spooled=spooled, location=batch.location)
    except Exception:
        # Not the sender's fault: keep going with the next file, and say so in its failure row.
        logger.exception("ingest job %s: unexpected error on one item", batch.job.pk)
        spooled.path.unlink(missing_ok=True)
        return _failed(
            INTERNAL_ERROR + " It was not stored; send it again, and if it fails again, "
            "contact support.",
            size=spooled.size,
            code=PROCESSING_FAILURE,
        )


IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "dicomdir"}


def _ignored(name: str) -> bool:
    """Files every DICOM CD or macOS zip carries that are not images (DICOMDIR is an index)."""
    path = PurePosixPath(name)
    return (
        name.endswith("/")
        or path.name.lower() in IGNORED_NAMES
        or path.name.startswith("._")
        or "__MACOSX" in path.parts
    )


def _is_zip(path: Path, name: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == ZIP_MAGIC or name.lower().endswith(".zip")


def _process_zip(
    batch: _Batch,
    *,
    path: Path,
    label: str,
    cursor: dict[str, Any],
    cursor_key: str,
    item_id: str,
) -> bool:
    """Ingest a zip's members from the cursor on. True when the whole zip is done.

    Opening the zip (member 0) replaces the zip's own count and size in the job's totals with
    its members', once: that write carries the cursor.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        result = _failed(f"Not a readable ZIP archive: {exc}", size=path.stat().st_size)
        _record(
            batch,
            source=label,
            result=result,
            params=_with_cursor(batch, cursor_key, item_id, None),
        )
        return True
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _ignored(m.filename)]
        start = cursor.get("member") if cursor.get(cursor_key) == item_id else None
        if start is None:
            params = _with_cursor(batch, cursor_key, item_id, 0)
            with transaction.atomic():
                batch.lease.update(
                    params=params,
                    total_files=Coalesce(F("total_files"), 0) + len(members) - 1,
                    total_bytes=Coalesce(F("total_bytes"), 0)
                    + sum(m.file_size for m in members)
                    - path.stat().st_size,
                )
            batch.job.params = params
            start = 0
        for index in range(int(start), len(members)):
            if batch.exhausted():
                return False
            member = members[index]
            source = f"{label}/{member.filename}"
            try:
                with archive.open(member) as handle:
                    result = _ingest_stream(batch, handle.read)
            except (
                zipfile.BadZipFile,
                zlib.error,
                RuntimeError,
                OSError,
                EOFError,
                NotImplementedError,
            ) as exc:
                # Corrupt (CRC mismatch, bad deflate data), encrypted, or an unsupported method.
                result = _failed(f"Could not read this ZIP member: {exc}", size=member.file_size)
            _record(
                batch,
                source=source,
                result=result,
                params=_with_cursor(batch, cursor_key, item_id, index + 1),
            )
    return True


def _with_cursor(batch: _Batch, key: str, item_id: str, member: int | None) -> dict[str, Any]:
    return {**(batch.job.params or {}), "cursor": {key: item_id, "member": member}}


def _process_upload(batch: _Batch) -> bool:
    """Ingest the job folder's files in arrival order. True when all are done."""
    folder = job_folder(batch.job)
    cursor = dict((batch.job.params or {}).get("cursor") or {"file": "", "member": None})
    for sidecar in sorted(folder.glob("*.json")):
        file_id = sidecar.stem
        data = folder / f"{file_id}.data"
        finished_before = file_id < cursor.get("file", "") or (
            file_id == cursor.get("file") and cursor.get("member") is None
        )
        if finished_before or not data.exists():
            data.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            continue
        if batch.exhausted():
            return False
        meta = json.loads(sidecar.read_text())
        name = str(meta.get("name") or file_id)
        if _is_zip(data, name):
            if not _process_zip(
                batch, path=data, label=name, cursor=cursor, cursor_key="file", item_id=file_id
            ):
                return False
            if (batch.job.params.get("cursor") or {}).get("member") is not None:
                # Members done: mark the file itself done before removing it.
                batch.lease.update(params=_with_cursor(batch, "file", file_id, None))
                batch.job.params = _with_cursor(batch, "file", file_id, None)
        elif _ignored(name):
            batch.lease.update(
                params=_with_cursor(batch, "file", file_id, None),
                total_files=F("total_files") - 1,
                total_bytes=F("total_bytes") - data.stat().st_size,
            )
            batch.job.params = _with_cursor(batch, "file", file_id, None)
        else:
            with open(data, "rb") as handle:
                result = _ingest_stream(batch, handle.read)
            _record(
                batch,
                source=name,
                result=result,
                params=_with_cursor(batch, "file", file_id, None),
            )
        cursor = dict(batch.job.params.get("cursor") or {})
        data.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    return True


# --- bucket import -----------------------------------------------------------------------------


def _s3_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """What a failed S3 request raises (and ``more``). botocore is loaded by then
    (``_import_client`` made the client); importing it here keeps it out of the processes that
    never import a bucket."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, *more)


def _import_client(params: dict[str, Any]) -> Any:
    # boto3 and botocore (some 34 MB) load with the first bucket import, not in every web worker
    # that imports this module for its views.
    import boto3
    from botocore.config import Config

    from archive.storage.s3 import guard_client

    problem = endpoint_check(params.get("endpoint_url", ""))
    if problem:
        raise _StopJob(problem)
    try:
        secret = decrypt(params.get("secret", ""))
    except ValueError as exc:
        raise _StopJob(str(exc)) from None
    # Every connection checked and pinned to the checked address (tenants.netguard).
    return guard_client(
        boto3.client(
            "s3",
            endpoint_url=params.get("endpoint_url") or None,
            region_name=params.get("region") or None,
            aws_access_key_id=params.get("access_key_id") or None,
            aws_secret_access_key=secret or None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                proxies={},  # direct, never an environment proxy
            ),
        )
    )


def _where(params: dict[str, Any]) -> str:
    return f"s3://{params.get('bucket')}/{params.get('prefix', '')}"


def _list_error(params: dict[str, Any], exc: Exception) -> _StopJob:
    return _StopJob(f"Could not list {_where(params)}: {exc}")


def _pages(client: Any, params: dict[str, Any], start_after: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    kwargs: dict[str, Any] = {"Bucket": params["bucket"], "Prefix": params.get("prefix", "")}
    if start_after:
        kwargs["StartAfter"] = start_after
    pages = paginator.paginate(**kwargs, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
    try:
        yield from pages
    except _s3_errors() as exc:
        raise _list_error(params, exc) from None


def _process_import_count(batch: _Batch, client: Any) -> bool:
    """First phase: count the objects and bytes (for progress and ETA). True when counted."""
    params = dict(batch.job.params)
    for page in _pages(client, params, params.get("count_cursor", "")):
        objects = [o for o in page.get("Contents", []) if not _ignored(o["Key"])]
        last = (
            page["Contents"][-1]["Key"] if page.get("Contents") else params.get("count_cursor", "")
        )
        params = {**params, "count_cursor": last}
        batch.lease.update(
            params=params,
            total_files=Coalesce(F("total_files"), 0) + len(objects),
            total_bytes=Coalesce(F("total_bytes"), 0) + sum(int(o["Size"]) for o in objects),
        )
        batch.job.params = params
        if time.monotonic() >= batch.deadline:
            return False
    params = {**params, "phase": "ingest"}
    batch.lease.update(params=params)
    batch.job.params = params
    return True


def _process_import(batch: _Batch, client: Any) -> bool:
    """Ingest the bucket's objects in key order after the cursor. True when all are done."""
    cursor = dict(batch.job.params.get("cursor") or {})
    # A zip the last run stopped inside: finish it before listing on.
    unfinished_zip = cursor.get("key") and cursor.get("member") is not None
    if unfinished_zip and not _import_object(batch, client, cursor["key"], 0):
        return False
    start_after = str((batch.job.params.get("cursor") or {}).get("key") or "")
    for page in _pages(client, batch.job.params, start_after):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if batch.exhausted():
                return False
            if _ignored(key):
                batch.lease.update(params=_with_cursor(batch, "key", key, None))
                batch.job.params = _with_cursor(batch, "key", key, None)
                continue
            if not _import_object(batch, client, key, int(obj["Size"])):
                return False
    return True


def _import_object(batch: _Batch, client: Any, key: str, size: int) -> bool:
    params = batch.job.params
    label = f"s3://{params['bucket']}/{key}"
    try:
        body = client.get_object(Bucket=params["bucket"], Key=key)["Body"]
    except _s3_errors() as exc:
        result = _failed(f"Could not read the object: {exc}", size=size, code=PROCESSING_FAILURE)
        _record(
            batch,
            source=label,
            result=result,
            params=_with_cursor(batch, "key", key, None),
            infra=True,
        )
        return True
    try:
        spooled = _spool(batch, body.iter_chunks(CHUNK))
    except _s3_errors(OSError) as exc:
        result = _failed(f"Reading the object failed: {exc}", size=size, code=PROCESSING_FAILURE)
        _record(
            batch,
            source=label,
            result=result,
            params=_with_cursor(batch, "key", key, None),
            infra=True,
        )
        return True
    finally:
        body.close()
    if _is_zip(spooled.path, key):
        try:
            cursor = dict(params.get("cursor") or {})
            finished = _process_zip(
                batch, path=spooled.path, label=label, cursor=cursor, cursor_key="key", item_id=key
            )
        finally:
            spooled.path.unlink(missing_ok=True)
        if finished:
            batch.lease.update(params=_with_cursor(batch, "key", key, None))
            batch.job.params = _with_cursor(batch, "key", key, None)
        return finished
    result = _ingest_spooled(batch, spooled)
    _record(batch, source=label, result=result, params=_with_cursor(batch, "key", key, None))
    return True


# --- the task's entry point --------------------------------------------------------------------


def _finish(batch: _Batch, *, error: str = "") -> None:
    params = {k: v for k, v in (batch.job.params or {}).items() if k != "secret"}
    batch.lease.update(
        state=IngestJob.State.FAILED if error else IngestJob.State.DONE,
        finished_at=timezone.now(),
        error=error[:1000],
        params=params,
    )
    if batch.job.kind == IngestJob.Kind.UPLOAD:
        _remove_folder(batch.job)


def job_process(*, org: Organization, job_id: int, handoff: str | None = None) -> str | None:
    """Process one bounded batch of a job. Returns the lease token for the next run to take
    over, or None when the job is finished (or another worker holds it)."""
    job = IngestJob.objects.for_org(org).filter(pk=job_id).first()
    if job is None or job.state in (IngestJob.State.DONE, IngestJob.State.FAILED):
        return None
    if job.kind not in (IngestJob.Kind.UPLOAD, IngestJob.Kind.IMPORT) or _receiving(job):
        return None
    lease = _claim(org, job_id, handoff)
    if lease is None:
        return None
    job.refresh_from_db()
    location = pipeline.location_primary(org)
    batch = _Batch(
        org=org,
        job=job,
        lease=lease,
        location=location,
        store=store_for(location),
        deadline=time.monotonic() + BATCH_SECONDS,
        items_left=BATCH_ITEMS,
        failures_listed=IngestFailure.objects.filter(job=job).count(),
    )
    try:
        if job.kind == IngestJob.Kind.UPLOAD:
            done = _process_upload(batch)
        else:
            client = _import_client(job.params)
            done = job.params.get("phase") != "count" or _process_import_count(batch, client)
            done = done and _process_import(batch, client)
        if not done:
            return lease.token
        _finish(batch)
    except _StopJob as exc:
        logger.warning("ingest job %s of org %s stopped", job_id, org.pk)
        _finish(batch, error=str(exc))
    except LeaseLost:
        logger.warning("ingest job %s: lease lost; another run continues it", job_id)
    except StorageUnavailable as exc:
        _finish(batch, error=f"The storage location failed: {exc}")
    except Exception:
        # A bug or an outage, not bad input: stop with a clear state rather than resume and fail
        # the same way every lease period. Rerunning is safe: stored images become duplicates.
        logger.exception("ingest job %s of org %s stopped by an unexpected error", job_id, org.pk)
        with contextlib.suppress(Exception):
            _finish(
                batch,
                error="An internal error stopped the job; the images stored so far are kept. "
                "Start it again to continue: images already stored count as duplicates.",
            )
    return None


def jobs_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Beat job: resume jobs whose worker died, queue jobs whose queueing was lost, and discard
    uploads that were never finished. Queueing a job twice is harmless (the claim decides)."""
    from archive.ingest.tasks import ingest_job_run  # deferred: tasks imports this module

    now = now or timezone.now()
    counts = {"resumed": 0, "abandoned": 0}
    stale = IngestJob.objects.filter(
        kind__in=[IngestJob.Kind.UPLOAD, IngestJob.Kind.IMPORT],
        state__in=[IngestJob.State.PENDING, IngestJob.State.RUNNING],
    ).filter(
        Q(state=IngestJob.State.RUNNING, heartbeat_at__lt=now - LEASE)
        | Q(state=IngestJob.State.PENDING, created_at__lt=now - timedelta(minutes=2))
    )
    for job in stale[:500]:
        if _receiving(job):
            if job.created_at < now - ABANDONED_AFTER:
                claimed = (
                    IngestJob.objects.filter(pk=job.pk, state=IngestJob.State.PENDING)
                    .filter(params__phase="receiving")
                    .update(
                        state=IngestJob.State.FAILED,
                        finished_at=now,
                        error="The upload was never finished; its files were discarded.",
                    )
                )
                if claimed:
                    _remove_folder(job)
                    counts["abandoned"] += 1
            continue
        ingest_job_run.apply_async((job.organization_id, job.pk, None))
        counts["resumed"] += 1
    return counts


# --- STOW-RS requests that never finished ------------------------------------------------------


def stow_jobs_close(*, now: datetime | None = None, limit: int = 500) -> int:
    """Beat job: close the STOW-RS jobs whose request ended without finishing them.

    A STOW-RS job is written by the web request itself (``archive.dicomweb.stow``), which renews
    ``heartbeat_at`` after every ingested batch and every 30 s while a part arrives, and adds the
    batch's counts and failures in the same write. A job still ``running`` with no heartbeat for
    ``LEASE`` lost its worker (killed, restarted, out of memory): it is failed with the counts it
    has, which are those of every batch indexed before the worker stopped. Nothing else is
    needed: the pipeline's intent rows let the orphan cleanup remove objects stored but never
    indexed. Closing twice is harmless (the update is conditional on the state and heartbeat).
    """
    now = now or timezone.now()
    cutoff = now - LEASE
    stale = (
        IngestJob.objects.select_related("organization")
        .filter(kind=IngestJob.Kind.STOW, state=IngestJob.State.RUNNING)
        .filter(
            Q(heartbeat_at__lt=cutoff)
            | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
            | Q(heartbeat_at__isnull=True, started_at__isnull=True, created_at__lt=cutoff)
        )
        .order_by("pk")
    )
    closed = 0
    for job in stale[:limit]:
        error = (
            "Interrupted: the request ended without an answer (its web worker stopped) after "
            f"{job.received} part(s) had been processed: {job.stored} stored, {job.duplicate} "
            f"already stored, {job.failed} failed. The stored instances are kept; send the "
            "request again, and the instances already stored count as duplicates."
        )
        same_beat = (
            Q(heartbeat_at=job.heartbeat_at)
            if job.heartbeat_at is not None
            else Q(heartbeat_at__isnull=True)
        )
        with transaction.atomic():
            updated = (
                IngestJob.objects.filter(pk=job.pk, state=IngestJob.State.RUNNING)
                .filter(same_beat)
                .update(
                    state=IngestJob.State.FAILED,
                    finished_at=now,
                    total_files=F("received"),
                    total_bytes=F("bytes_received"),
                    error=error,
                )
            )
            if not updated:
                continue
            audit_record(
                org=job.organization,
                actor=Actor.system("ingest"),
                action="ingest.stow_interrupted",
                target=job,
                target_label=f"STOW-RS job {job.pk}",
                details={
                    "received": job.received,
                    "stored": job.stored,
                    "duplicate": job.duplicate,
                    "failed": job.failed,
                    "bytes": job.bytes_received,
                    "last_heartbeat": (
                        job.heartbeat_at or job.started_at or job.created_at
                    ).isoformat(),
                },
            )
        logger.warning("stow job %s of org %s closed as interrupted", job.pk, job.organization_id)
        closed += 1
    return closed
