"""C-MOVE and C-GET SCP: the organization's instances sent to a registered destination (C-MOVE)
or back to the caller on its own association (C-GET).

Request (Patient Root and Study Root Query/Retrieve Information Models, PS3.4 C.4.2 / C.4.3):
the Identifier's QueryRetrieveLevel and the unique keys. PATIENT (Patient Root only):
PatientID. STUDY: StudyInstanceUID. SERIES: StudyInstanceUID and SeriesInstanceUID. IMAGE: those
and SOPInstanceUID. The key of the retrieve level may list several UIDs (at most
``MAX_KEY_VALUES``); the keys above it are single values. In the Patient Root model PatientID may
be left out below the PATIENT level; when given it must be the patient of the studies named.
Other attributes are ignored; a unique key of a level below the retrieve level is refused.

The identifier names instances through the same reads as WADO-RS (``archive.dicomweb.
selectors``), scoped to the called AE title's organization: another organization's UID matches
nothing, exactly like a UID that does not exist, and nothing of it is ever sent. A patient's
studies are those with exactly that PatientID, outside the trash.

Sending (``archive.dimse.sender``): one association per C-MOVE, opened with the AE title the
caller called as the calling AE title; one C-STORE sub-operation per instance, streamed from
the object store through a local spool file; the stored bytes as they are when the peer
accepted the stored transfer syntax, else decoded to Explicit (or Implicit) VR Little Endian,
else refused for that instance. A C-CANCEL is honoured between sub-operations; a caller that
goes away ends the retrieve like a C-CANCEL.

Archive tier: instances that need a restore are not sent; their restore is started (or the open
one found) exactly as a WADO-RS read does (``archive.restores.services.restore_for_read``), they
are listed as failed and the Error Comment says when the restore should be ready.

Records, once per request after the last sub-operation: ``archive.index.services.
access_record`` per study with instances sent (the access log and last-accessed times, and
``egress.bytes``: the data set bytes of every instance the peer answered, the meter WADO-RS
uses), naming the destination (C-MOVE) or the caller (C-GET); and one audit event
(``dimse.move`` / ``dimse.get``) with what was asked, to whom, and the counts.

Response statuses (PS3.4 C.4.2.1.5 and C.4.3.1.4; every failure and warning carries an Error
Comment of at most 64 characters):

    0xFF00  pending: with the remaining, completed, failed and warning counts, after the first
            and the last sub-operation and at most every ``PENDING_INTERVAL`` seconds between
    0x0000  success: every instance sent (counts; zero sub-operations never happen: see 0xC000)
    0xB000  warning: some sub-operations failed or warned, or some of the named UIDs were not
            found; Failed SOP Instance UID List
    0xFE00  cancelled (C-CANCEL): counts including the remaining ones; Failed SOP Instance UID List
    0xA702  refused, unable to perform sub-operations: every one failed (the destination cannot
            be reached or refused the association, every instance is in the archive tier, ...),
            or an internal error (retry later); Failed SOP Instance UID List
    0xA701  refused: more than 65535 instances match (retrieve by study or series)
    0xA801  refused, Move Destination unknown: not one of the organization's destinations
    0xA900  identifier does not match SOP class: unknown or missing QueryRetrieveLevel, missing
            or invalid unique key, a level the information model does not have
    0xC000  unable to process: nothing matches the identifier (not found)
    0x0124  refused, not authorised: the association was not admitted (never reached normally:
            the listener rejects such associations)

pynetdicom 3.0 drives a C-MOVE/C-GET handler as a generator that yields the data sets to send
(``Dataset`` objects only, encoded in memory, over an association it opens itself with the
listener's AE title, to an address it resolves itself) and closes with a response computed from
its own counts, without an Error Comment. The sub-operations therefore run here, during the handler's first step; the handler
then ends the way pynetdicom expects, and the closing response pynetdicom sends for the request
is replaced by the one computed here (``_replace_closing_response``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode

from archive.ae_titles.selectors import destination_for_move
from archive.ae_titles.services import DestinationUnreachable, destination_associate
from archive.dicomweb import selectors as index
from archive.dimse import activity
from archive.dimse.indexer import db_serial
from archive.dimse.peer import Peer
from archive.dimse.sender import (
    Item,
    Link,
    LinkGone,
    Prefetch,
    Spooled,
    SubOperationFailed,
    requested_contexts,
    spool_folder,
    transcode,
)
from archive.index.services import access_record
from archive.ingest.dicom import uid_problem
from archive.models import AccessEvent, DicomDestination, Instance, Series, Study
from archive.restores.selectors import bulk_instances, needs_restore, retry_after_seconds
from archive.restores.services import restore_for_read
from archive.storage import ObjectStore, store_for
from tenants.context import Actor
from tenants.errors import NotFound
from tenants.services import audit_record

logger = logging.getLogger("archive.dimse")

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# Patient Root Query/Retrieve Information Model - MOVE and - GET (PS3.4 C.6.1).
PATIENT_ROOT = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"})
# The sub-operation counts are US: a request matches at most this many instances.
MAX_SUBOPERATIONS = 65535
MAX_KEY_VALUES = 1000
ERROR_COMMENT_MAX = 64
# Pending responses: at most one per this many seconds (the first and the last always).
PENDING_INTERVAL = 0.1
# How long the peer may take or send nothing while a sub-operation runs (a C-STORE's data set
# being taken, its response awaited).
STALL_SECONDS = 120.0

PENDING = 0xFF00
SUCCESS = 0x0000
WARNING = 0xB000
CANCELLED = 0xFE00
UNABLE_TO_PERFORM = 0xA702
TOO_MANY_MATCHES = 0xA701
UNKNOWN_DESTINATION = 0xA801
IDENTIFIER_MISMATCH = 0xA900
NO_MATCH = 0xC000
NOT_AUTHORISED = 0x0124

_UID_KEYS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class Refused(Exception):
    """The request is answered with ``status`` before (or instead of) any sub-operation."""

    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status = status
        self.comment = comment


def error_comment(text: str) -> str:
    """An Error Comment (LO): 64 characters of the default repertoire, no backslash."""
    text = text.replace("\\", "/").encode("ascii", "replace").decode("ascii")
    return text if len(text) <= ERROR_COMMENT_MAX else text[: ERROR_COMMENT_MAX - 3] + "..."


def _short(uid: str) -> str:
    return uid if len(uid) <= 24 else ".." + uid[-20:]


# --- the identifier ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a C-MOVE / C-GET identifier names."""

    level: str
    patient_id: str = ""
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "patient_id": bool(self.patient_id),  # who the patient is stays out of the audit
            "study_instance_uids": list(self.study_uids[:20]),
            "series_instance_uids": list(self.series_uids[:20]),
            "sop_instance_uids": len(self.sop_uids),
        }


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """The element's values as stripped text; [] when absent or empty."""
    if keyword not in identifier:
        return []
    try:
        value = identifier[keyword].value
    except Exception:
        raise Refused(IDENTIFIER_MISMATCH, f"{keyword} cannot be read.") from None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    cleaned = [str(v).strip(" \0") for v in values if v is not None]
    return [v for v in cleaned if v]


