"""What each admitted DICOM association did: the record behind the portal's DICOM connections
page and ``GET /api/v1/dicom-associations/``.

**Recording.** The listener (``archive.dimse.listener``) opens an ``AssociationRecord`` when it
admits an association and closes it when the association ends; in between its handlers report
each operation: C-FIND (``find_observed`` wraps the handler's responses), C-MOVE and C-GET
(``retrieve_finished``, the last step of ``archive.dimse.retrieve``), storage commitment (the
listener's N-ACTION handler, ``commitment_noted`` naming the ``StorageCommitment`` row), C-ECHO
and C-STORE (counted per association, never a row per instance). An ``AssociationRecord`` is
changed only from its association's thread.

Nothing of this runs on the database in a DIMSE handler: each report is put on the listener's
``Recorder`` queue (a few microseconds) and one writer thread per listener writes the
``DicomAssociation`` and ``DicomOperation`` rows in order. A C-STORE costs a few counter updates
in memory; the C-STOREs and C-ECHOs of an association are written as one row each when the
association ends, and every ``AGGREGATE_SECONDS`` while it goes on, so that a long association
shows its progress. Recording never fails an operation: every error is logged and dropped; a
full queue (the database down for long) drops the report and counts it (``Recorder.dropped``).

**No patient data** (invariant: no PHI in logs, and none where it is not needed): a query keeps
its information model, level and the names of the keys that carried a value, never the values;
a retrieve how many UIDs it named per level and whether a PatientID was given; the Error Comment
is the one sent to the peer.

**Reads** (``association_list``, ``association_get``, ``operations_of``, ``operations_recent``)
are scoped to one organization; another organization's association is not found.

**Retention**: ``activity_purge`` deletes associations (and their operations) that started more
than ``DIMSE_ACTIVITY_RETENTION_DAYS`` ago, in bounded batches (the beat task
``archive.tasks.dimse_activity_purge``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from archive.dimse.indexer import db_serial
from archive.models import DicomAssociation, DicomOperation
from tenants.errors import NotFound
from tenants.models import Organization

logger = logging.getLogger("archive.dimse")

# The writer's queue: past this many unwritten reports, new ones are dropped (and counted).
QUEUE_MAX = 10_000
# The C-STOREs and C-ECHOs of a running association are written at most this often.
AGGREGATE_SECONDS = 30.0
# The writer's idle database connection is closed after this many seconds without a report.
IDLE_CLOSE_SECONDS = 5.0
# Matching keys kept per query (a hostile identifier may carry thousands of elements).
MAX_KEYS = 32
COMMENT_MAX = 500
PURGE_BATCH = 5_000
ENDED_EARLY = "The association ended before the final response."

Kind = DicomOperation.Kind
Outcome = DicomOperation.Outcome
End = DicomAssociation.End

PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
CANCEL_STATUS = 0xFE00
# Warnings outside 0xBxxx (PS3.7 C.4): attribute list, attribute value out of range, and the
# C-STORE coercion and element-discarded warnings.
_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
# Worst first when an association's outcome is the worst of its operations.
_RANK = {"": 0, Outcome.SUCCESS: 1, Outcome.CANCELLED: 2, Outcome.WARNING: 3, Outcome.FAILURE: 4}
_END = {"released": End.RELEASED, "aborted": End.ABORTED}

# The Query/Retrieve information models (PS3.4 C.6) by their FIND, MOVE and GET SOP classes.
MODEL_NAMES = {
    "1.2.840.10008.5.1.4.1.2.1.1": "Patient Root",
    "1.2.840.10008.5.1.4.1.2.1.2": "Patient Root",
    "1.2.840.10008.5.1.4.1.2.1.3": "Patient Root",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root",
    "1.2.840.10008.5.1.4.1.2.2.2": "Study Root",
    "1.2.840.10008.5.1.4.1.2.2.3": "Study Root",
}
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


def outcome_of(status: int | None) -> str:
    """The outcome of a final DIMSE status (PS3.7 C.1): 0x0000 success, 0xFE00 cancelled,
    0xBxxx and the few other warning codes warning, anything else (or none) failure."""
    if status == 0x0000:
        return Outcome.SUCCESS
    if status == CANCEL_STATUS:
        return Outcome.CANCELLED
    if status is not None and (0xB000 <= status <= 0xBFFF or status in _WARNINGS):
        return Outcome.WARNING
    return Outcome.FAILURE


def _status_of(answer: Any) -> tuple[int | None, str]:
    """The status code and Error Comment of a handler's answer (an int or a status Dataset)."""
    if isinstance(answer, Dataset):
        status = answer.get("Status")
        comment = answer.get("ErrorComment", "")
        return (int(status) if status is not None else None), str(comment or "")
    try:
        return int(answer), ""
    except (TypeError, ValueError):
        return None, ""


