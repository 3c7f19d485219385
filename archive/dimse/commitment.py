"""Storage Commitment Push Model SCP (PS3.4 Annex J): a modality learns which of the objects it
sent the archive keeps safely, and so which of its own copies it may delete.

**N-ACTION** (Action Type ID 1, Request Storage Commitment), on the listener's presentation
context for the Storage Commitment Push Model SOP Class (``SOP_CLASS``; Requested SOP Instance
the well-known ``SOP_INSTANCE``). The Action Information is checked: a Transaction UID (the
archive's UID rules, ``archive.ingest.dicom.uid_problem``) and a Referenced SOP Sequence of 1 to
``MAX_ITEMS`` items, each with a valid Referenced SOP Class UID and Referenced SOP Instance UID.
The request is then recorded (a ``StorageCommitment`` row and a ``storage_commitment.requested``
audit event, in one transaction) before success is answered; what cannot be checked or recorded
is refused with a PS3.7 status and an Error Comment saying why:

    0x0000  success: recorded, the N-EVENT-REPORT follows
    0x0110  processing failure: the request could not be recorded (retry later), or there is no
            way to report it (the requester did not accept the SCP role on this association and
            its AE title is not one of the organization's DICOM destinations)
    0x0112  no such SOP instance: Requested SOP Instance UID is not 1.2.840.10008.1.20.1.1
    0x0115  invalid argument value: Action Information missing or unreadable, Transaction UID
            missing or invalid, Referenced SOP Sequence missing or empty, an item without a
            valid SOP Class or Instance UID (the comment names the item, 1-based)
    0x0118  no such SOP class: Requested SOP Class UID is not the Storage Commitment Push Model
    0x0123  no such action: Action Type ID other than 1
    0x0124  refused, not authorised: the association was not admitted
    0x0213  resource limitation: more than ``MAX_ITEMS`` items in one request

**Decision**, per requested instance, in the called AE title's organization only (another
organization's instance is unknown here): committed when it is indexed, stored and verified (its
size and SHA-256 recorded on the instance, no ``PendingObject`` intent left for its object, its
study not in the trash) and its SOP Class UID is the one requested. Otherwise it is listed in the
Failed SOP Sequence with its Failure Reason (PS3.4 J.3.2.1.1 / C.14.1.1):

    0x0112  no such object instance: not in the organization's index (unknown, another
            organization's, or in the trash)
    0x0110  processing failure: acknowledged by the listener but not indexed yet (its file is
            still in a C-STORE queue folder, ``archive.dimse.indexer``) when ``INDEX_WAIT_SECONDS``
            have passed; an object indexed within that wait is committed
    0x0119  class/instance conflict: the stored object under that SOP Instance UID has another
            SOP Class UID

Never committed is what could still be lost: an acknowledged object is committed only once the
indexer stored, verified and indexed it.

**N-EVENT-REPORT** (Event Type 1: all committed; 2: failures exist), Affected SOP Instance the
well-known instance, Event Information: Transaction UID, Retrieve AE Title (the called AE title),
Referenced SOP Sequence (committed), Failed SOP Sequence (with Failure Reason). It goes on the
association of the N-ACTION when that is still open and the requester proposed the SCP role for
the SOP class in SCP/SCU Role Selection (the listener accepts it); otherwise on a new association
from the called AE title to the requester's calling AE title, looked up among the organization's
DICOM destinations (``destination_for_move``; host checked and the connection pinned to the
checked address by ``tenants.netguard``; TLS when the destination says so), proposing the SCP
role. On the same association the report follows the N-ACTION response (``ResponseSent``), and
while it is exchanged pynetdicom holds the association's thread: a requester that sends another
request meanwhile gets no answer to it. A delivery that fails (no destination, refused, no
answer, a failure status) is retried
with a backoff (``RETRY_BASE_SECONDS`` doubling, at most ``RETRY_MAX_SECONDS``), at most
``MAX_ATTEMPTS`` times; then the commitment is ``failed`` (audited
``storage_commitment.failed``). A delivered report is audited ``storage_commitment.reported``
with its counts. Each N-ACTION gets its own report, also when a Transaction UID is sent again.

**Durability.** The listener owns the reporting (it alone knows which acknowledged objects are
still being indexed): ``listener_started`` (called by ``StrataSCP.start``) starts a reporter of
a few threads. New requests are handed to it at once; a scheduler thread looks for pending
commitments whose next attempt is due every ``POLL_SECONDS``, and, right after a start, for
every pending commitment (a listener that stopped or crashed between N-ACTION and report
reports at its next start). A commitment is claimed with one conditional UPDATE for
``LEASE_SECONDS``, so that two listeners never report the same one at once; the claim of a
listener that died expires. A listener that stops mid-attempt gives its claim back. Not a
Celery beat task: the decision needs the listener's queue folders (which acknowledged objects are
still being indexed), a report is due within a second rather than at the next beat, and nothing
waits on a listener that is not running: a modality can only ask one that runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_ACTION_RSP

from archive.ae_titles.selectors import destination_for_move
from archive.dimse import activity
from archive.dimse.indexer import db_serial, queue_root
from archive.dimse.peer import Peer
from archive.ingest.dicom import uid_clean, uid_problem
from archive.models import (
    DicomDestination,
    Instance,
    PendingObject,
    StorageCommitment,
    StorageLocation,
)
from archive.storage import store_for
from tenants.context import Actor
from tenants.models import Organization
from tenants.netguard import AddressRefused, resolve
from tenants.services import audit_record

if TYPE_CHECKING:
    from pynetdicom.association import Association

logger = logging.getLogger("archive.dimse")

SOP_CLASS = UID("1.2.840.10008.1.20.1")  # Storage Commitment Push Model SOP Class
SOP_INSTANCE = UID("1.2.840.10008.1.20.1.1")  # the well-known instance (PS3.4 J.3.5)
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
ACTION_REQUEST_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# N-ACTION statuses (PS3.7 Annex C; see the module docstring).
SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_INVALID_ARGUMENT = 0x0115
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_NO_SUCH_ACTION = 0x0123
STATUS_NOT_AUTHORISED = 0x0124
STATUS_RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) of the Failed SOP Sequence.
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_OBJECT = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119

MAX_ITEMS = 20_000  # per request: the row's items and the report stay a few MB at most
ERROR_COMMENT_MAX = 64  # LO
INDEX_WAIT_SECONDS = 60.0  # how long a decision waits for acknowledged objects to be indexed
POLL_SECONDS = 5.0  # how often the scheduler looks for due commitments
LEASE_SECONDS = 120.0  # a claim; longer than one attempt's decision and delivery (renewed between)
MAX_ATTEMPTS = 12
RETRY_BASE_SECONDS = 15.0
RETRY_MAX_SECONDS = 3600.0  # 15 s, 30 s, ... 1 h: about 4 hours of attempts in all
WORKERS = 4
RESPONSE_WAIT_SECONDS = 30.0  # a report on the same association waits for the N-ACTION's response
# The outgoing association of a report on a new association.
CONNECT_TIMEOUT = 10.0
ACSE_TIMEOUT = 15.0
DIMSE_TIMEOUT = 30.0

_SHA256 = re.compile(r"[0-9a-f]{64}")
_QUERY_CHUNK = 500  # UIDs per IN (...): well under SQLite's variable limit


# --- N-ACTION -------------------------------------------------------------------------------


class Refused(Exception):
    """An N-ACTION that is answered with a failure status and an Error Comment."""

    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _status(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    text = comment.replace("\\", "/").encode("ascii", "replace").decode("ascii")
    if len(text) > ERROR_COMMENT_MAX:
        text = text[: ERROR_COMMENT_MAX - 3] + "..."
    ds.ErrorComment = text
    return ds


def _uid(ds: Dataset, keyword: str, label: str) -> str:
    """The UID value of ``keyword`` in ``ds``, or Refused (0x0115) naming ``label``."""
    value: Any = ds.get(keyword)
    if isinstance(value, MultiValue | list):
        raise Refused(STATUS_INVALID_ARGUMENT, f"{label} has more than one value")
    text = uid_clean(str(value)) if value is not None else ""
    problem = uid_problem(text)
    if problem is not None:
        raise Refused(STATUS_INVALID_ARGUMENT, f"{label} {problem}")
    return text


def request_read(action: Dataset) -> tuple[str, list[list[str]]]:
    """The Transaction UID and the requested ``[SOP Class UID, SOP Instance UID]`` pairs (in
    order, repeats dropped) of an N-ACTION's Action Information, or Refused."""
    transaction_uid = _uid(action, "TransactionUID", "Transaction UID")
    sequence = action.get("ReferencedSOPSequence")
    if sequence is None:
        raise Refused(STATUS_INVALID_ARGUMENT, "Referenced SOP Sequence is missing")
    if not isinstance(sequence, Sequence):
        raise Refused(STATUS_INVALID_ARGUMENT, "Referenced SOP Sequence is not a sequence")
    if len(sequence) == 0:
        raise Refused(STATUS_INVALID_ARGUMENT, "Referenced SOP Sequence is empty")
    if len(sequence) > MAX_ITEMS:
        raise Refused(
            STATUS_RESOURCE_LIMITATION, f"{len(sequence)} items; at most {MAX_ITEMS} per request"
        )
    items: list[list[str]] = []
    seen: set[tuple[str, str]] = set()
    for number, item in enumerate(sequence, start=1):
        sop_class = _uid(item, "ReferencedSOPClassUID", f"Item {number}: SOP Class UID")
        sop_instance = _uid(item, "ReferencedSOPInstanceUID", f"Item {number}: SOP Instance UID")
        if (sop_class, sop_instance) not in seen:
            seen.add((sop_class, sop_instance))
            items.append([sop_class, sop_instance])
    return transaction_uid, items