def parse_identifier(identifier: Dataset, sop_class: str) -> Request:
    """The Request an identifier makes; Refused (0xA900) with the reason otherwise."""
    levels = _values(identifier, "QueryRetrieveLevel")
    if not levels:
        raise Refused(IDENTIFIER_MISMATCH, "QueryRetrieveLevel is missing.")
    level = levels[0].upper()
    if len(levels) > 1 or level not in LEVELS:
        raise Refused(IDENTIFIER_MISMATCH, f"Unknown QueryRetrieveLevel {levels[0][:16]!r}.")
    if level == "PATIENT" and sop_class not in PATIENT_ROOT:
        raise Refused(IDENTIFIER_MISMATCH, "The Study Root model has no PATIENT level.")
    depth = LEVELS.index(level)
    for below in LEVELS[depth + 1 :]:
        if _values(identifier, _UID_KEYS[below]):
            raise Refused(IDENTIFIER_MISMATCH, f"{_UID_KEYS[below]} is below the {level} level.")
    patient = _values(identifier, "PatientID")
    if len(patient) > 1:
        raise Refused(IDENTIFIER_MISMATCH, "PatientID must be a single value.")
    if level == "PATIENT" and not patient:
        raise Refused(IDENTIFIER_MISMATCH, "PatientID is required at the PATIENT level.")
    uids: dict[str, tuple[str, ...]] = {}
    for key_level in LEVELS[1 : depth + 1]:
        keyword = _UID_KEYS[key_level]
        values = _values(identifier, keyword)
        if not values:
            raise Refused(IDENTIFIER_MISMATCH, f"{keyword} is required at the {level} level.")
        if key_level != level and len(values) > 1:
            raise Refused(
                IDENTIFIER_MISMATCH, f"{keyword} must be one UID above the {level} level."
            )
        if len(values) > MAX_KEY_VALUES:
            raise Refused(IDENTIFIER_MISMATCH, f"At most {MAX_KEY_VALUES} UIDs in {keyword}.")
        for value in values:
            if uid_problem(value) is not None:
                raise Refused(IDENTIFIER_MISMATCH, f"{keyword} {value[:30]!r} is not a UID.")
        uids[key_level] = tuple(dict.fromkeys(values))
    return Request(
        level=level,
        patient_id=patient[0] if patient else "",
        study_uids=uids.get("STUDY", ()),
        series_uids=uids.get("SERIES", ()),
        sop_uids=uids.get("IMAGE", ()),
    )