def _now_minus(monotonic_start: float | None) -> datetime:
    now = timezone.now()
    if monotonic_start is None:
        return now
    return now - timedelta(seconds=max(0.0, time.monotonic() - monotonic_start))


# --- what is written --------------------------------------------------------------------------


@dataclass
class OperationRecord:
    """One operation's row as it will be written (no database object in the DIMSE path)."""

    kind: str
    started_at: datetime = field(default_factory=timezone.now)
    finished_at: datetime | None = None
    status: int | None = None
    outcome: str = Outcome.SUCCESS
    model: str = ""
    level: str = ""
    keys: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    matches: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    bytes: int | None = None
    destination_ae: str = ""
    comment: str = ""
    commitment_id: int | None = None
    ingest_job_id: int | None = None
    # C-ECHO and C-STORE: one row per association, written again as it grows.
    aggregate_key: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "status": self.status,
            "outcome": self.outcome,
            "model": self.model[:16],
            "level": self.level[:8],
            "keys": self.keys[:MAX_KEYS],
            "details": self.details,
            "matches": self.matches,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "bytes": self.bytes,
            "destination_ae": self.destination_ae[:16],
            "comment": self.comment[:COMMENT_MAX],
            "commitment_id": self.commitment_id,
            "ingest_job_id": self.ingest_job_id,
        }


@dataclass(frozen=True)
class _Opened:
    key: str
    org_id: int
    dicom_ae_id: int | None
    called_ae: str
    calling_ae: str
    address: str
    started_at: datetime


@dataclass(frozen=True)
class _Operation:
    key: str
    operation: OperationRecord
    counts: dict[str, dict[str, int]]
    outcome: str


@dataclass(frozen=True)
class _Closed:
    key: str
    ended_at: datetime
    end: str
    counts: dict[str, dict[str, int]]
    outcome: str


class _Aggregate:
    """The C-ECHOs or C-STOREs of one association, counted as they are answered."""

    def __init__(self, kind: str):
        self.row = OperationRecord(kind=kind, aggregate_key=uuid.uuid4().hex)
        self.row.completed = self.row.failed = self.row.warning = 0
        self.written_at = 0.0  # monotonic; 0: never
        self.changed = True

    def count(self, status: int | None, comment: str) -> str:
        row = self.row
        row.finished_at = timezone.now()
        outcome = outcome_of(status)
        if outcome == Outcome.SUCCESS:
            row.completed = (row.completed or 0) + 1
        elif outcome == Outcome.WARNING:
            row.warning = (row.warning or 0) + 1
            row.status, row.comment = status, comment
        else:
            row.failed = (row.failed or 0) + 1
            row.status, row.comment = status, comment
        if row.status is None:
            row.status = 0x0000
        row.outcome = self.outcome
        self.changed = True
        return outcome

    @property
    def outcome(self) -> str:
        """Success while everything succeeded; failure when nothing did; else warning."""
        row = self.row
        if not row.failed and not row.warning:
            return Outcome.SUCCESS
        if not row.completed and not row.warning:
            return Outcome.FAILURE
        return Outcome.WARNING

    def due(self) -> bool:
        return self.changed and time.monotonic() - self.written_at >= AGGREGATE_SECONDS

    def snapshot(self) -> OperationRecord:
        self.written_at = time.monotonic()
        self.changed = False
        return dataclasses.replace(self.row, details=dict(self.row.details))