def _context_role_accepted(assoc: Any, context_id: int | None) -> bool:
    """Whether the requester proposed, and the listener accepted, the SCP role for the Storage
    Commitment SOP class on this association (the listener may then send the N-EVENT-REPORT
    on it)."""
    for cx in getattr(assoc, "accepted_contexts", None) or []:
        if cx.abstract_syntax == SOP_CLASS and (context_id is None or cx.context_id == context_id):
            return bool(cx.as_scu)
    return False


def _actor(calling_ae: str, address: str) -> Actor:
    return Actor(ip=address or None, label_override=f"dicom:{calling_ae}"[:255])


# (0000,0100) Command Field = 0x8130 (N-ACTION-RSP) as a command set encodes it (implicit VR LE).
_N_ACTION_RSP_FIELD = b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x81"


class ResponseSent:
    """Whether the N-ACTION response is on the wire, so that a report on the same association
    reaches the requester after the answer to its request, never before.

    pynetdicom sends the response after the handler returned, from the association's thread,
    and lets another thread send meanwhile (it counts an association serving a request as
    paused); the report must wait for the response's last PDU. Armed when the response message
    for ``message_id`` is encoded (EVT_DIMSE_SENT), set when the last fragment of an N-ACTION-RSP
    command has been sent (EVT_PDU_SENT).
    """

    def __init__(self, assoc: Any, message_id: int):
        self.assoc = assoc
        self.message_id = message_id
        self.armed = False
        self.done = threading.Event()
        assoc.bind(evt.EVT_DIMSE_SENT, self._message_sent)
        assoc.bind(evt.EVT_PDU_SENT, self._pdu_sent)

    def _message_sent(self, event: Any) -> None:
        message = event.message
        if isinstance(message, N_ACTION_RSP):
            answered = message.command_set.get("MessageIDBeingRespondedTo")
            self.armed = self.armed or answered == self.message_id

    def _pdu_sent(self, event: Any) -> None:
        if not self.armed or self.done.is_set():
            return
        for item in getattr(event.pdu, "presentation_data_value_items", None) or []:
            value = item.presentation_data_value or b""
            # Message control header: bit 0 command, bit 1 last fragment.
            if value[:1] and value[0] & 0x03 == 0x03 and _N_ACTION_RSP_FIELD in value:
                self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def close(self) -> None:
        for event, handler in (
            (evt.EVT_DIMSE_SENT, self._message_sent),
            (evt.EVT_PDU_SENT, self._pdu_sent),
        ):
            with contextlib.suppress(Exception):
                self.assoc.unbind(event, handler)