# --- what the request names ------------------------------------------------------------------------


@dataclass
class Matches:
    instances: list[Instance] = field(default_factory=list)
    studies: dict[int, Study] = field(default_factory=dict)
    series: dict[int, Series] = field(default_factory=dict)  # SERIES and IMAGE level only
    missing: list[str] = field(default_factory=list)


def _rows(qs: QuerySet[Instance]) -> QuerySet[Instance]:
    return qs.select_related("location").defer("metadata")


def resolve(*, org: Any, request: Request) -> Matches:
    """The organization's instances the request names, in the order WADO-RS sends a study's
    (series, then instance number); UIDs that name nothing of the organization in ``missing``.
    Refused (0xA701) beyond ``MAX_SUBOPERATIONS`` instances."""
    found = Matches()
    querysets: list[QuerySet[Instance]] = []
    if request.level == "PATIENT":
        try:
            qs = bulk_instances(org=org, study=None, patient_id=request.patient_id)
        except NotFound:
            found.missing.append("patient")
        else:
            querysets.append(
                _rows(qs.select_related("study")).order_by(
                    "study__study_date",
                    "study_id",
                    "series__series_number",
                    "series_id",
                    "instance_number",
                    "id",
                )
            )
    else:
        studies: list[Study] = []
        for study_uid in request.study_uids:
            try:
                study = index.study_get(org=org, study_uid=study_uid)
            except NotFound:
                study = None
            if study is None or (request.patient_id and study.patient_id != request.patient_id):
                found.missing.append(f"study {_short(study_uid)}")
                continue
            studies.append(study)
            found.studies[study.pk] = study
        for study in studies:
            if request.level == "STUDY":
                querysets.append(_rows(index.instances_of(org=org, study=study)))
                continue
            for series_uid in request.series_uids:
                try:
                    series = index.series_get(org=org, study=study, series_uid=series_uid)
                except NotFound:
                    found.missing.append(f"series {_short(series_uid)}")
                    continue
                found.series[series.pk] = series
                qs = _rows(index.instances_of(org=org, study=study, series=series))
                if request.level == "SERIES":
                    querysets.append(qs)
                    continue
                named = qs.filter(sop_instance_uid__in=request.sop_uids)
                querysets.append(named)
                present = set(named.values_list("sop_instance_uid", flat=True))
                found.missing.extend(
                    f"instance {_short(uid)}" for uid in request.sop_uids if uid not in present
                )
    total = sum(qs.count() for qs in querysets)
    if total > MAX_SUBOPERATIONS:
        raise Refused(
            TOO_MANY_MATCHES,
            f"{total} instances match; at most {MAX_SUBOPERATIONS}: retrieve by study or series.",
        )
    seen: set[int] = set()
    for qs in querysets:
        for instance in qs:
            if instance.pk not in seen:  # a UID listed twice
                seen.add(instance.pk)
                found.instances.append(instance)
                if instance.study_id not in found.studies:
                    found.studies[instance.study_id] = instance.study
    return found


# --- the sub-operations ------------------------------------------------------------------------


