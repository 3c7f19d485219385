"""Indexing of C-STORE objects after the listener acknowledged them.

The listener (``archive.dimse.listener``) answers a C-STORE once the object is durable and
checked: its bytes written and fsynced into a queue folder of the organization's store, its header
parsed (not DICOM, truncated, missing UIDs are refused then), the SOP Instance UID looked up (a
duplicate is answered at once, a different object under the UID refused), the series' study
compared, the quota counted. Storing and indexing, the slow part, happens here, in batches, in a
process of its own (``run_scp`` starts one; tests use a thread), so that the association's next
object is received while this one is indexed.

The queue folder is the durable record of acknowledged work: ``<spool>/cstore/<org>-<token>/``
per association, into which pynetdicom receives each data set
(``archive.dimse.listener._ReceiveFile``); a file is fsynced before its object is acknowledged
and deleted when the listener refuses it; the folder's ``job`` record names the association's
ingest job. A file leaves the folder only after the pipeline
(``archive.ingest.pipeline.instances_ingest``) has stored and indexed it, found it a duplicate, or
refused it (the refusal is then an ``IngestFailure`` of the association's job, reported after
the sender was told success: it can only happen when another association stored a different
object under the same UID at the same moment, or the quota ran out in between). When the object
store fails, the files stay and are retried every ``RETRY_SECONDS``; meanwhile the listener
answers new objects for that location with "out of resources, retry later" (a marker file in the
queue root). A listener that stops or crashes leaves its folders behind; the next start indexes
them first (``queue_recover``).

Messages from the listener, in order per association: ``Queued`` per acknowledged object, then
``Ended`` when the association is over; the job is closed (state, ``compute.seconds``, audit)
once every object queued before ``Ended`` is done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue as queue_module
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from archive.ingest.dicom import CANNOT_UNDERSTAND, PROCESSING_FAILURE, Header
from archive.ingest.pipeline import Spooled, instances_ingest, spool_existing
from archive.locations.selectors import location_primary
from archive.models import IngestFailure, IngestJob, StorageLocation
from archive.storage import ObjectStore, store_for
from billing.metering import record_usage
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger("archive.dimse")

QUEUE_DIRNAME = "cstore"
JOB_RECORD = "job"  # in a queue folder: "<job id> <location id>", once the association has a job
BATCH_MAX = 50
BATCH_MAX_BYTES = 256 * 1024 * 1024
RETRY_SECONDS = 5.0
BATCH_GATHER_SECONDS = 0.2  # how long the indexer gathers acknowledged objects into a batch
# While a location's store fails, the listener refuses new objects for it for this long after
# the last failure (A701, retry later) instead of piling them up on the listener's disk.
STORE_DOWN_SECONDS = 30.0


@dataclass(frozen=True)
class Queued:
    """One acknowledged object, its file in the job's queue folder."""

    org_id: int
    job_id: int
    location_id: int
    path: str
    size: int
    sha256: str
    header: Header | None = None  # parsed by the listener; parsed again when recovered
    recovered: bool = False  # found in a stopped listener's folder: maybe never acknowledged


@dataclass(frozen=True)
class Ended:
    """The association of ``job_id`` is over; close the job once its objects are done."""

    job_id: int
    outcome: str  # released, aborted, ended, interrupted (the listener stopped first)
    listener_cpu: float = 0.0


_SQLITE_LOCK = threading.RLock()


def db_serial() -> contextlib.AbstractContextManager[Any]:
    """On SQLite, one thread of this process at a time uses the database (the listener's and the
    indexer's threads would otherwise meet "database table is locked", which SQLite does not
    retry); on PostgreSQL, no lock."""
    return _SQLITE_LOCK if connection.vendor == "sqlite" else contextlib.nullcontext()


def queue_root(store: ObjectStore) -> Path:
    return store.spool_dir() / QUEUE_DIRNAME


def association_queue_dir(store: ObjectStore, org_id: int) -> Path:
    """A new queue folder for one association; data sets are received straight into it."""
    root = queue_root(store)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{org_id}-{uuid.uuid4().hex}"
    path.mkdir()
    _fsync_dir(root)
    return path