def commitment_record(
    *, peer: Peer, transaction_uid: str, items: list[list[str]]
) -> StorageCommitment:
    """Record a storage commitment request (audited); it is reported by the listener."""
    now = timezone.now()
    with transaction.atomic():
        row = StorageCommitment.objects.create(
            organization=peer.org,
            transaction_uid=transaction_uid,
            calling_ae=peer.calling_ae[:16],
            called_ae=peer.called_ae[:16],
            address=peer.address[:45],
            items=items,
            state=StorageCommitment.State.PENDING,
            # The reporter handed it claims it at once; the scheduler only after this (e.g. the
            # listener stopped before the reporter got to it).
            next_attempt_at=now + timedelta(seconds=LEASE_SECONDS),
            created_at=now,
        )
        audit_record(
            org=peer.org,
            actor=_actor(peer.calling_ae, peer.address),
            action="storage_commitment.requested",
            target=row,
            details={
                "transaction_uid": transaction_uid,
                "calling_ae": peer.calling_ae,
                "called_ae": peer.called_ae,
                "instances": len(items),
            },
        )
    return row


def n_action(peer: Peer | None, event: Any) -> tuple[Any, Dataset | None]:
    """The EVT_N_ACTION handler's answer: (status, no Action Reply). The status is 0x0000, or a
    Dataset with the failure Status and its Error Comment."""
    try:
        if peer is None:
            raise Refused(STATUS_NOT_AUTHORISED, "Association not admitted")
        request = event.request
        if str(request.RequestedSOPClassUID or "") != SOP_CLASS:
            raise Refused(STATUS_NO_SUCH_SOP_CLASS, "Not the Storage Commitment Push Model")
        if str(request.RequestedSOPInstanceUID or "") != SOP_INSTANCE:
            raise Refused(STATUS_NO_SUCH_SOP_INSTANCE, f"Requested SOP Instance is {SOP_INSTANCE}")
        if request.ActionTypeID != ACTION_REQUEST_COMMITMENT:
            raise Refused(STATUS_NO_SUCH_ACTION, f"No action type {request.ActionTypeID}; only 1")
        try:
            action = event.action_information
            transaction_uid, items = request_read(action)
        except Refused:
            raise
        except Exception as exc:  # pydicom decodes lazily: anything may fail on access
            logger.info("dimse: unreadable N-ACTION Action Information from %s: %s", peer, exc)
            raise Refused(STATUS_INVALID_ARGUMENT, "Action Information cannot be read") from None
        context_id = getattr(getattr(event, "context", None), "context_id", None)
        same_association = _context_role_accepted(event.assoc, context_id)
    except Refused as refused:
        logger.info("dimse: N-ACTION refused with 0x%04X: %s", refused.status, refused.comment)
        return _status(refused.status, refused.comment), None
    try:
        with db_serial():
            if not same_association and (
                destination_for_move(org=peer.org, ae_title=peer.calling_ae) is None
            ):
                return _status(
                    STATUS_PROCESSING_FAILURE,
                    "No way to report: accept SCP role or register AE as destination",
                ), None
            row = commitment_record(peer=peer, transaction_uid=transaction_uid, items=items)
    except Exception:
        logger.exception("dimse: recording a storage commitment failed for org %s", peer.org.pk)
        # A broken connection must not fail the association's next request.
        connection.close()
        return _status(STATUS_PROCESSING_FAILURE, "Internal error; please retry later"), None
    activity.commitment_noted(event.assoc, row.pk)  # the DICOM connections page
    reporter = _reporter_for(getattr(event.assoc, "scp", None))
    if reporter is None:
        logger.warning("dimse: no commitment reporter runs; commitment %s waits", row.pk)
    elif same_association:
        sent = ResponseSent(event.assoc, int(request.MessageID))
        reporter.submit(row.pk, event.assoc, sent)
    else:
        reporter.submit(row.pk)
    logger.info(
        "dimse: storage commitment %s of %s for org %s: %d instances",
        transaction_uid,
        peer.calling_ae,
        peer.org.pk,
        len(items),
    )
    return SUCCESS, None