@dataclass
class Run:
    """The counts of one request's sub-operations, as the responses report them."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    cancelled: bool = False
    failed_uids: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    link_failure: str = ""
    bytes_sent: int = 0
    # Per study: data set bytes the peer answered (egress), instances it took, their series.
    bytes_by_study: Counter[int] = field(default_factory=Counter)
    sent_by_study: Counter[int] = field(default_factory=Counter)
    sent_series: dict[int, set[int]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def fail(self, uid: str, reason: str) -> None:
        self.failed += 1
        self.failed_uids.append(uid)
        self.done.add(uid)
        self.reasons[reason] += 1
        logger.info("dimse: sub-operation for %s failed: %s", uid, reason)

    def sent(self, item: Item, outcome: str, size: int) -> None:
        """The peer answered the C-STORE: its data set bytes crossed the network."""
        self.done.add(item.sop_instance_uid)
        if outcome == "completed":
            self.completed += 1
        elif outcome == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(item.sop_instance_uid)
            self.reasons["The peer refused the C-STORE."] += 1
        self.bytes_sent += size
        self.bytes_by_study[item.study_id] += size
        if outcome != "failed":
            self.sent_by_study[item.study_id] += 1
            self.sent_series.setdefault(item.study_id, set()).add(item.series_id)


class Responder:
    """The C-MOVE / C-GET responses to one request on the caller's association."""

    def __init__(self, event: Any, kind: type[C_MOVE] | type[C_GET]):
        self.event = event
        self.kind = kind
        self.request = event.request
        self.context_id = int(event.context.context_id)
        self.transfer_syntax = UID(str(event.context.transfer_syntax))
        self._pending_at = 0.0

    def _primitive(self, status: int) -> C_MOVE | C_GET:
        rsp: Any = self.kind()
        rsp.MessageID = self.request.MessageID
        rsp.MessageIDBeingRespondedTo = self.request.MessageID
        rsp.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        rsp.Status = status
        return rsp

    def pending(self, run: Run) -> None:
        """A pending response, at most every ``PENDING_INTERVAL`` seconds (they are optional,
        PS3.4 C.4.2.3.1; one per instance costs as much as a small C-STORE) and for the last."""
        now = time.monotonic()
        if run.remaining and now - self._pending_at < PENDING_INTERVAL:
            return
        self._pending_at = now
        rsp = self._primitive(PENDING)
        rsp.NumberOfRemainingSuboperations = run.remaining
        rsp.NumberOfCompletedSuboperations = run.completed
        rsp.NumberOfFailedSuboperations = run.failed
        rsp.NumberOfWarningSuboperations = run.warning
        self.event.assoc.dimse.send_msg(rsp, self.context_id)
        self.keep_alive()

    def keep_alive(self) -> None:
        """The caller waits silently while sub-operations run: what is sent to it is the
        association's activity (pynetdicom only counts what it receives)."""
        timer = getattr(self.event.assoc.dul, "_idle_timer", None)
        if timer is not None:
            timer.restart()

    def final(self, status: int, comment: str = "", run: Run | None = None) -> C_MOVE | C_GET:
        rsp: Any = self._primitive(status)
        if comment and status not in (SUCCESS, PENDING):
            rsp.ErrorComment = error_comment(comment)
        if run is not None:
            if status == CANCELLED:
                rsp.NumberOfRemainingSuboperations = run.remaining
            rsp.NumberOfCompletedSuboperations = run.completed
            rsp.NumberOfFailedSuboperations = run.failed
            rsp.NumberOfWarningSuboperations = run.warning
        if status not in (SUCCESS, PENDING) and (run is not None or status == UNABLE_TO_PERFORM):
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = run.failed_uids if run is not None else []
            encoded = encode(
                identifier,
                self.transfer_syntax.is_implicit_VR,
                self.transfer_syntax.is_little_endian,
                self.transfer_syntax.is_deflated,
            )
            rsp.Identifier = BytesIO(encoded or b"")
        return rsp


def _replace_closing_response(event: Any, final: C_MOVE | C_GET) -> None:
    """Make the response pynetdicom sends after the handler's last step ``final``.

    One-shot, for this request's (not pending) response only, on this association's DIMSE
    provider; pynetdicom sends it from the same thread right after the handler's step.
    """
    dimse = event.assoc.dimse
    own = "send_msg" in vars(dimse)
    original = dimse.send_msg
    message_id = final.MessageIDBeingRespondedTo

    def send_msg(primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is type(final)
            and primitive.MessageIDBeingRespondedTo == message_id
            and primitive.Status != PENDING
        ):
            if own:
                dimse.send_msg = original
            else:
                with contextlib.suppress(AttributeError):
                    del dimse.send_msg
            primitive = final
        original(primitive, context_id)

    dimse.send_msg = send_msg


# --- one retrieve ------------------------------------------------------------------------------