def queue_job_record(folder: Path, *, job_id: int, location_id: int) -> None:
    """Name the job of an association's queue folder (durably: recovery reads it)."""
    record = folder / JOB_RECORD
    with open(record, "w") as out:
        out.write(f"{job_id} {location_id}\n")
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(folder)


def queue_folder_remove(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()


def _fsync_dir(path: Path) -> None:
    """Make the names in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_down(store: ObjectStore, location_id: int) -> bool:
    """Whether the indexer found this location's store failing in the last STORE_DOWN_SECONDS."""
    try:
        stamp = (queue_root(store) / f".down-{location_id}").stat().st_mtime
    except OSError:
        return False
    return time.time() - stamp < STORE_DOWN_SECONDS


def _mark_store_down(store: ObjectStore, location_id: int, down: bool) -> None:
    marker = queue_root(store) / f".down-{location_id}"
    with contextlib.suppress(OSError):
        if down:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)


def queue_recover() -> list[Queued | Ended]:
    """The work a stopped listener left: every object in every queue folder, then the end of its
    association. Called before the listener accepts associations (their folders are new).

    A folder without a job record never acknowledged anything and is removed. In one with a
    record, files still being received when the listener stopped (never acknowledged) fail to
    parse and are discarded by the indexer (``Queued.recovered``).
    """
    messages: list[Queued | Ended] = []
    roots: set[Path] = set()
    for location in StorageLocation.objects.all():
        try:
            root = queue_root(store_for(location))
        except Exception:  # noqa: BLE001 - a location that cannot be opened has no local queue
            logger.warning("dimse: no queue folder for location %s", location.pk, exc_info=True)
            continue
        roots.add(root)
    for root in sorted(roots):
        for folder in sorted(p for p in root.glob("*-*") if p.is_dir()):
            org_id = int(folder.name.partition("-")[0] or 0)
            try:
                job_text, location_text = (folder / JOB_RECORD).read_text().split()
                job_id, location_id = int(job_text), int(location_text)
            except (OSError, ValueError):
                queue_folder_remove(folder)
                continue
            if not IngestJob.objects.filter(pk=job_id, organization_id=org_id).exists():
                logger.error("dimse: queue folder %s belongs to no ingest job; kept", folder)
                continue
            for path in sorted(folder.glob("*.dcm")):
                messages.append(
                    Queued(
                        org_id=org_id,
                        job_id=job_id,
                        location_id=location_id,
                        path=str(path),
                        size=path.stat().st_size,
                        sha256="",  # hashed again when indexed
                        recovered=True,
                    )
                )
            messages.append(Ended(job_id=job_id, outcome="interrupted"))
    return messages


@dataclass
class _Job:
    cpu: float = 0.0
    waiting: list[Queued] = field(default_factory=list)  # to retry: the object store failed
    ended: Ended | None = None