class AssociationRecord:
    """What one admitted association did so far. Changed only from the association's own
    thread (pynetdicom serves one request at a time per association); the writer gets copies."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        org_id: int,
        dicom_ae_id: int | None,
        called_ae: str,
        calling_ae: str,
        address: str,
    ):
        self.recorder = recorder
        self.key = uuid.uuid4().hex
        self.org_id = org_id
        self.started_at = timezone.now()
        self.counts: dict[str, dict[str, int]] = {}
        self.worst = ""  # of the finished operations
        self.echo: _Aggregate | None = None
        self.store: _Aggregate | None = None
        self.current: OperationRecord | None = None  # the request being served
        self.closed = False
        recorder.put(
            _Opened(
                key=self.key,
                org_id=org_id,
                dicom_ae_id=dicom_ae_id,
                called_ae=called_ae,
                calling_ae=calling_ae,
                address=address,
                started_at=self.started_at,
            )
        )

    @property
    def outcome(self) -> str:
        outcomes = [self.worst] + [a.outcome for a in (self.echo, self.store) if a is not None]
        return max(outcomes, key=lambda o: _RANK.get(o, 0))

    def _counted(self, kind: str, outcome: str) -> None:
        per_kind = self.counts.setdefault(kind, {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1

    def _counts(self) -> dict[str, dict[str, int]]:
        return {kind: dict(outcomes) for kind, outcomes in self.counts.items()}

    def _put(self, operation: OperationRecord) -> None:
        self.recorder.put(
            _Operation(
                key=self.key, operation=operation, counts=self._counts(), outcome=self.outcome
            )
        )

    # -- requests (C-FIND, C-MOVE, C-GET, N-ACTION) --

    def begin(self, kind: str, **values: Any) -> OperationRecord:
        operation = OperationRecord(kind=kind, **values)
        self.current = operation
        return operation

    def finish(
        self,
        operation: OperationRecord,
        status: int | None,
        comment: str = "",
        outcome: str | None = None,
    ) -> None:
        """The operation's final status is known: count it and hand it to the writer.
        ``outcome``: when no status was sent (the association ended first)."""
        if operation.finished_at is not None:
            return  # reported already
        operation.finished_at = timezone.now()
        operation.status = status
        operation.outcome = outcome or outcome_of(status)
        operation.comment = comment or operation.comment
        if self.current is operation:
            self.current = None
        self._counted(operation.kind, operation.outcome)
        if _RANK[operation.outcome] > _RANK.get(self.worst, 0):
            self.worst = operation.outcome
        self._put(operation)

    # -- C-ECHO and C-STORE, counted --

    def echoed(self) -> None:
        """One C-ECHO answered (never raises)."""
        try:
            if self.echo is None:
                self.echo = _Aggregate(Kind.ECHO)
            self._counted(Kind.ECHO, self.echo.count(0x0000, ""))
            if self.echo.due():
                self._put(self.echo.snapshot())
        except Exception:
            logger.exception("dimse: counting a C-ECHO failed")

    def stored(self, answer: Any, *, bytes_received: int, ingest_job_id: int | None) -> None:
        """One C-STORE answered with ``answer`` (the handler's int or status Dataset); the
        association's bytes received and ingest job so far. Never raises."""
        try:
            if self.store is None:
                self.store = _Aggregate(Kind.STORE)
            status, comment = _status_of(answer)
            self._counted(Kind.STORE, self.store.count(status, comment))
            self.store.row.bytes = bytes_received
            self.store.row.ingest_job_id = ingest_job_id
            if self.store.due():
                self._put(self.store.snapshot())
        except Exception:
            logger.exception("dimse: counting a C-STORE failed")

    def close(self, outcome: str) -> None:
        """The association ended (``outcome``: released, aborted, or "" when the connection just
        closed): what is still counted, then the end."""
        if self.closed:
            return
        self.closed = True
        if self.current is not None:
            self.finish(self.current, None, ENDED_EARLY, Outcome.CANCELLED)
        for aggregate in (self.echo, self.store):
            if aggregate is not None and aggregate.changed:
                self._put(aggregate.snapshot())
        self.recorder.put(
            _Closed(
                key=self.key,
                ended_at=timezone.now(),
                end=_END.get(outcome, End.ENDED),
                counts=self._counts(),
                outcome=self.outcome,
            )
        )


# --- the writer --------------------------------------------------------------------------------


class Recorder:
    """The listener's activity writer: reports are queued by the association threads and
    written, in order, by one thread with its own database connection."""

    def __init__(self, max_queue: int = QUEUE_MAX):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._records: dict[Any, AssociationRecord] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Written by the writer thread only.
        self._associations: dict[str, tuple[int, int]] = {}  # key -> (row pk, organization)
        self._aggregate_pks: dict[str, int] = {}
        self._aggregates_of: dict[str, list[str]] = {}
        self.dropped = 0
        self._dropped_logged = 0.0

    # -- lifecycle --

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="strata-scp-activity", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (at most ``timeout`` seconds), then stop the writer."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("dimse: the activity queue stayed full; unwritten activity is lost")
            return
        thread.join(timeout)

    def wait_written(self, timeout: float = 10.0) -> bool:
        """Wait until every report queued so far is written (or failed). False on time-out."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: not self._queue.unfinished_tasks, timeout
            )

    # -- the association threads' side --

    def opened(
        self,
        assoc: Any,
        *,
        org: Organization,
        dicom_ae_id: int | None,
        called_ae: str,
        calling_ae: str,
        address: str,
    ) -> AssociationRecord | None:
        try:
            record = AssociationRecord(
                self,
                org_id=org.pk,
                dicom_ae_id=dicom_ae_id,
                called_ae=called_ae,
                calling_ae=calling_ae,
                address=address,
            )
        except Exception:
            logger.exception("dimse: recording an association failed")
            return None
        with self._lock:
            self._records[assoc] = record
        return record

    def record(self, assoc: Any) -> AssociationRecord | None:
        with self._lock:
            return self._records.get(assoc)

    def closed(self, assoc: Any, outcome: str) -> None:
        with self._lock:
            record = self._records.pop(assoc, None)
        if record is None:
            return
        try:
            record.close(outcome)
        except Exception:
            logger.exception("dimse: recording the end of an association failed")

    def put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._dropped_logged > 60:
                self._dropped_logged = now
                logger.warning(
                    "dimse: activity queue full (%d reports dropped so far)", self.dropped
                )

    # -- the writer thread --

    def _run(self) -> None:
        idle_connection = False
        while True:
            try:
                item = self._queue.get(timeout=IDLE_CLOSE_SECONDS)
            except queue.Empty:
                if idle_connection:
                    connections.close_all()  # this thread's connection only
                    idle_connection = False
                continue
            try:
                if item is None:
                    return
                with db_serial():
                    self._write(item)
                idle_connection = True
            except Exception:
                logger.exception("dimse: writing association activity failed")
                connection.close()  # a broken connection is opened again for the next one
            finally:
                self._queue.task_done()
                if item is None:
                    connections.close_all()

    def _write(self, item: Any) -> None:
        if isinstance(item, _Opened):
            self._associations[item.key] = (_association_create(item), item.org_id)
            return
        if item.key not in self._associations:  # its row could not be written: nothing to attach
            return
        pk, org_id = self._associations[item.key]
        if isinstance(item, _Operation):
            operation = item.operation
            with transaction.atomic():
                existing = self._aggregate_pks.get(operation.aggregate_key)
                if existing is not None:
                    DicomOperation.objects.filter(pk=existing).update(**operation.fields())
                else:
                    row_pk = _operation_create(org_id, pk, operation)
                    if operation.aggregate_key:
                        self._aggregate_pks[operation.aggregate_key] = row_pk
                        self._aggregates_of.setdefault(item.key, []).append(operation.aggregate_key)
                DicomAssociation.objects.filter(pk=pk).update(
                    counts=item.counts, outcome=item.outcome
                )
        elif isinstance(item, _Closed):
            DicomAssociation.objects.filter(pk=pk).update(
                ended_at=item.ended_at, end=item.end, counts=item.counts, outcome=item.outcome
            )
            del self._associations[item.key]
            for aggregate_key in self._aggregates_of.pop(item.key, []):
                self._aggregate_pks.pop(aggregate_key, None)


def _association_create(item: _Opened) -> int:
    values = {
        "organization_id": item.org_id,
        "dicom_ae_id": item.dicom_ae_id,
        "called_ae": item.called_ae[:16],
        "calling_ae": item.calling_ae[:16],
        "address": item.address[:45],
        "started_at": item.started_at,
    }
    try:
        with transaction.atomic():
            return int(DicomAssociation.objects.create(**values).pk)
    except IntegrityError:  # the AE title was deleted meanwhile: keep its title only
        values["dicom_ae_id"] = None
        with transaction.atomic():
            return int(DicomAssociation.objects.create(**values).pk)


def _operation_create(org_id: int, association_pk: int, operation: OperationRecord) -> int:
    values = operation.fields()
    try:
        with transaction.atomic():
            row = DicomOperation.objects.create(
                organization_id=org_id, association_id=association_pk, **values
            )
    except IntegrityError:  # its commitment or ingest job is gone meanwhile
        values.update(commitment_id=None, ingest_job_id=None)
        with transaction.atomic():
            row = DicomOperation.objects.create(
                organization_id=org_id, association_id=association_pk, **values
            )
    return int(row.pk)


# --- the hooks of the DIMSE handlers -----------------------------------------------------------


def record_for(assoc: Any) -> AssociationRecord | None:
    """The record of a listener's association (its ``scp.activity``), or None."""
    recorder = getattr(getattr(assoc, "scp", None), "activity", None)
    return recorder.record(assoc) if isinstance(recorder, Recorder) else None


def _has_value(element: Any) -> bool:
    value = element.value
    if element.VR == "SQ":
        return any(_has_value(e) for item in value or [] for e in item)
    if isinstance(value, bytes | bytearray):
        return value.strip(b" \0") != b""
    if isinstance(value, MultiValue | list | tuple):
        return any(str(v).strip(" \0") for v in value)
    return value is not None and str(value).strip(" \0") != ""


def _element_key(element: Any) -> tuple[str, bool] | None:
    """An identifier element's keyword and whether it carries a value; None when its value
    cannot be decoded (the handler tells the peer)."""
    with contextlib.suppress(Exception):
        keyword = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
        if keyword == "QueryRetrieveLevel":
            return keyword, bool(str(element.value or "").strip())
        return keyword, _has_value(element)
    return None


def query_summary(identifier: Dataset) -> tuple[str, list[str], int]:
    """A query identifier's QueryRetrieveLevel, the keywords of the keys with a value (never the
    values) and how many keys were sent empty (to be returned)."""
    level = ""
    keys: list[str] = []
    returned = 0
    for element in identifier:
        found = _element_key(element)
        if found is None:
            continue
        keyword, has_value = found
        if keyword == "QueryRetrieveLevel":
            level = str(element.value or "").strip()[:8].upper()
        elif keyword in _NOT_KEYS:
            continue
        elif has_value:
            if len(keys) < MAX_KEYS:
                keys.append(keyword)
        else:
            returned += 1
    return level, keys, returned


# The C-FIND being served by this thread (an association's), for ``find_counted``.
_serving = threading.local()


def find_observed(
    record: AssociationRecord | None, event: Any, responses: Iterable[tuple[Any, Any]]
) -> Iterator[tuple[Any, Any]]:
    """The C-FIND handler's responses passed through, the query recorded: its final status,
    the matches sent (the handler's count, ``find_counted``, else the pending responses that
    passed here). The operation is handed to the writer before the final response is."""
    operation = _safe(_find_begin, record, event)
    _serving.operation = operation
    passed = 0

    def finish(status: int | None, comment: str, outcome: str | None = None) -> None:
        assert operation is not None and record is not None
        if operation.matches is None:
            operation.matches = passed
        _safe(record.finish, operation, status, comment, outcome)

    try:
        for status, identifier in responses:
            if operation is not None and operation.finished_at is None:
                code, comment = _status_of(status)
                if code in PENDING_STATUSES:
                    passed += 1
                else:
                    finish(code, comment)
            yield status, identifier
    except Exception:
        if operation is not None and operation.finished_at is None:
            finish(0xC311, "Internal error.")
        raise
    finally:
        if getattr(_serving, "operation", None) is operation:
            _serving.operation = None
        if operation is not None and operation.finished_at is None:
            finish(None, ENDED_EARLY, Outcome.CANCELLED)


def find_counted(matches: int) -> None:
    """Hook of ``find``: the matches this thread's C-FIND sent (also those it sent without
    passing them through the handler's responses). Never raises."""
    operation = getattr(_serving, "operation", None)
    if operation is not None and operation.finished_at is None:
        operation.matches = matches


def _find_begin(record: AssociationRecord | None, event: Any) -> OperationRecord | None:
    if record is None:
        return None
    operation = record.begin(Kind.FIND)
    operation.model = MODEL_NAMES.get(str(getattr(event.context, "abstract_syntax", "")), "")
    try:
        level, keys, returned = query_summary(event.identifier)
    except Exception:  # the handler answers the identifier that cannot be decoded
        return operation
    operation.level, operation.keys = level, keys
    operation.details["return_keys"] = returned
    return operation


def commitment_begin(record: AssociationRecord | None, event: Any) -> OperationRecord | None:
    """Before an N-ACTION is handled: the operation, with how many instances it names."""
    if record is None:
        return None
    try:
        operation = record.begin(Kind.COMMIT)
        # Unreadable: the handler refuses it and says why.
        with contextlib.suppress(Exception):
            operation.matches = len(event.action_information.ReferencedSOPSequence)
        return operation
    except Exception:
        logger.exception("dimse: recording a storage commitment request failed")
        return None


def commitment_noted(assoc: Any, commitment_id: int) -> None:
    """Hook of ``commitment.n_action``: the request was recorded as this ``StorageCommitment``
    (its report's fate is shown with the operation)."""
    try:
        record = record_for(assoc)
        if record is not None and record.current is not None:
            record.current.commitment_id = commitment_id
    except Exception:
        logger.exception("dimse: noting a storage commitment failed")


def answered(
    record: AssociationRecord | None, operation: OperationRecord | None, answer: Any
) -> None:
    """A request's final answer (an int or a status Dataset): record it."""
    if record is None or operation is None:
        return
    status, comment = _status_of(answer)
    _safe(record.finish, operation, status, comment)


def retrieve_finished(retrieve: Any, status: int, comment: str) -> None:
    """Hook at the end of ``retrieve._execute``: the C-MOVE or C-GET as it was answered."""
    try:
        record = record_for(retrieve.event.assoc)
        if record is None:
            return
        kind = Kind.MOVE if retrieve.operation == "C-MOVE" else Kind.GET
        sop_class = str(getattr(retrieve.event.request, "AffectedSOPClassUID", "") or "")
        operation = record.begin(
            kind, started_at=_now_minus(retrieve.started), model=MODEL_NAMES.get(sop_class, "")
        )
        request = retrieve.request
        if request is not None:
            operation.level = request.level
            uids = {
                "study": len(request.study_uids),
                "series": len(request.series_uids),
                "image": len(request.sop_uids),
            }
            operation.keys = (["PatientID"] if request.patient_id else []) + [
                keyword
                for keyword, count in zip(
                    ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
                    uids.values(),
                    strict=True,
                )
                if count
            ]
            operation.details["uids"] = uids
        run = retrieve.run
        if run is not None:
            operation.matches = run.total
            operation.completed, operation.failed = run.completed, run.failed
            operation.warning, operation.bytes = run.warning, run.bytes_sent
            if run.cancelled:
                operation.details["remaining"] = run.remaining
        if kind == Kind.MOVE:
            destination = retrieve.destination
            title = destination.ae_title if destination is not None else ""
            operation.destination_ae = title or str(retrieve.event.move_destination or "").strip()
        if getattr(retrieve, "restore_id", None):
            operation.details["restore_id"] = retrieve.restore_id
        record.finish(operation, status, comment)
    except Exception:
        logger.exception("dimse: recording a retrieve failed")


def _safe(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:
        logger.exception("dimse: recording association activity failed")
        return None


# --- reads ----------------------------------------------------------------------------------


def association_list(
    *, org: Organization, ae_title: str = "", kind: str = "", outcome: str = ""
) -> QuerySet[DicomAssociation]:
    """The organization's associations, newest first. ``ae_title``: called or calling AE title
    (regardless of case); ``kind`` / ``outcome``: those with an operation of that kind and/or
    outcome."""
    associations = DicomAssociation.objects.for_org(org)
    title = ae_title.strip()
    if title:
        associations = associations.filter(Q(called_ae__iexact=title) | Q(calling_ae__iexact=title))
    if kind or outcome:
        operations = DicomOperation.objects.filter(association=OuterRef("pk"))
        if kind:
            operations = operations.filter(kind=kind)
        if outcome:
            operations = operations.filter(outcome=outcome)
        associations = associations.filter(Exists(operations))
    return associations.order_by("-id")


def association_get(*, org: Organization, association_id: int | str) -> DicomAssociation:
    try:
        return DicomAssociation.objects.for_org(org).get(pk=int(association_id))
    except (DicomAssociation.DoesNotExist, ValueError, TypeError):
        raise NotFound("Association not found.") from None


def operations_of(
    *, org: Organization, association: DicomAssociation, kind: str = "", outcome: str = ""
) -> QuerySet[DicomOperation]:
    """An association's operations, newest first."""
    operations = DicomOperation.objects.for_org(org).filter(association=association)
    if kind:
        operations = operations.filter(kind=kind)
    if outcome:
        operations = operations.filter(outcome=outcome)
    return operations.select_related("commitment").order_by("-id")


def operations_recent(
    *, org: Organization, association_ids: Iterable[int], per_association: int
) -> dict[int, list[DicomOperation]]:
    """The newest ``per_association`` operations of each association, in one query."""
    ids = list(association_ids)
    if not ids:
        return {}
    ranked = (
        DicomOperation.objects.for_org(org)
        .filter(association_id__in=ids)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("association_id")],
                order_by=[F("started_at").desc(), F("id").desc()],
            )
        )
        .filter(rank__lte=per_association)
        .select_related("commitment")
        .order_by("association_id", "-started_at", "-id")
    )
    found: dict[int, list[DicomOperation]] = {pk: [] for pk in ids}
    for operation in ranked:
        found[operation.association_id].append(operation)
    return found


# --- retention ------------------------------------------------------------------------------


def activity_purge(*, now: datetime | None = None, batch: int = PURGE_BATCH) -> int:
    """Delete at most ``batch`` associations (with their operations) that started more than
    ``DIMSE_ACTIVITY_RETENTION_DAYS`` ago; the number deleted. Safe to run twice or to kill."""
    days = int(settings.DIMSE_ACTIVITY_RETENTION_DAYS)
    cutoff = (now or timezone.now()) - timedelta(days=days)
    ids = list(
        DicomAssociation.objects.filter(started_at__lt=cutoff)
        .order_by("started_at")
        .values_list("pk", flat=True)[:batch]
    )
    if not ids:
        return 0
    with transaction.atomic():
        DicomOperation.objects.filter(association_id__in=ids).delete()
        DicomAssociation.objects.filter(pk__in=ids).delete()
    return len(ids)