def _items(instances: list[Instance]) -> list[Item]:
    stores: dict[int, ObjectStore] = {}
    items = []
    for instance in instances:
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        items.append(
            Item(
                instance_id=instance.pk,
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                size=instance.size_bytes,
                store=store,
                object_key=instance.object_key,
                tier=instance.tier,
                study_id=instance.study_id,
                series_id=instance.series_id,
            )
        )
    return items


def _restore_note(restore: Any, archived: int) -> str:
    ready = timezone.now() + timedelta(seconds=retry_after_seconds(restore))
    return f"{archived} in archive tier; restore {restore.pk} ready ~{ready:%Y-%m-%d %H:%M}Z"


@dataclass
class Retrieve:
    """One C-MOVE or C-GET request from an admitted association."""

    peer: Peer
    event: Any
    responder: Responder
    operation: str  # "C-MOVE" or "C-GET"
    request: Request | None = None
    matches: Matches | None = None
    run: Run | None = None
    destination: DicomDestination | None = None
    notes: list[str] = field(default_factory=list)
    restore_id: int | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def actor(self) -> Actor:
        return Actor(ip=self.peer.address or None, label_override=f"dicom:{self.peer.calling_ae}")

    def prepare(self) -> list[Item]:
        """Parse, resolve, start restores; the items that can be read now."""
        try:
            identifier = self.event.identifier
            for element in identifier:  # pydicom decodes lazily: errors surface here
                element.value  # noqa: B018
        except Exception:
            raise Refused(IDENTIFIER_MISMATCH, "The identifier cannot be decoded.") from None
        self.request = parse_identifier(
            identifier, str(self.event.request.AffectedSOPClassUID or "")
        )
        org = self.peer.org
        if self.operation == "C-MOVE":
            title = str(self.event.move_destination or "").strip()
            with db_serial():
                self.destination = destination_for_move(org=org, ae_title=title) if title else None
            if self.destination is None:
                raise Refused(
                    UNKNOWN_DESTINATION, f"Move destination {title[:16]!r} is not registered."
                )
        with db_serial():
            self.matches = resolve(org=org, request=self.request)
            if not self.matches.instances:
                named = ", ".join(self.matches.missing[:2]) or "nothing"
                raise Refused(NO_MATCH, f"No instance matches: {named} not found.")
            restore = restore_for_read(org=org, instances=self.matches.instances, actor=self.actor)
            now = timezone.now()
            archived_ids = {i.pk for i in self.matches.instances if needs_restore(i, now=now)}
            note = _restore_note(restore, len(archived_ids)) if restore is not None else ""
            items = _items(self.matches.instances)
        self.run = Run(total=len(self.matches.instances))
        if restore is not None and archived_ids:
            self.restore_id = restore.pk
            self.notes.append(note)
            for item in items:
                if item.instance_id in archived_ids:
                    self.run.fail(item.sop_instance_uid, note)
        return [item for item in items if item.instance_id not in archived_ids]

    def send(self, items: list[Item], link: Link, folder: Path) -> None:
        """One sub-operation per item, pending responses as ``Responder.pending`` spaces them;
        stops at a C-CANCEL or when the caller goes, fails what is left when the link goes."""
        run = self.run
        assert run is not None
        prefetch = Prefetch(items, folder)
        try:
            for position, (item, spool) in enumerate(prefetch):
                message_id = int(self.event.request.MessageID)
                if (
                    self.event.is_cancelled
                    or link.cancelled(message_id)
                    or not self.event.assoc.is_established
                ):
                    run.cancelled = True
                    return
                files: list[Spooled] = []
                try:
                    files.append(spool())
                    syntax = link.syntax_for(item.sop_class_uid, files[0].transfer_syntax)
                    if syntax != files[0].transfer_syntax:
                        files.append(transcode(files[0], syntax, folder))
                    outcome = link.send(
                        files[-1],
                        sop_class_uid=item.sop_class_uid,
                        sop_instance_uid=item.sop_instance_uid,
                    )
                except SubOperationFailed as exc:
                    run.fail(item.sop_instance_uid, exc.reason)
                except LinkGone as exc:
                    run.link_failure = exc.reason
                    for left in items[position:]:
                        run.fail(left.sop_instance_uid, exc.reason)
                    return
                except OSError as exc:
                    logger.warning("dimse: spooling %s failed: %s", item.sop_instance_uid, exc)
                    run.fail(item.sop_instance_uid, "The instance could not be read to send it.")
                else:
                    run.sent(item, outcome, files[-1].dataset_bytes)
                finally:
                    for spooled in files:
                        spooled.discard()
                self.responder.pending(run)
        finally:
            prefetch.close()

    def comment(self) -> str:
        run = self.run
        assert run is not None and self.matches is not None
        parts = list(self.notes)
        if run.link_failure:
            parts.append(run.link_failure)
        parts.extend(reason for reason in run.reasons if reason not in parts)
        if self.matches.missing:
            parts.append(
                f"not found: {', '.join(self.matches.missing[:2])}"
                + (
                    f" and {len(self.matches.missing) - 2} more"
                    if len(self.matches.missing) > 2
                    else ""
                )
            )
        return "; ".join(parts)

    def closing(self) -> tuple[int, str]:
        run = self.run
        assert run is not None and self.matches is not None
        if run.cancelled:
            return CANCELLED, "Cancelled by the caller."
        if not run.failed and not run.warning and not self.matches.missing:
            return SUCCESS, ""
        if not run.completed and not run.warning:
            return UNABLE_TO_PERFORM, self.comment()
        return WARNING, self.comment()

    def record(self, status: int, comment: str, error: str = "") -> None:
        """The access log and egress per study sent, and one audit event; retried once on a
        fresh connection (the association may have outlived its database connection)."""
        for attempt in (1, 2):
            try:
                with db_serial(), transaction.atomic():
                    self._record(status, comment, error)
                return
            except Exception:
                if attempt == 2:
                    logger.exception("dimse: recording the %s failed", self.operation)
                connection.close()

    def _record(self, status: int, comment: str, error: str) -> None:
        org = self.peer.org
        run, matches = self.run, self.matches
        request_id = uuid.uuid4().hex
        if self.destination is not None:
            to_whom = f"{self.destination.ae_title}@{self.destination.host}:{self.destination.port}"
            label = f"dicom:C-MOVE to {to_whom} by {self.peer.calling_ae}"
        else:
            to_whom = f"{self.peer.calling_ae}@{self.peer.address}"
            label = f"dicom:C-GET by {to_whom}"
        reader = Actor(ip=self.peer.address or None, label_override=label[:255])
        if run is not None and matches is not None:
            for study_id, sent_bytes in run.bytes_by_study.items():
                series_ids = run.sent_series.get(study_id, set())
                series = None
                if len(series_ids) == 1:
                    series = matches.series.get(next(iter(series_ids)))
                access_record(
                    org=org,
                    study=matches.studies[study_id],
                    series=series,
                    kind=AccessEvent.Kind.RETRIEVE,
                    actor=reader,
                    bytes_read=sent_bytes,
                    instances=run.sent_by_study[study_id],
                    request_id=f"dimse:{request_id}",
                )
        details: dict[str, Any] = {
            "operation": self.operation,
            "called_ae": self.peer.called_ae,
            "calling_ae": self.peer.calling_ae,
            "address": self.peer.address,
            "status": f"0x{status:04X}",
            "comment": comment[:500],
            "seconds": round(time.monotonic() - self.started, 3),
        }
        if error:
            details["error"] = error[:500]
        if self.request is not None:
            details["request"] = self.request.describe()
        if self.destination is not None:
            details["destination"] = {
                "ae_title": self.destination.ae_title,
                "host": self.destination.host,
                "port": self.destination.port,
                "tls": self.destination.tls,
            }
        if run is not None and matches is not None:
            details.update(
                {
                    "matched": run.total,
                    "completed": run.completed,
                    "failed": run.failed,
                    "warning": run.warning,
                    "remaining": run.remaining if run.cancelled else 0,
                    "cancelled": run.cancelled,
                    "bytes": run.bytes_sent,
                    "not_found": matches.missing[:20],
                    "failure_reasons": dict(run.reasons.most_common(10)),
                    "restore_id": self.restore_id,
                    "studies": sorted(matches.studies[s].study_uid for s in run.sent_by_study)[:50],
                }
            )
        audit_record(
            org=org,
            actor=self.actor,
            action="dimse.move" if self.operation == "C-MOVE" else "dimse.get",
            target=self.destination,
            target_type="" if self.destination is not None else "dicom_ae",
            target_label=to_whom[:255],
            details=details,
        )

    def log(self, status: int) -> None:
        run = self.run
        logger.info(
            "dimse: %s %s -> %s for org %s: status 0x%04X, %s",
            self.operation,
            self.peer.calling_ae,
            self.destination.ae_title if self.destination is not None else self.peer.calling_ae,
            self.peer.org.pk,
            status,
            (
                f"{run.completed} completed, {run.failed} failed, {run.warning} warning of "
                f"{run.total}, {run.bytes_sent} bytes"
                if run is not None
                else "no sub-operation"
            ),
        )