# --- the decision ----------------------------------------------------------------------------


@dataclass
class Decision:
    committed: list[list[str]] = field(default_factory=list)  # [class, instance]
    failed: list[list[Any]] = field(default_factory=list)  # [class, instance, reason]

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_COMMITTED


@dataclass(frozen=True)
class _Indexed:
    sop_class_uid: str
    safe: bool  # stored and verified, nothing pending for its object, not in the trash
    trashed: bool


def _chunks(values: list[str], size: int = _QUERY_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def instances_indexed(
    *, org: Organization, sop_instance_uids: Iterable[str]
) -> dict[str, _Indexed]:
    """The organization's indexed instances among ``sop_instance_uids`` and whether each is
    safe to commit."""
    intent = PendingObject.objects.filter(
        organization_id=OuterRef("organization_id"),
        location_id=OuterRef("location_id"),
        object_key=OuterRef("object_key"),
    )
    found: dict[str, _Indexed] = {}
    for chunk in _chunks(sorted(set(sop_instance_uids))):
        rows = (
            Instance.objects.for_org(org)
            .filter(sop_instance_uid__in=chunk)
            .annotate(intent=Exists(intent), trashed_at=F("study__trashed_at"))
            .values_list(
                "sop_instance_uid", "sop_class_uid", "size_bytes", "sha256", "intent", "trashed_at"
            )
        )
        for uid, sop_class, size, sha256, pending, trashed_at in rows:
            verified = size > 0 and bool(_SHA256.fullmatch(sha256 or ""))
            trashed = trashed_at is not None
            found[uid] = _Indexed(
                sop_class_uid=sop_class,
                safe=verified and not pending and not trashed,
                trashed=trashed,
            )
    return found


class QueueScanner:
    """The SOP Instance UIDs of an organization's objects that the listener acknowledged and
    the indexer has not finished: the files in its C-STORE queue folders (each starts with the
    File Meta Information the listener wrote, whose Media Storage SOP Instance UID is the
    object's). Read once per file and remembered."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def _roots(self, org: Organization) -> set[Path]:
        roots: set[Path] = set()
        with db_serial():
            locations = list(StorageLocation.objects.for_org(org))
        for location in locations:
            try:
                roots.add(queue_root(store_for(location)))
            except Exception:  # noqa: BLE001 - a location that cannot be opened has no queue
                logger.warning("dimse: no queue folder for location %s", location.pk)
        return roots

    def queued(self, org: Organization) -> set[str]:
        uids: set[str] = set()
        present: set[str] = set()
        for root in self._roots(org):
            for folder in root.glob(f"{org.pk}-*"):
                for path in (*folder.glob("*.dcm"), *folder.glob("*.part")):
                    name = str(path)
                    present.add(name)
                    with self._lock:
                        uid = self._names.get(name)
                    if uid is None:
                        uid = self._read(path)
                        if uid is None:
                            continue  # still arriving (or gone): not acknowledged
                        with self._lock:
                            self._names[name] = uid
                    uids.add(uid)
        with self._lock:  # forget files that are gone
            for name in [n for n in self._names if n not in present and _in_org(n, org)]:
                del self._names[name]
        return uids

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            meta = read_file_meta_info(path)
            return uid_clean(str(meta.get("MediaStorageSOPInstanceUID", "") or "")) or None
        except Exception:  # noqa: BLE001 - a partial or vanished file
            return None


def _in_org(name: str, org: Organization) -> bool:
    return Path(name).parent.name.startswith(f"{org.pk}-")


def commitment_decide(
    *,
    org: Organization,
    items: list[list[str]],
    queued: Callable[[Organization], set[str]],
    wait: float | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    heartbeat: Callable[[], None] = lambda: None,
) -> Decision:
    """Decide which requested instances are committed (see the module docstring).

    ``queued(org)``: the UIDs acknowledged but not indexed yet. An instance among them is waited
    for, up to ``wait`` seconds (default ``INDEX_WAIT_SECONDS``; while ``keep_going()``), polling the index; ``heartbeat`` is
    called every few seconds meanwhile.
    """
    uids = [instance for _, instance in items]
    with db_serial():
        found = instances_indexed(org=org, sop_instance_uids=uids)
    unsettled = {uid for uid in uids if uid not in found or not found[uid].safe}
    in_flight: set[str] = set()

    def waits(uid: str) -> bool:
        """Acknowledged and not indexed yet, or indexed with its intent row still there."""
        indexed = found.get(uid)
        if indexed is None:
            return uid in in_flight
        return not indexed.safe and (not indexed.trashed or uid in in_flight)

    if unsettled:
        in_flight = queued(org) & unsettled
        # Indexed between the first look and the scan: its file was removed after its row.
        with db_serial():
            found.update(instances_indexed(org=org, sop_instance_uids=unsettled))
        waiting_on = {uid for uid in unsettled if waits(uid)}
        deadline = time.monotonic() + (INDEX_WAIT_SECONDS if wait is None else wait)
        pause = 0.05
        last_scan = last_beat = time.monotonic()
        while waiting_on and time.monotonic() < deadline and keep_going():
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            now = time.monotonic()
            if now - last_scan >= 2.0:
                # The indexer may have refused one: no longer queued. Scanned before the index
                # is read, since a file is removed only after its object's row is committed.
                in_flight &= queued(org)
                last_scan = now
            with db_serial():
                found.update(instances_indexed(org=org, sop_instance_uids=waiting_on))
            waiting_on = {uid for uid in waiting_on if waits(uid)}
            if now - last_beat >= 10.0:
                heartbeat()
                last_beat = now
    decision = Decision()
    for sop_class, uid in items:
        indexed = found.get(uid)
        if indexed is None or indexed.trashed:
            reason = REASON_PROCESSING_FAILURE if uid in in_flight else REASON_NO_SUCH_OBJECT
            decision.failed.append([sop_class, uid, reason])
        elif indexed.sop_class_uid != sop_class:
            decision.failed.append([sop_class, uid, REASON_CLASS_INSTANCE_CONFLICT])
        elif not indexed.safe:
            decision.failed.append([sop_class, uid, REASON_PROCESSING_FAILURE])
        else:
            decision.committed.append([sop_class, uid])
    return decision


def event_information(row: StorageCommitment, decision: Decision) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1)."""
    ds = Dataset()
    ds.TransactionUID = row.transaction_uid
    ds.RetrieveAETitle = row.called_ae
    if decision.committed:
        referenced = []
        for sop_class, uid in decision.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            referenced.append(item)
        ds.ReferencedSOPSequence = referenced
    if decision.failed:
        failed = []
        for sop_class, uid, reason in decision.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = failed
    return ds


# --- delivery --------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """The report did not reach the requester; the message says why."""


def _response_checked(status: Dataset) -> int:
    """The requester's N-EVENT-REPORT response status; DeliveryFailed when none came or it is a
    failure."""
    if "Status" not in status:
        raise DeliveryFailed("no N-EVENT-REPORT response (timed out, aborted or invalid)")
    code = int(status.Status)
    if code == 0x0000 or code == 0x0001 or 0xB000 <= code <= 0xBFFF:
        return code
    raise DeliveryFailed(f"the requester answered the N-EVENT-REPORT with 0x{code:04X}")


_association_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_association_locks_guard = threading.Lock()


def _message_id(row: StorageCommitment) -> int:
    return int(row.pk) % 65535 + 1


def send_on_association(
    assoc: Association,
    response_sent: ResponseSent,
    row: StorageCommitment,
    decision: Decision,
    ds: Dataset,
) -> int:
    """Send the report on the N-ACTION's association, after the N-ACTION's response; returns
    the requester's response status."""
    if not response_sent.wait(RESPONSE_WAIT_SECONDS):
        raise DeliveryFailed("the N-ACTION's response was not sent")
    with _association_locks_guard:
        lock = _association_locks.setdefault(assoc, threading.Lock())
    with lock:
        if not assoc.is_established:
            raise DeliveryFailed("the N-ACTION's association has ended")
        # pynetdicom holds the association's thread for the exchange, so that the response to
        # the report is not taken for a request.
        status, _ = assoc.send_n_event_report(
            ds, decision.event_type, SOP_CLASS, SOP_INSTANCE, msg_id=_message_id(row)
        )
    return _response_checked(status)


def _allow_private() -> bool:
    # DICOM peers of a hospital are usually on its own network, reached over a VPN; like
    # tenant-supplied storage endpoints they are only allowed on private addresses when the
    # platform is set up for that (on-premises, tests).
    return bool(getattr(settings, "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS", False))


def _tls_context() -> ssl.SSLContext:
    """The system's trusted CAs plus DIMSE_TLS_CA_FILE (a PEM bundle of a hospital's own CAs)
    when set, as for every outgoing association to a destination; the certificate must name
    the destination's host."""
    context = ssl.create_default_context()
    ca_file = str(getattr(settings, "DIMSE_TLS_CA_FILE", "") or "")
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def send_new_association(
    destination: DicomDestination, row: StorageCommitment, decision: Decision, ds: Dataset
) -> int:
    """Open an association from the called AE title to the requester (a registered
    destination), proposing the SCP role, send the report; returns the response status."""
    try:
        infos = resolve(destination.host, destination.port, allow_private=_allow_private())
    except AddressRefused as exc:
        raise DeliveryFailed(str(exc)) from None
    ae = AE(ae_title=row.called_ae)
    ae.connection_timeout = CONNECT_TIMEOUT
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = DIMSE_TIMEOUT
    ae.add_requested_context(SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (_tls_context(), destination.host) if destination.tls else None
    errors: list[str] = []
    for address in dict.fromkeys(str(info[4][0]) for info in infos):  # checked, in order
        assoc = ae.associate(
            address,
            destination.port,
            ae_title=destination.ae_title,
            ext_neg=[build_role(SOP_CLASS, scp_role=True)],
            tls_args=tls_args,
        )
        if not assoc.is_established:
            why = (
                "was rejected"
                if assoc.is_rejected
                else "was aborted"
                if assoc.is_aborted
                else "failed (connection refused or no answer)"
            )
            errors.append(f"association to {destination} ({address}) {why}")
            continue
        try:
            if not any(cx.abstract_syntax == SOP_CLASS for cx in assoc.accepted_contexts):
                raise DeliveryFailed(f"{destination} accepts no Storage Commitment context")
            status, _ = assoc.send_n_event_report(
                ds, decision.event_type, SOP_CLASS, SOP_INSTANCE, msg_id=1
            )
            return _response_checked(status)
        finally:
            if assoc.is_established:
                assoc.release()
    raise DeliveryFailed("; ".join(errors) or f"no address of {destination} to connect to")


# --- the reporter ----------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return float(min(RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), RETRY_MAX_SECONDS))


@dataclass(frozen=True)
class _Job:
    commitment_id: int
    assoc: Any = None  # the N-ACTION's association, when the report may go on it
    response_sent: ResponseSent | None = None  # ... once the N-ACTION's response is sent


_reporters: weakref.WeakKeyDictionary[Any, Reporter] = weakref.WeakKeyDictionary()
_reporters_lock = threading.Lock()


def _reporter_for(scp: Any) -> Reporter | None:
    if scp is None:
        return None
    with _reporters_lock:
        return _reporters.get(scp)


def listener_started(scp: Any) -> Reporter:
    """Start the storage commitment reporter of a listener that has just started (its hook in
    ``StrataSCP.start``); pending commitments, old ones included, are reported from now on."""
    reporter = Reporter(scp)
    with _reporters_lock:
        _reporters[scp] = reporter
    reporter.start()
    return reporter


class Reporter:
    """Decides and delivers the reports of one listener, in daemon threads that end when the
    listener stops (``scp.server`` is None) or another reporter replaces this one."""

    def __init__(self, scp: Any):
        self._scp = weakref.ref(scp)  # the registry's key: never kept alive by its reporter
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"[:64]
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.scanner = QueueScanner()
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        scp = self._scp()
        return getattr(scp, "server", None) is not None and _reporter_for(scp) is self

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self._schedule, name="strata-commitment-due", daemon=True)
        ]
        self.threads += [
            threading.Thread(target=self._work, name=f"strata-commitment-{n}", daemon=True)
            for n in range(WORKERS)
        ]
        for thread in self.threads:
            thread.start()

    def submit(
        self, commitment_id: int, assoc: Any = None, response_sent: ResponseSent | None = None
    ) -> None:
        with self._lock:
            if commitment_id in self._queued:
                return
            self._queued.add(commitment_id)
        self.jobs.put(_Job(commitment_id=commitment_id, assoc=assoc, response_sent=response_sent))

    # -- threads --

    def _schedule(self) -> None:
        every = True  # at start: every pending commitment, due or not
        while self.running:
            try:
                for commitment_id in commitments_due(include_not_due=every):
                    self.submit(commitment_id)
                every = False
            except Exception:
                logger.exception("dimse: looking for due storage commitments failed")
            finally:
                connections.close_all()
            deadline = time.monotonic() + POLL_SECONDS
            while self.running and time.monotonic() < deadline:
                time.sleep(0.1)

    def _work(self) -> None:
        while self.running:
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.attempt(job)
            except Exception:
                logger.exception("dimse: storage commitment %s: attempt failed", job.commitment_id)
            finally:
                if job.response_sent is not None:
                    job.response_sent.close()
                with self._lock:
                    self._queued.discard(job.commitment_id)
                connections.close_all()

    # -- one attempt --

    def attempt(self, job: _Job) -> None:
        """Claim the commitment, decide, deliver, record the outcome."""
        with db_serial():
            row = commitment_claim(commitment_id=job.commitment_id, token=self.token)
        if row is None:
            return  # reported already, or another listener has it
        try:
            self._attempt_claimed(job, row)
        except Exception as exc:
            logger.exception("dimse: storage commitment %s: attempt failed", row.pk)
            connections.close_all()  # a broken connection is opened again
            with db_serial():
                commitment_attempt_failed(
                    row=row, token=self.token, decision=Decision(), error=f"Internal error: {exc}"
                )

    def _attempt_claimed(self, job: _Job, row: StorageCommitment) -> None:
        org = row.organization

        def renew() -> None:
            with db_serial():
                commitment_renew(row=row, token=self.token)

        decision = commitment_decide(
            org=org,
            items=row.items,
            queued=self.scanner.queued,
            keep_going=lambda: self.running,
            heartbeat=renew,
        )
        if not self.running:
            with db_serial():
                commitment_release(row=row, token=self.token)
            return
        renew()
        ds = event_information(row, decision)
        errors: list[str] = []
        delivery = ""
        status = None
        if job.assoc is not None and job.response_sent is not None:
            try:
                status = send_on_association(job.assoc, job.response_sent, row, decision, ds)
                delivery = "same association"
            except DeliveryFailed as exc:
                errors.append(str(exc))
            except Exception as exc:  # pynetdicom on a connection that broke meanwhile
                logger.warning("dimse: report on the N-ACTION's association failed", exc_info=True)
                errors.append(f"the N-ACTION's association failed: {exc}")
        if status is None and not self.running:  # stopping: the next start reports it
            with db_serial():
                commitment_release(row=row, token=self.token)
            return
        if status is None:
            with db_serial():
                destination = destination_for_move(org=org, ae_title=row.calling_ae)
            if destination is None:
                errors.append(f"{row.calling_ae} is not a DICOM destination of the organization")
            else:
                try:
                    status = send_new_association(destination, row, decision, ds)
                    delivery = "new association"
                except DeliveryFailed as exc:
                    errors.append(str(exc))
                except Exception as exc:
                    logger.warning("dimse: report to %s failed", destination, exc_info=True)
                    errors.append(f"association to {destination} failed: {exc}")
        with db_serial():
            if status is not None:
                commitment_reported(
                    row=row, token=self.token, decision=decision, delivery=delivery, status=status
                )
            else:
                commitment_attempt_failed(
                    row=row, token=self.token, decision=decision, error="; ".join(errors)
                )