class Indexer:
    """Indexes queued objects in batches and closes jobs. Used from one thread only."""

    def __init__(self) -> None:
        self.jobs: dict[int, _Job] = {}
        self.orgs: OrderedDict[int, Organization] = OrderedDict()
        self.locations: dict[int, StorageLocation] = {}
        self.retry_at = 0.0

    @property
    def waiting(self) -> bool:
        return any(job.waiting for job in self.jobs.values())

    def handle(self, messages: list[Queued | Ended]) -> None:
        """Index the objects (grouped by job, in order), then close jobs whose end has come."""
        groups: dict[int, list[Queued]] = {}
        for message in messages:
            if isinstance(message, Queued):
                groups.setdefault(message.job_id, []).append(message)
        for job_id, items in groups.items():
            self._index(job_id, items)
        for message in messages:
            if isinstance(message, Ended):
                self.jobs.setdefault(message.job_id, _Job()).ended = message
        self._close_ready()

    def retry(self) -> None:
        """Try again the objects whose store failed."""
        if time.monotonic() < self.retry_at:
            return
        for job_id, job in list(self.jobs.items()):
            if job.waiting:
                items, job.waiting = job.waiting, []
                self._index(job_id, items)
        self._close_ready()

    def _org(self, org_id: int) -> Organization:
        org = self.orgs.get(org_id)
        if org is None:
            org = Organization.objects.get(pk=org_id)
            self.orgs[org_id] = org
            if len(self.orgs) > 256:
                self.orgs.popitem(last=False)
        return org

    def _location(self, org: Organization, location_id: int) -> StorageLocation:
        location = self.locations.get(location_id)
        if location is None:
            found = StorageLocation.objects.for_org(org).filter(pk=location_id).first()
            location = found or location_primary(org)
            self.locations[location_id] = location
        return location

    def _index(self, job_id: int, items: list[Queued]) -> None:
        job = self.jobs.setdefault(job_id, _Job())
        started = time.thread_time()
        try:
            org = self._org(items[0].org_id)
            location = self._location(org, items[0].location_id)
            store = store_for(location)
            start = 0
            while start < len(items):
                size = 0
                end = start
                while end < len(items) and end - start < BATCH_MAX and size < BATCH_MAX_BYTES:
                    size += items[end].size
                    end += 1
                self._index_batch(org, location, store, job_id, items[start:end])
                start = end
        except Exception:
            logger.exception("dimse: indexing queued objects of job %s failed; will retry", job_id)
            connections.close_all()  # a broken connection is reopened on the next try
            job.waiting.extend(i for i in items if os.path.exists(i.path))
            self.retry_at = time.monotonic() + RETRY_SECONDS
        finally:
            job.cpu += time.thread_time() - started

    def _index_batch(
        self,
        org: Organization,
        location: StorageLocation,
        store: ObjectStore,
        job_id: int,
        items: list[Queued],
    ) -> None:
        # The pipeline consumes the files it is given; it gets a second name of each, and the
        # queued file is removed only once its outcome is final.
        batch: list[Spooled] = []
        spool = store.spool_dir()
        for item in items:
            link = spool / f"{uuid.uuid4().hex}.part"
            try:
                os.link(item.path, link)
            except OSError:  # another volume: a copy
                shutil.copyfile(item.path, link)
            spooled = (
                Spooled(path=link, size=item.size, sha256=item.sha256)
                if item.sha256
                else spool_existing(link)
            )
            spooled.header = item.header
            batch.append(spooled)
        try:
            results = instances_ingest(org=org, batch=batch, location=location)
        finally:
            for spooled in batch:
                spooled.path.unlink(missing_ok=True)
        counts = {"stored": 0, "duplicate": 0, "failed": 0, "bytes_stored": 0}
        failures: list[IngestFailure] = []
        down = False
        retry: list[Queued] = []
        for item, result in zip(items, results, strict=True):
            if result.status == "failed" and result.reason_code == PROCESSING_FAILURE:
                retry.append(item)
                down = True
                continue
            Path(item.path).unlink(missing_ok=True)
            if result.status == "stored":
                counts["stored"] += 1
                counts["bytes_stored"] += result.size
            elif result.status == "duplicate":
                counts["duplicate"] += 1
            elif item.recovered and result.reason_code == CANNOT_UNDERSTAND:
                # Cut off while it was received: it was never acknowledged.
                logger.warning("dimse: discarded the incomplete %s of job %s", item.path, job_id)
            else:
                counts["failed"] += 1
                logger.error(
                    "dimse: acknowledged object %s of job %s refused by the pipeline: %s",
                    result.sop_instance_uid,
                    job_id,
                    result.reason,
                )
                failures.append(
                    IngestFailure(
                        organization=org,
                        job_id=job_id,
                        source="C-STORE (refused after it was acknowledged)",
                        sop_instance_uid=result.sop_instance_uid[:64],
                        reason_code=result.reason_code,
                        reason=(result.reason or "Refused.")[:500],
                    )
                )
        _mark_store_down(store, location.pk, down)
        if retry:
            self.jobs[job_id].waiting.extend(retry)
            self.retry_at = time.monotonic() + RETRY_SECONDS
        with transaction.atomic():
            if failures:
                IngestFailure.objects.bulk_create(failures)
            if any(counts.values()):
                IngestJob.objects.filter(pk=job_id).update(
                    heartbeat_at=timezone.now(),
                    **{name: F(name) + value for name, value in counts.items() if value},
                )

    def _close_ready(self) -> None:
        for job_id, job in list(self.jobs.items()):
            if job.ended is None or job.waiting:
                continue
            try:
                job_close(job_id, job.ended, indexer_cpu=job.cpu)
            except Exception:
                logger.exception("dimse: closing ingest job %s failed; will retry", job_id)
                connections.close_all()
                self.retry_at = time.monotonic() + RETRY_SECONDS
                continue
            del self.jobs[job_id]