def _execute(peer: Peer | None, event: Any, operation: str) -> C_MOVE | C_GET:
    """Run one request to its end; the closing response."""
    responder = Responder(event, C_MOVE if operation == "C-MOVE" else C_GET)
    if peer is None:
        return responder.final(NOT_AUTHORISED, "The association was not admitted.")
    retrieve = Retrieve(peer=peer, event=event, responder=responder, operation=operation)
    status, comment, error = UNABLE_TO_PERFORM, "Internal error; please retry later.", ""
    try:
        status, comment = _perform(retrieve)
    except Refused as exc:
        status, comment = exc.status, exc.comment
    except Exception as exc:
        logger.exception("dimse: %s failed for org %s", operation, peer.org.pk)
        error = f"{type(exc).__name__}: {exc}"
        run, matches = retrieve.run, retrieve.matches
        if run is not None and matches is not None:
            for instance in matches.instances:  # whatever was not sent failed
                if instance.sop_instance_uid not in run.done:
                    run.fail(instance.sop_instance_uid, comment)
    responder.keep_alive()
    retrieve.record(status, comment, error)
    retrieve.log(status)
    activity.retrieve_finished(retrieve, status, comment)  # the DICOM connections page
    return responder.final(status, comment, retrieve.run)


def _perform(retrieve: Retrieve) -> tuple[int, str]:
    items = retrieve.prepare()
    run = retrieve.run
    assert run is not None
    if not items:
        return retrieve.closing()
    folder = spool_folder(items[0].store)
    try:
        link = _open_link(retrieve, items)
        if link is None:  # every item was failed with the reason
            return retrieve.closing()
        try:
            retrieve.send(items, link, folder)
        finally:
            link.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return retrieve.closing()