# --- state changes ---------------------------------------------------------------------------


def _free(now: Any) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


def commitments_due(*, include_not_due: bool = False, limit: int = 500) -> list[int]:
    """Ids of pending commitments (of every organization: the listener serves them all) whose
    next attempt is due (or all, ``include_not_due``) and that nobody has claimed."""
    now = timezone.now()
    with db_serial():
        pending = StorageCommitment.objects.filter(state=StorageCommitment.State.PENDING).filter(
            _free(now)
        )
        if not include_not_due:
            pending = pending.filter(next_attempt_at__lte=now)
        return list(pending.order_by("next_attempt_at").values_list("pk", flat=True)[:limit])


def commitment_claim(*, commitment_id: int, token: str) -> StorageCommitment | None:
    """Claim a pending commitment for one attempt (one conditional UPDATE), or None."""
    now = timezone.now()
    claimed = (
        StorageCommitment.objects.filter(pk=commitment_id, state=StorageCommitment.State.PENDING)
        .filter(_free(now))
        .update(
            claimed_by=token,
            claimed_until=now + timedelta(seconds=LEASE_SECONDS),
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        return None
    return StorageCommitment.objects.select_related("organization").get(pk=commitment_id)


def _mine(row: StorageCommitment, token: str) -> Any:
    return StorageCommitment.objects.filter(
        pk=row.pk, state=StorageCommitment.State.PENDING, claimed_by=token
    )


def commitment_renew(*, row: StorageCommitment, token: str) -> None:
    _mine(row, token).update(claimed_until=timezone.now() + timedelta(seconds=LEASE_SECONDS))


def commitment_release(*, row: StorageCommitment, token: str) -> None:
    """Give a claim back without counting the attempt (the listener is stopping)."""
    _mine(row, token).update(
        claimed_by="",
        claimed_until=None,
        attempts=F("attempts") - 1,
        next_attempt_at=timezone.now(),
    )


def _result(decision: Decision) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for _, _, reason in decision.failed:
        key = f"0x{reason:04X}"
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "event_type": decision.event_type,
        "committed": len(decision.committed),
        "failed": decision.failed,
        "failure_reasons": reasons,
    }


def commitment_reported(
    *, row: StorageCommitment, token: str, decision: Decision, delivery: str, status: int
) -> None:
    now = timezone.now()
    result = {**_result(decision), "delivery": delivery, "response_status": status}
    with transaction.atomic():
        updated = _mine(row, token).update(
            state=StorageCommitment.State.REPORTED,
            reported_at=now,
            result=result,
            claimed_by="",
            claimed_until=None,
            last_error="",
        )
        if not updated:  # the claim expired and another listener took it: it reports too
            logger.warning("dimse: storage commitment %s reported after its claim ran out", row.pk)
            return
        audit_record(
            org=row.organization,
            actor=_actor(row.calling_ae, row.address),
            action="storage_commitment.reported",
            target=row,
            details={
                "transaction_uid": row.transaction_uid,
                "calling_ae": row.calling_ae,
                "called_ae": row.called_ae,
                "requested": len(row.items),
                "committed": len(decision.committed),
                "failed": len(decision.failed),
                "failure_reasons": result["failure_reasons"],
                "delivery": delivery,
                "attempts": row.attempts,
            },
        )
    logger.info(
        "dimse: storage commitment %s reported to %s on the %s: %d committed, %d failed",
        row.transaction_uid,
        row.calling_ae,
        delivery,
        len(decision.committed),
        len(decision.failed),
    )


def commitment_attempt_failed(
    *, row: StorageCommitment, token: str, decision: Decision, error: str
) -> None:
    """A delivery that failed: retried after a backoff, or, after ``MAX_ATTEMPTS``, failed."""
    now = timezone.now()
    error = error[:1000] or "The report could not be delivered."
    final = row.attempts >= MAX_ATTEMPTS
    logger.warning(
        "dimse: storage commitment %s for %s, attempt %d%s: %s",
        row.transaction_uid,
        row.calling_ae,
        row.attempts,
        " (the last)" if final else "",
        error,
    )
    with transaction.atomic():
        if not final:
            _mine(row, token).update(
                claimed_by="",
                claimed_until=None,
                last_error=error,
                result=_result(decision),
                next_attempt_at=now + timedelta(seconds=retry_delay(row.attempts)),
            )
            return
        updated = _mine(row, token).update(
            state=StorageCommitment.State.FAILED,
            claimed_by="",
            claimed_until=None,
            last_error=error,
            result=_result(decision),
        )
        if updated:
            audit_record(
                org=row.organization,
                actor=_actor(row.calling_ae, row.address),
                action="storage_commitment.failed",
                target=row,
                details={
                    "transaction_uid": row.transaction_uid,
                    "calling_ae": row.calling_ae,
                    "called_ae": row.called_ae,
                    "requested": len(row.items),
                    "attempts": row.attempts,
                    "error": error,
                },
            )