def job_close(job_id: int, ended: Ended, *, indexer_cpu: float = 0.0) -> None:
    """Close a C-STORE job: state, ``compute.seconds`` (rounded up), one audit event; remove its
    queue folder. A job closed already (a rerun after a crash) is left as it is."""
    now = timezone.now()
    job = IngestJob.objects.select_related("organization").get(pk=job_id)
    released = ended.outcome == "released"
    error = ""
    if ended.outcome == "interrupted":
        error = (
            "The listener stopped during the association; objects acknowledged with success "
            "were stored, the others were not."
        )
    elif not released:
        error = (
            "The association was aborted before it was released; objects acknowledged "
            "with success are stored, the others were not."
        )
    seconds = max(1, math.ceil(ended.listener_cpu + indexer_cpu))
    params = job.params or {}
    with transaction.atomic():
        closed = IngestJob.objects.filter(pk=job_id, state=IngestJob.State.RUNNING).update(
            state=IngestJob.State.DONE if released else IngestJob.State.FAILED,
            finished_at=now,
            heartbeat_at=now,
            error=error,
        )
        if closed:
            job.refresh_from_db()
            record_usage(
                org=job.organization,
                meter="compute.seconds",
                quantity=seconds,
                at=now,
                idempotency_key=f"compute.seconds:ingest-job:{job.pk}",
            )
            calling_ae = str(params.get("calling_ae", ""))
            audit_record(
                org=job.organization,
                actor=Actor(
                    ip=params.get("address") or None,
                    label_override=f"dicom:{calling_ae}"[:255],
                ),
                action="ingest.cstore",
                target=job,
                details={
                    "called_ae": params.get("called_ae", ""),
                    "calling_ae": calling_ae,
                    "outcome": ended.outcome,
                    "received": job.received,
                    "stored": job.stored,
                    "duplicate": job.duplicate,
                    "failed": job.failed,
                    "bytes_received": job.bytes_received,
                    "bytes_stored": job.bytes_stored,
                    "compute_seconds": seconds,
                },
            )
    if params.get("queue_folder"):
        queue_folder_remove(Path(params["queue_folder"]))


def indexer_loop(inbox: Any, backlog: Any = None) -> None:
    """Serve ``inbox`` (a JoinableQueue of Queued / Ended, None to stop) until told to stop.

    Takes what is there, up to ``BATCH_MAX`` objects, so that batches grow with the load and a
    lone object is indexed at once. ``backlog`` (a shared counter) is decreased as objects are
    done, for the listener's limit on acknowledged but unindexed objects.
    """
    indexer = Indexer()
    stopping = False
    try:
        while not stopping:
            timeout = RETRY_SECONDS if indexer.waiting else None
            try:
                first = inbox.get(timeout=timeout)
            except queue_module.Empty:
                with db_serial():
                    indexer.retry()
                continue
            messages: list[Any] = [first]
            objects = 1 if isinstance(first, Queued) else 0
            # Gather for a moment: a batch costs a few statements whatever its size, and the
            # senders were answered already, so waiting costs them nothing.
            until = time.monotonic() + BATCH_GATHER_SECONDS
            while objects < BATCH_MAX and isinstance(first, Queued):
                try:
                    message = inbox.get(timeout=max(until - time.monotonic(), 0.0))
                except queue_module.Empty:
                    break
                messages.append(message)
                if message is None or isinstance(message, Ended):
                    break
                objects += isinstance(message, Queued)
            if None in messages:
                stopping = True
            work = [m for m in messages if m is not None]
            try:
                with db_serial():
                    indexer.handle(work)
                    if indexer.waiting:
                        indexer.retry()
            finally:
                done = sum(isinstance(m, Queued) for m in work)
                if backlog is not None and done:
                    with backlog.get_lock():
                        backlog.value -= done
                for _ in messages:
                    inbox.task_done()
        # Stopping: what still waits on a failing store stays in its folder for the next start.
    finally:
        connections.close_all()


class IndexerThread:
    """The indexer in a thread of the listener's process (tests, and SQLite in memory)."""

    def __init__(self, inbox: Any, backlog: Any):
        self.thread = threading.Thread(
            target=indexer_loop, args=(inbox, backlog), name="strata-scp-indexer", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()