def _open_link(retrieve: Retrieve, items: list[Item]) -> Link | None:
    """The association the C-STOREs go over; None when a C-MOVE's destination cannot be
    associated with (every item is then failed with the reason)."""
    event, peer, run = retrieve.event, retrieve.peer, retrieve.run
    assert run is not None
    request = event.request
    if retrieve.operation == "C-GET":
        try:
            return Link(
                event.assoc,
                owned=False,
                stall_seconds=STALL_SECONDS,
                first_message_id=int(request.MessageID) % 65535 + 1,
            )
        except LinkGone as exc:
            run.link_failure = exc.reason
            for item in items:
                run.fail(item.sop_instance_uid, exc.reason)
            return None
    destination = retrieve.destination
    assert destination is not None
    contexts = requested_contexts((item.sop_class_uid, item.transfer_syntax_uid) for item in items)
    try:
        assoc = destination_associate(
            destination=destination, calling_ae_title=peer.called_ae, contexts=contexts
        )
    except DestinationUnreachable as exc:
        reason = str(exc)
        logger.info("dimse: C-MOVE destination %s unreachable: %s", destination.ae_title, reason)
        run.link_failure = reason
        for item in items:
            run.fail(item.sop_instance_uid, run.link_failure)
        return None
    try:
        return Link(
            assoc,
            owned=True,
            stall_seconds=STALL_SECONDS,
            originator_aet=peer.calling_ae,
            originator_id=int(request.MessageID),
        )
    except LinkGone as exc:
        assoc.abort()
        run.link_failure = exc.reason
        for item in items:
            run.fail(item.sop_instance_uid, exc.reason)
        return None


def c_move(peer: Peer | None, event: Any) -> Iterator[Any]:
    """EVT_C_MOVE: everything runs in the first step; pynetdicom's closing response (0xA801
    after a ``(None, None)`` destination) is replaced by the request's real one."""
    _replace_closing_response(event, _execute(peer, event, "C-MOVE"))
    yield None, None


def c_get(peer: Peer | None, event: Any) -> Iterator[Any]:
    """EVT_C_GET: everything runs in the first step; pynetdicom's closing response (success
    after zero sub-operations) is replaced by the request's real one."""
    _replace_closing_response(event, _execute(peer, event, "C-GET"))
    yield 0
