"""The DIMSE listener (C-STORE and C-ECHO SCP) that every organization shares on one port.

The called AE title says which organization an association belongs to (``DicomAE``); the calling
AE title and the peer's address must be allowed by that AE's rules (``selectors.ae_admit``: every
restriction set must pass; an AE title without restrictions admits any caller only when its
organization chose ``allow_any_caller``, else nobody).
Anything else is refused at association time with an A-ASSOCIATE-RJ, before a byte of data flows:
rejected-permanent, source service-user, diagnostic 7 (called AE title not recognised) for an
unknown title or an organization that is not active, diagnostic 3 (calling AE title not
recognised) for a calling title or an address that the AE does not allow. When the check itself
fails (database unreachable): rejected-transient, service-provider, temporary congestion.

Presentation contexts: every storage SOP class and Verification, each with every transfer syntax
pynetdicom knows. Per context the sender's first proposed syntax is accepted, and the data set's
bytes are stored exactly as received (compressed ones too).

Receiving (invariant 5, constant memory): pynetdicom writes each incoming data set to a temporary
file as the P-DATA fragments arrive (``_config.STORE_RECV_CHUNKED_DATASET``); the C-STORE handler
then streams that file into a spool file of the organization's store with Strata's own File Meta
Information in front, hashing on the way, and hands it to the one ingest pipeline
(``archive.ingest.pipeline.instance_ingest``). Nothing holds a whole data set in memory.

Acknowledgement (invariant 2, no lost data): a C-STORE success status is sent only once the
pipeline has stored, verified and indexed the object, or found the identical object already stored.

C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C):

    0x0000  success: stored, or the identical object was already stored (a duplicate is not an
            error for the sender; the association's ingest job counts it as duplicate)
    0xA700  refused, out of resources: the organization's storage quota is exhausted
    0xA701  refused, out of resources: the object store failed; the sender should retry later
    0xA702  refused, out of resources: an internal error (e.g. the database is unreachable);
            retry later
    0xA900  error, data set does not match SOP class: a required UID is missing or invalid, or
            the data set's SOP Instance UID / SOP Class UID differs from the request's Affected
            SOP Instance UID / Affected SOP Class UID (the comment names both, Offending Element
            says which)
    0xC000  error, cannot understand: the data set cannot be parsed or is truncated; or it is
            not a DICOM data set at all (comment "Not a DICOM data set: ...")
    0xC111  error, cannot understand: a different object is already stored under this SOP
            Instance UID; it is not overwritten ("11" echoes PS3.7's 0x0111 Duplicate SOP
            Instance, which is not a valid C-STORE status)
    0xC409  error, cannot understand: the series already belongs to another study
    0x0122  refused: SOP class not supported

Every failure carries an Error Comment (at most 64 characters) with the reason.

Each association that sends at least one C-STORE gets one ``IngestJob`` (kind ``cstore``) with its
counts and an ``IngestFailure`` row per refused object; when the association ends (released,
aborted or broken) the job is closed, the CPU seconds spent on it are metered as
``compute.seconds`` (rounded up) and one ``ingest.cstore`` audit event is written. A C-ECHO-only
association (a PACS checking connectivity) creates no job.

Threads: pynetdicom runs every association in its own thread (the handlers below run there) plus
a socket-reading thread. Each association thread uses its own database connection, in autocommit
outside the ingest transactions, and closes it when the association ends.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import logging
import multiprocessing
import os
import queue
import select
import socket
import socketserver
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from django.db import connection, connections
from django.db.models import F
from django.utils import timezone
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
    _config,
    dimse_messages,
    evt,
)
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from archive.ae_titles.selectors import ae_admit
from archive.common import threads
from archive.dimse import activity, commitment, find, retrieve
from archive.dimse.indexer import (
    Ended,
    IndexerThread,
    Queued,
    association_queue_dir,
    db_serial,
    queue_folder_remove,
    queue_job_record,
    queue_recover,
    store_down,
)
from archive.dimse.indexer_process import indexer_process_main
from archive.dimse.peer import QUERY_RETRIEVE_SOP_CLASSES, Peer
from archive.dimse.sender import held
from archive.ingest.dicom import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    STUDY_UID_MISMATCH,
    Header,
)
from archive.ingest.pipeline import IngestResult, Quota, Spooled, instance_precheck, spool_existing
from archive.locations.selectors import location_primary
from archive.models import DicomAE, IngestFailure, IngestJob, StorageLocation
from archive.storage import ObjectStore, store_for
from tenants.models import Organization

if TYPE_CHECKING:
    from pynetdicom.events import Event

logger = logging.getLogger("archive.dimse")

CHUNK = 1024 * 1024
DEFAULT_AE_TITLE = "STRATA"
DEFAULT_PORT = 11112
# The largest P-DATA PDU a sender may send us. pynetdicom reads a PDU whole into memory, so this
# bounds the per-association buffer; 1 MiB keeps the per-PDU overhead small at full speed.
DEFAULT_MAX_PDU = 1024 * 1024
ERROR_COMMENT_MAX = 64  # LO
RECV_CHUNK = 1024 * 1024  # most bytes one socket read asks for
# Tolerance above the announced maximum PDU length for senders that miscount their headers.
PDU_LENGTH_SLACK = 64 * 1024
JOB_FLUSH_SECONDS = 2.0
# Accepted objects not yet indexed that the listener remembers (per organization and SOP
# Instance UID), so that a re-send meanwhile is judged as it will be once indexed.
PENDING_SECONDS = 600.0
# Acknowledged objects waiting for the indexer; beyond this, new objects are refused for now.
DEFAULT_MAX_BACKLOG = 2000
# Longest idle wait of the association's two threads; bounds how late timers and a stopped DUL
# thread are noticed, not how fast data is handled.
IDLE_WAIT = 0.05  # how stale an association's job counts may be while it runs

# C-STORE statuses; see the module docstring.
SUCCESS = 0x0000
STATUS_QUOTA_EXCEEDED = 0xA700
STATUS_STORE_UNAVAILABLE = 0xA701
STATUS_INTERNAL_ERROR = 0xA702
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DIFFERENT_OBJECT = 0xC111
STATUS_STUDY_MISMATCH = 0xC409
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122

_STATUS_FOR_REASON = {
    OUT_OF_RESOURCES: STATUS_QUOTA_EXCEEDED,
    PROCESSING_FAILURE: STATUS_STORE_UNAVAILABLE,
    DATASET_DOES_NOT_MATCH: STATUS_DATASET_MISMATCH,
    CANNOT_UNDERSTAND: STATUS_CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE: STATUS_DIFFERENT_OBJECT,
    STUDY_UID_MISMATCH: STATUS_STUDY_MISMATCH,
    SOP_CLASS_NOT_SUPPORTED: STATUS_SOP_CLASS_NOT_SUPPORTED,
}

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, diagnostic.
REJECT_PERMANENT = 0x01
REJECT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07
DIAG_TEMPORARY_CONGESTION = 0x01


def cstore_status(result: IngestResult) -> int:
    """The C-STORE response status for an ingest result."""
    if result.ok:
        return SUCCESS
    code = result.reason_code
    if code in _STATUS_FOR_REASON:
        return _STATUS_FOR_REASON[code]
    if 0xA700 <= code <= 0xA7FF or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF:
        return code
    return STATUS_CANNOT_UNDERSTAND


def _failure(status: int, reason: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # Error Comment is LO: 64 characters of the default repertoire, no backslash.
    comment = reason.replace("\\", "/").encode("ascii", "replace").decode("ascii")
    if len(comment) > ERROR_COMMENT_MAX:
        comment = comment[: ERROR_COMMENT_MAX - 3] + "..."
    ds.ErrorComment = comment
    return ds


# Tags of the Offending Element of a UID mismatch.
SOP_CLASS_UID_TAG = 0x00080016
SOP_INSTANCE_UID_TAG = 0x00080018


def _mismatch_comment(keyword: str, in_data_set: str, in_request: str) -> str:
    """Both UIDs in the Error Comment's 64 characters: whole when they fit, else the end of
    each (where UIDs differ, and how people tell them apart). The job's failure reason has both
    in full."""
    template = keyword + " data set {}, request {}"
    comment = template.format(in_data_set, in_request)
    if len(comment) <= ERROR_COMMENT_MAX:
        return comment
    keep = (ERROR_COMMENT_MAX - len(template.format("..", ".."))) // 2

    def end(uid: str) -> str:
        if len(uid) <= keep:
            return uid
        tail = uid[-keep:]
        dot = tail.find(".")
        return ".." + (tail[dot + 1 :] if 0 <= dot < keep // 2 else tail)  # whole components

    return template.format(end(in_data_set), end(in_request))


@dataclass
class Mismatch:
    """A data set that is not the object its C-STORE request announced."""

    result: IngestResult  # 0xA900; the reason (job failures) names both UIDs in full
    offending: int  # the Offending Element: SOP Instance UID or SOP Class UID
    comment: str  # the Error Comment: both UIDs in 64 characters


def uid_mismatch(header: Header, request: C_STORE) -> Mismatch | None:
    """The data set's SOP Instance UID and SOP Class UID against the request's Affected ones.

    The sender's own bookkeeping (storage commitment, its "sent" mark) goes by the request's
    UIDs; acknowledging a different object would tell it that one was stored.
    """
    announced = {
        "SOPInstanceUID": str(request.AffectedSOPInstanceUID or "").strip(" \0"),
        "SOPClassUID": str(request.AffectedSOPClassUID or "").strip(" \0"),
    }
    found = {"SOPInstanceUID": header.sop_instance_uid, "SOPClassUID": header.sop_class_uid}
    tags = {"SOPInstanceUID": SOP_INSTANCE_UID_TAG, "SOPClassUID": SOP_CLASS_UID_TAG}
    for keyword in ("SOPInstanceUID", "SOPClassUID"):
        if found[keyword] == announced[keyword]:
            continue
        affected = "Affected" + keyword
        reason = (
            f"The data set's {keyword} {found[keyword]} differs from the request's "
            f"{affected} {announced[keyword]}."
        )
        failed = IngestResult(
            status="failed",
            sop_instance_uid=announced["SOPInstanceUID"],
            sop_class_uid=announced["SOPClassUID"],
            reason_code=DATASET_DOES_NOT_MATCH,
            reason=reason,
        )
        comment = _mismatch_comment(keyword, found[keyword], announced[keyword])
        return Mismatch(result=failed, offending=tags[keyword], comment=comment)
    return None


# What the start of a data set must look like (PS3.5 7.1): ascending tags of data element
# groups, a known VR (explicit VR), lengths within the data. Only a data set the header reader
# refused is looked at, so that "not DICOM at all" is told apart from "DICOM, but missing or
# wrong"; a truncated data set that starts well stays "cannot be parsed / truncated".
SNIFF_BYTES = 4096
SNIFF_ELEMENTS = 4
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
_VRS_LONG_LENGTH = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_VRS_UNDEFINED_LENGTH = frozenset(b"OB OW SQ UN".split())
UNDEFINED = 0xFFFFFFFF


NOT_DICOM = "Not a DICOM data set"


def _cannot_understand(sop_instance_uid: str, why: str) -> IngestResult:
    return IngestResult(
        status="failed",
        sop_instance_uid=sop_instance_uid,
        reason_code=CANNOT_UNDERSTAND,
        reason=why,
    )


def not_a_data_set(path: Path, transfer_syntax: str) -> str | None:
    """Why the data set of the Part 10 file at ``path`` is not a DICOM data set at all, or None
    when it starts like one. ``transfer_syntax``: the one it was received in."""
    with open(path, "rb") as handle:
        offset = _dataset_offset(handle)
        handle.seek(offset)
        head = handle.read(SNIFF_BYTES)
        size = os.fstat(handle.fileno()).st_size - offset
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return f"{NOT_DICOM}: its deflated stream is invalid."
        size = UNDEFINED  # the inflated size is not known without inflating it all
    if not head:
        return f"{NOT_DICOM}: it is empty."
    implicit = transfer_syntax == ImplicitVRLittleEndian
    order = ">" if transfer_syntax == ExplicitVRBigEndian else "<"
    pos = 0
    previous = -1
    for checked in range(SNIFF_ELEMENTS):
        if pos + 8 > len(head):
            break
        group, element = struct.unpack_from(order + "HH", head, pos)
        tag = group << 16 | element
        # Command (0000), odd groups below 0008 and item tags never start a stored data set's
        # element; file meta (0002) misplaced in the data set is tolerated (old writers).
        if group in (0x0000, 0x0001, 0x0003, 0x0005, 0x0007, 0xFFFE, 0xFFFF):
            return f"{NOT_DICOM}: no valid data element at its start."
        if tag <= previous:
            return f"{NOT_DICOM}: its data elements are not in order."
        if implicit:
            length = struct.unpack_from(order + "I", head, pos + 4)[0]
            value_at = pos + 8
        else:
            vr = bytes(head[pos + 4 : pos + 6])
            if vr not in _VRS:
                return f"{NOT_DICOM}: no valid data element at its start."
            if vr in _VRS_LONG_LENGTH:
                if pos + 12 > len(head):
                    break
                length = struct.unpack_from(order + "I", head, pos + 8)[0]
                value_at = pos + 12
            else:
                length = struct.unpack_from(order + "H", head, pos + 6)[0]
                value_at = pos + 8
            if length == UNDEFINED and vr not in _VRS_UNDEFINED_LENGTH:
                return f"{NOT_DICOM}: no valid data element at its start."
        if length == UNDEFINED:
            break  # a sequence or encapsulated pixel data: started like DICOM
        if value_at + length > size:
            # Explicit VR elements that fit the rules so far are a truncated data set; in
            # implicit VR a first element longer than all the data is nothing like one.
            if implicit and checked == 0:
                return f"{NOT_DICOM}: no valid data element at its start."
            break
        pos = value_at + length
        previous = tag
    return None


def rejection_reason(*, called_ae: str, calling_ae: str, address: str) -> tuple[int, str]:
    """Why ``ae_admit`` refused: the A-ASSOCIATE-RJ diagnostic and a reason for the log.

    Only called after ``ae_admit`` returned None; the decision itself is ``ae_admit``'s. A
    suspended organization's title is treated as unknown (its existence is not the sender's
    business); an address outside the allowed networks counts as an unrecognised calling AE, since
    an AE is its title at its address.
    """
    dicom_ae = (
        DicomAE.objects.select_related("organization").filter(ae_title=called_ae.strip()).first()
    )
    if dicom_ae is None:
        return DIAG_CALLED_AE_NOT_RECOGNISED, "unknown called AE title"
    if not dicom_ae.organization.is_active:
        return DIAG_CALLED_AE_NOT_RECOGNISED, "organization not active"
    allowed = dicom_ae.allowed_calling_ae_titles
    if not allowed and not dicom_ae.allowed_networks and not dicom_ae.allow_any_caller:
        return DIAG_CALLING_AE_NOT_RECOGNISED, "no caller allowed (no restriction, no any-caller)"
    if allowed and calling_ae.strip() not in allowed:
        return DIAG_CALLING_AE_NOT_RECOGNISED, "calling AE title not allowed"
    return DIAG_CALLING_AE_NOT_RECOGNISED, "address outside the allowed networks"


def _thread_cpu_seconds(native_id: int | None) -> float:
    """CPU seconds of another thread of this process (Linux /proc); 0.0 where unavailable."""
    if native_id is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    # Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


def _dataset_offset(handle: Any) -> int:
    """Where the data set starts in a Part 10 file: after preamble, prefix and File Meta group.

    pynetdicom always writes the group length element first, so the offset follows from it.
    """
    head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("the received file has no File Meta group length")
    return 144 + int.from_bytes(head[140:144], "little")


_receiving = threading.local()  # .assoc: the association whose DUL thread this is


class _ReceiveFile:
    """The file pynetdicom receives a C-STORE data set into, for an admitted association.

    Created in the association's queue folder (on the store's volume) instead of the process's
    temporary folder, with Strata's File Meta Information (the AE titles added): the handler
    finds the object complete where it stays, flushes it to disk (the flush of a new file also
    makes its name durable on the journalling file systems Linux servers use) and hashes it in
    helper threads while it checks the header. Otherwise pynetdicom's file would be copied.
    pynetdicom calls ``write``, ``file.flush``, ``close`` and reads ``name``.
    """

    def __init__(self, folder: Path, session: _Session):
        self.session = session
        self.name = str(folder / f"{uuid.uuid4().hex}.dcm")
        self.file = open(self.name, "wb")  # noqa: SIM115 - closed by pynetdicom
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()

    def keep(self) -> None:
        """The object is acknowledged: pynetdicom deletes ``name`` after the handler ran, so
        point it at a name that never exists."""
        self.name += ".acknowledged"

    def spooled(self, syncer: ThreadPoolExecutor) -> tuple[Spooled, Callable[[], None]]:
        """The complete file, its flush to disk and its SHA-256 started in ``syncer``; and the
        function that waits for both and fills in ``sha256`` (idempotent). The caller checks the
        object meanwhile, and must call it before it answers or lets the file close."""
        self.file.flush()
        spooled = Spooled(path=Path(self.name), size=self.size, sha256="")
        synced = syncer.submit(_fdatasync, self.file.fileno())
        hashed = syncer.submit(lambda: spool_existing(spooled.path).sha256)

        def complete() -> None:
            try:
                synced.result()
            finally:
                spooled.sha256 = hashed.result()

        return spooled, complete


# Data and the size of a new file (what reading it back needs), without a journal commit for
# its times; fsync where the platform has no fdatasync.
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """``pynetdicom.dimse_messages.NamedTemporaryFile`` while a StrataSCP runs: a _ReceiveFile
    for admitted associations, pynetdicom's temporary file for anything else."""
    assoc = getattr(_receiving, "assoc", None)
    scp = getattr(assoc, "scp", None)
    session = scp._session(assoc) if scp is not None and assoc is not None else None
    if session is not None and session.queue_dir is not None:
        with contextlib.suppress(OSError):
            return _ReceiveFile(session.queue_dir, session)
    return _pynetdicom_named_temporary_file(*args, **kwargs)


def _write_file_meta_info(fp: Any, file_meta: FileMetaDataset, *args: Any, **kwargs: Any) -> None:
    """``pynetdicom.dimse_messages.write_file_meta_info``: Strata's AE titles in the File Meta
    of a _ReceiveFile (pynetdicom writes its own File Meta first, then the data set)."""
    if isinstance(fp, _ReceiveFile):
        file_meta.SourceApplicationEntityTitle = fp.session.called_ae
        if fp.session.calling_ae:
            file_meta.SendingApplicationEntityTitle = fp.session.calling_ae
        file_meta.ReceivingApplicationEntityTitle = fp.session.called_ae
    write_file_meta_info(fp, file_meta, *args, **kwargs)


_pynetdicom_named_temporary_file = dimse_messages.NamedTemporaryFile


@dataclass
class _Session:
    """What one admitted association needs; used only from its own thread, except ``outcome``."""

    dicom_ae: DicomAE
    org: Organization
    called_ae: str
    calling_ae: str
    address: str
    dul_native_id: int | None = None
    dul_cpu: float = 0.0
    outcome: str = ""
    job: IngestJob | None = None
    location: StorageLocation | None = None
    store: ObjectStore | None = None
    quota: Quota | None = None  # read once per association, counted down as objects are stored
    queue_dir: Path | None = None  # where acknowledged objects wait for the indexer
    series_studies: dict[str, str] = field(default_factory=dict)
    flushed_at: float = 0.0
    # What the association did, for the DICOM connections page (archive.dimse.activity).
    activity: activity.AssociationRecord | None = None
    # What the listener decides; the indexer adds stored / duplicate / failed of what it indexes.
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "received": 0,
            "accepted": 0,
            "duplicate": 0,
            "failed": 0,
            "bytes_received": 0,
        }
    )
    flushed: dict[str, int] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.calling_ae}@{self.address} -> {self.called_ae}"


class _AcceptorSocket(AssociationSocket):
    """pynetdicom's socket, reading up to ``RECV_CHUNK`` per call instead of 4 KiB.

    A 512 KB data set took 128 ``recv`` calls, each a system call and a hand-over of the GIL;
    now it takes a few. Still never more than the PDU length asks for, and what a closed
    connection left is returned as before.

    A PDU longer than the maximum we announced is refused before it is read (pynetdicom would
    buffer all of it): the OSError makes pynetdicom treat the connection as closed.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        limit = self.assoc.acceptor.maximum_length
        if limit and nr_bytes > limit + PDU_LENGTH_SLACK:
            logger.warning(
                "dimse: refusing a %d byte PDU from %s (maximum %d)",
                nr_bytes,
                self.assoc.requestor.address,
                limit,
            )
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the maximum of {limit}")
        sock = cast(socket.socket, self.socket)
        data = bytearray()
        while len(data) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(data), RECV_CHUNK))
            if not chunk:
                break
            data += chunk
        return data


class _AcceptorDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on the socket instead of polling it every millisecond.

    pynetdicom's loop sleeps 1 ms whenever it finds nothing to do, so a response the handler
    queued, or the request that just arrived, waits for the end of that sleep (and the sleep
    is often longer than asked). Here the idle wait is a ``select`` on the connection and on a
    wake-up socket that ``send_pdu`` writes to: a PDU to send or to read is handled at once.
    Every state-machine step sets ``activity``, on which the association thread waits.

    The loop is pynetdicom 3.0's ``run_reactor`` (pinned in pyproject.toml), with only the
    idle wait replaced and ``activity`` added.
    """

    _wake_r: socket.socket
    _wake_w: socket.socket
    activity: threading.Event

    def _prepare(self) -> None:
        """Precondition: the thread is not started. Its target was bound to pynetdicom's own
        ``run_reactor`` when the object was made; point it at this class's."""
        self._target = make_target(self.run_reactor)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.activity = threading.Event()

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def wake(self) -> None:
        """End the idle wait now (a PDU to send, or the connection handed back)."""
        with contextlib.suppress(OSError):  # already signalled (buffer full) or closing
            self._wake_w.send(b"\0")

    def _idle_wait(self) -> None:
        if held(self.socket):
            # The sub-operations of a C-GET own the connection (``archive.dimse.sender``): what
            # arrives is theirs to read, so only a PDU to send wakes this thread meanwhile.
            with contextlib.suppress(OSError, ValueError):
                select.select([self._wake_r], [], [], IDLE_WAIT)
            self._drain_wake()
            return
        sock = getattr(self.socket, "socket", None)
        if sock is None or not isinstance(sock, socket.socket) or hasattr(sock, "pending"):
            # No connection (yet or any more), or TLS (buffered bytes select cannot see).
            time.sleep(self._run_loop_delay)
            return
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # closed under us: the loop notices next time round
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def run_reactor(self) -> None:
        try:
            self._reactor()
        finally:
            self.activity.set()  # the association thread sees that the DUL has stopped
            self._wake_r.close()
            self._wake_w.close()

    def _reactor(self) -> None:
        _receiving.assoc = self.assoc  # for _ReceiveFile: data sets are decoded in this thread
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._idle_wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("dimse: exception in the DUL reactor, aborting association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            self.activity.set()
            sleep = False


class _AcceptorAssociation(Association):
    """An accepted association whose thread always ends with ``StrataSCP._finish`` and whose
    reactor waits for the DUL's activity instead of sleeping 1 ms per round.

    pynetdicom has no end-of-thread hook: the released/aborted events do not fire on every path,
    and a thread's database connection can only be closed from that thread.
    """

    scp: StrataSCP

    def run(self) -> None:
        cpu_start = time.thread_time()
        try:
            super().run()
        finally:
            self.scp._finish(self, cpu_start)

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor loop; the 1 ms sleep per round is a wait for activity."""
        activity = cast(_AcceptorDUL, self.dul).activity
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                # Woken by every DUL state-machine step; the timeout bounds the checks of the
                # network timeout and of a DUL thread that stopped.
                activity.wait(IDLE_WAIT)
                activity.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            served = msg is not None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                logger.error("dimse: network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class _RequestHandler(RequestHandler):
    """Per connection: TCP_NODELAY, the faster socket reads, the end-of-association hook."""

    server: _Server

    def handle(self) -> None:
        sock = self.request
        if isinstance(sock, socket.socket):
            # C-STORE is request/response: Nagle would hold back each small response.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = self._new_association()
        # Subclasses that only add behaviour, no state: swapping the class of pynetdicom's fully
        # built objects keeps its own set-up (contexts, handlers, the socket's first event).
        assoc.__class__ = _AcceptorAssociation
        assert isinstance(assoc, _AcceptorAssociation)
        assoc.scp = self.server.scp
        if type(assoc.dul.socket) is AssociationSocket:
            assoc.dul.socket.__class__ = _AcceptorSocket
        if type(assoc.dul) is DULServiceProvider:  # not started yet: started by assoc.start()
            assoc.dul.__class__ = _AcceptorDUL
            assert isinstance(assoc.dul, _AcceptorDUL)
            assoc.dul._prepare()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _new_association(self) -> Association:
        """pynetdicom 3.0's ``_create_association``, except that the supported presentation
        contexts are copied one level deep (each context and its list of transfer syntaxes;
        UIDs are immutable) instead of with ``deepcopy``, which re-validated every UID of every
        context: about 80 ms per association for the listener's contexts."""
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = [_context_copy(cx) for cx in self.server.contexts]
        assoc.requestor.address_info = self.remote
        bound: dict[Any, Any] = self.server._handlers
        for event, handlers in bound.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


def _context_copy(context: PresentationContext) -> PresentationContext:
    """A copy of a supported context that negotiation may change without touching the
    original."""
    copied = copy.copy(context)
    copied._transfer_syntax = list(context._transfer_syntax)
    return copied


class _Server(ThreadedAssociationServer):
    scp: StrataSCP

    def shutdown(self) -> None:
        """Stop accepting. Not ``AssociationServer.shutdown``: that expects the server in the AE's
        own list, which only ``AE.start_server`` fills."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class StrataSCP:
    """The shared C-STORE / C-ECHO listener.

    ``start()`` binds and serves in a background thread; ``stop()`` stops accepting, waits up to
    ``grace`` seconds for running associations and aborts the rest.
    """

    def __init__(
        self,
        *,
        ae_title: str = DEFAULT_AE_TITLE,
        max_associations: int = 10,
        max_pdu: int = DEFAULT_MAX_PDU,
        network_timeout: float = 60,
        indexer: str = "thread",
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        """``indexer``: "process" indexes acknowledged objects in a process of its own (``run_scp``:
        the listener keeps its CPU for receiving); "thread" in this process (tests; SQLite in
        memory, which another process cannot open)."""
        if indexer not in ("thread", "process"):
            raise ValueError(f"indexer must be 'thread' or 'process', not {indexer!r}")
        # Process-wide pynetdicom switches: receive data sets to disk, and no per-PDU/DIMSE
        # logging (it would cost CPU on every fragment), nor any formatting of query and
        # retrieve identifiers (patient names and IDs must never reach a log).
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        # Our associations' data sets are received straight into the spool (_ReceiveFile);
        # both replacements fall back to pynetdicom's own behaviour for anything else.
        dimse_messages.NamedTemporaryFile = _named_temporary_file
        dimse_messages.write_file_meta_info = _write_file_meta_info
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu
        self.ae.network_timeout = network_timeout
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            # Every transfer syntax pynetdicom knows: compressed data sets are stored as received.
            # Both roles: a sender that proposes no role selection stores here (we are the SCP);
            # a C-GET caller that proposes the SCP role for itself receives its instances on
            # the same association (we are the SCU, archive.dimse.retrieve).
            self.ae.add_supported_context(
                cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for cx in VerificationPresentationContexts:
            assert cx.abstract_syntax is not None
            self.ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        # Query/retrieve (archive.dimse.find and archive.dimse.retrieve): Patient Root and Study
        # Root, FIND, MOVE and GET.
        for abstract_syntax in QUERY_RETRIEVE_SOP_CLASSES:
            self.ae.add_supported_context(abstract_syntax, ALL_TRANSFER_SYNTAXES)
        # Storage Commitment Push Model (archive.dimse.commitment): a requester that proposes
        # the SCP role gets the N-EVENT-REPORT on the N-ACTION's association.
        self.ae.add_supported_context(
            commitment.SOP_CLASS, commitment.TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[Association, _Session] = {}
        self._lock = threading.Lock()
        self._pending: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        self.max_backlog = max_backlog
        self._indexer_kind = indexer
        self._mp = multiprocessing.get_context("spawn")
        self._backlog = self._mp.Value("q", 0)
        self._inbox: Any = self._mp.JoinableQueue() if indexer == "process" else queue.Queue()
        self._indexer: Any = None
        # Writes what each association did (archive.dimse.activity), off the DIMSE path.
        self.activity = activity.Recorder()
        # Flushes and hashes received objects while the handler checks them (two per association).
        self._syncer = threads.Pool(
            max_workers=2 * max_associations, thread_name_prefix="strata-scp-sync"
        )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> tuple[str, int]:  # noqa: S104
        """Index what a stopped listener left, start the indexer, then bind and serve in a
        background thread. Returns the bound (host, port)."""
        self._indexer_start()
        self.activity.start()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store_recorded),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_n_action),
            # SOP Class Extended Negotiation: relational queries and fuzzy person-name matching
            # for C-FIND.
            (evt.EVT_SOP_EXTENDED, find.on_sop_extended),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        server = self.ae.make_server(
            (host, port),
            evt_handlers=handlers,
            server_class=_Server,
            request_handler=_RequestHandler,
        )
        assert isinstance(server, _Server)
        server.scp = self
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="strata-scp"
        )
        self._thread.daemon = True
        self._thread.start()
        # Pending storage commitments are reported from now on, those of a previous run too.
        commitment.listener_started(self)
        address = server.server_address
        return str(address[0]), int(address[1])

    def _indexer_start(self) -> None:
        for message in queue_recover():
            if isinstance(message, Queued):
                with self._backlog.get_lock():
                    self._backlog.value += 1
            self._inbox.put(message)
        if self._indexer_kind == "process":
            database = {"NAME": connection.settings_dict["NAME"]}
            self._indexer = self._mp.Process(
                target=indexer_process_main,
                args=(self._inbox, self._backlog, database),
                name="strata-scp-indexer",
                daemon=True,
            )
        else:
            self._indexer = IndexerThread(self._inbox, self._backlog)
        self._indexer.start()

    def wait_indexed(self, timeout: float = 60.0) -> bool:
        """Wait until every acknowledged object so far is indexed (or waits for a failing
        store) and every ended association's job is closed. False on time-out."""
        waiter = threading.Thread(target=self._inbox.join, daemon=True)
        waiter.start()
        waiter.join(timeout)
        return not waiter.is_alive()

    @property
    def associations(self) -> list[Association]:
        return self.server.active_associations if self.server is not None else []

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let running associations finish for ``grace`` seconds, abort the rest."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in server.active_associations:
            logger.warning(
                "dimse: aborting association from %s at shutdown", assoc.requestor.address
            )
            assoc.abort()
        # An aborted association may still be inside a C-STORE handler: let it finish storing or
        # cleaning up (its object is not acknowledged, so the sender will send it again).
        for assoc in server.active_associations:
            assoc.join(timeout=60)
        self._syncer.shutdown(wait=True)
        self.activity.stop()
        # The indexer finishes what was acknowledged; what it cannot finish stays queued on disk
        # and is indexed at the next start.
        if self._indexer is not None:
            self._inbox.put(None)
            self._indexer.join(timeout=max(grace, 5.0) + 60)
            if self._indexer.is_alive():
                logger.warning("dimse: the indexer did not stop; queued objects wait on disk")
                if self._indexer_kind == "process":
                    self._indexer.terminate()
            self._indexer = None

    # --- association acceptance -------------------------------------------------------------

    def _on_requested(self, event: Event) -> None:
        """Admit or reject (A-ASSOCIATE-RJ) the association before negotiation."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        called = str(getattr(request, "called_ae_title", "") or "").strip()
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        address = str(assoc.requestor.address)
        try:
            dicom_ae = ae_admit(called_ae=called, calling_ae=calling, address=address)
            if dicom_ae is None:
                diagnostic, why = rejection_reason(
                    called_ae=called, calling_ae=calling, address=address
                )
                logger.warning(
                    "dimse: rejected association %s -> %s from %s: %s",
                    calling,
                    called,
                    address,
                    why,
                )
                _reject(assoc, REJECT_PERMANENT, SOURCE_SERVICE_USER, diagnostic)
                return
            location = location_primary(dicom_ae.organization)
            store = store_for(location)
            queue_dir = association_queue_dir(store, dicom_ae.organization.pk)
        except Exception:
            # A notification handler's exception would let negotiation go on: refuse instead.
            logger.exception("dimse: cannot check association %s -> %s", calling, called)
            _reject(
                assoc, REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, DIAG_TEMPORARY_CONGESTION
            )
            return
        session = _Session(
            dicom_ae=dicom_ae,
            org=dicom_ae.organization,
            called_ae=called,
            calling_ae=calling,
            address=_clean_address(address),
            dul_native_id=assoc.dul.native_id,
            location=location,
            store=store,
            queue_dir=queue_dir,
        )
        _prefer_senders_transfer_syntax(assoc)
        session.activity = self.activity.opened(
            assoc,
            org=session.org,
            dicom_ae_id=dicom_ae.pk,
            called_ae=called,
            calling_ae=calling,
            address=session.address,
        )
        with self._lock:
            self._sessions[assoc] = session
        logger.info(
            "dimse: accepted association %s -> %s from %s for org %s",
            calling,
            called,
            address,
            session.org.pk,
        )

    def _session(self, assoc: Association) -> _Session | None:
        with self._lock:
            return self._sessions.get(assoc)

    def _on_released(self, event: Event) -> None:
        session = self._session(event.assoc)
        if session is not None:
            session.outcome = session.outcome or "released"
            session.dul_cpu = max(session.dul_cpu, _thread_cpu_seconds(session.dul_native_id))

    def _on_aborted(self, event: Event) -> None:
        session = self._session(event.assoc)
        if session is not None:
            session.outcome = session.outcome or "aborted"

    # --- services -----------------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        record = self.activity.record(event.assoc)
        if record is not None:
            record.echoed()
        return SUCCESS

    def _peer(self, event: Event) -> Peer | None:
        session = self._session(event.assoc)
        if session is None:  # only admitted associations get this far
            return None
        return Peer(
            org=session.org,
            called_ae=session.called_ae,
            calling_ae=session.calling_ae,
            address=session.address,
        )

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        record = self.activity.record(event.assoc)
        yield from activity.find_observed(record, event, find.c_find(self._peer(event), event))

    def _on_move(self, event: Event) -> Iterator[Any]:
        yield from retrieve.c_move(self._peer(event), event)

    def _on_get(self, event: Event) -> Iterator[Any]:
        yield from retrieve.c_get(self._peer(event), event)

    def _on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        record = self.activity.record(event.assoc)
        operation = activity.commitment_begin(record, event)
        answer = commitment.n_action(self._peer(event), event)
        activity.answered(record, operation, answer[0])
        return answer

    def _on_store_recorded(self, event: Event) -> int | Dataset:
        """``_on_store``, its answer counted for the association's activity (in memory)."""
        answer = self._on_store(event)
        session = self._session(event.assoc)
        if session is not None and session.activity is not None:
            session.activity.stored(
                answer,
                bytes_received=session.counts["bytes_received"],
                ingest_job_id=session.job.pk if session.job is not None else None,
            )
        return answer

    def _on_store(self, event: Event) -> int | Dataset:
        session = self._session(event.assoc)
        if session is None:  # only admitted associations get this far
            return _failure(STATUS_INTERNAL_ERROR, "Association not admitted.")
        session.dul_cpu = max(session.dul_cpu, _thread_cpu_seconds(session.dul_native_id))
        try:
            with db_serial():
                return self._store(session, event)
        except Exception:
            logger.exception("dimse: C-STORE failed for org %s", session.org.pk)
            # A broken connection must not fail every later C-STORE of the association.
            connection.close()
            reason = "Internal error; please retry later."
            if session.job is not None:
                failed = IngestResult(
                    status="failed",
                    sop_instance_uid=_requested_sop_instance(event),
                    reason_code=STATUS_INTERNAL_ERROR,
                    reason=reason,
                )
                try:
                    with db_serial():
                        self._count(session, failed, STATUS_INTERNAL_ERROR)
                except Exception:
                    logger.exception(
                        "dimse: counting the failure failed for org %s", session.org.pk
                    )
                    connection.close()
            return _failure(STATUS_INTERNAL_ERROR, reason)

    def _store(self, session: _Session, event: Event) -> int | Dataset:
        assert session.store is not None and session.location is not None
        assert session.queue_dir is not None
        if session.job is None:
            now = timezone.now()
            session.quota = Quota(session.org)
            session.job = IngestJob.objects.create(
                organization=session.org,
                kind=IngestJob.Kind.CSTORE,
                state=IngestJob.State.RUNNING,
                source=session.source[:1000],
                params={
                    "called_ae": session.called_ae,
                    "calling_ae": session.calling_ae,
                    "address": session.address,
                    "location_id": session.location.pk,
                    "queue_folder": str(session.queue_dir),
                },
                started_at=now,
                heartbeat_at=now,
            )
            queue_job_record(
                session.queue_dir, job_id=session.job.pk, location_id=session.location.pk
            )
        assert session.store is not None and session.location is not None
        assert session.quota is not None
        request = cast(C_STORE, event.request)
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        busy = self._refuse_busy(session)
        if busy is not None:
            result = IngestResult(
                status="failed",
                sop_instance_uid=sop_instance_uid,
                reason_code=PROCESSING_FAILURE,
                reason=busy,
            )
            return self._answer(session, result, discard=None)
        try:
            received = getattr(request, "_dataset_file", None)
            complete: Callable[[], None] | None = None
            if isinstance(received, _ReceiveFile):
                spooled, complete = received.spooled(self._syncer)
            else:  # received by pynetdicom's own file: copied with our File Meta (and synced)
                spooled = spool_received(
                    event.dataset_path,
                    session.queue_dir,
                    sop_class_uid=str(request.AffectedSOPClassUID or ""),
                    sop_instance_uid=sop_instance_uid,
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    sending_ae=session.calling_ae,
                    receiving_ae=session.called_ae,
                )
        except (OSError, ValueError) as exc:
            logger.warning("dimse: spooling failed for org %s: %s", session.org.pk, exc)
            result = IngestResult(
                status="failed",
                sop_instance_uid=sop_instance_uid,
                reason_code=PROCESSING_FAILURE,
                reason="The received data set could not be spooled; please retry later.",
            )
            return self._answer(session, result, discard=None)
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            try:
                decided = instance_precheck(
                    org=session.org,
                    spooled=spooled,
                    quota=session.quota,
                    pending=lambda uid: self._pending_sha(session.org.pk, uid),
                    series_studies=session.series_studies,
                    ready=complete,
                )
            except Exception as exc:
                # The header reader failed in a way it does not report (e.g. a corrupt deflate
                # stream): for data that is no DICOM at all, or a deflate stream that does not
                # inflate, that is the sender's error (0xC000), not ours (0xA702, retry).
                why = not_a_data_set(spooled.path, transfer_syntax)
                if why is None and isinstance(exc, zlib.error):
                    why = "The deflated data set cannot be inflated: truncated or corrupt."
                if why is None:
                    raise
                decided = _cannot_understand(sop_instance_uid, why)
            finally:
                # Durable before it is acknowledged; and the file must not be closed (by
                # pynetdicom, after this handler) while it is being flushed.
                if complete is not None:
                    complete()
            header = spooled.header
            mismatch = uid_mismatch(header, request) if header is not None else None
            if mismatch is not None:
                if decided is None:  # it had been counted against the quota
                    session.quota.give_back(spooled.size)
                return self._answer(
                    session,
                    mismatch.result,
                    discard=spooled.path,
                    offending=mismatch.offending,
                    comment=mismatch.comment,
                )
            if decided is not None:
                if (
                    header is None
                    and decided.reason_code in (DATASET_DOES_NOT_MATCH, CANNOT_UNDERSTAND)
                    and not decided.reason.startswith(NOT_DICOM)
                ):
                    # Refused by the header reader: say so when it is not DICOM at all, rather
                    # than "UIDs missing" or "cannot be parsed".
                    why = not_a_data_set(spooled.path, transfer_syntax)
                    if why is not None:
                        decided = _cannot_understand(sop_instance_uid, why)
                return self._answer(session, decided, discard=spooled.path)
        except BaseException:
            spooled.path.unlink(missing_ok=True)
            raise
        assert header is not None
        if isinstance(received, _ReceiveFile):
            received.keep()
        self._pending_add(session.org.pk, header.sop_instance_uid, spooled.sha256)
        with self._backlog.get_lock():
            self._backlog.value += 1
        self._inbox.put(
            Queued(
                org_id=session.org.pk,
                job_id=session.job.pk,
                location_id=session.location.pk,
                path=str(spooled.path),
                size=spooled.size,
                sha256=spooled.sha256,
            )
        )
        accepted = IngestResult(
            status="accepted", sop_instance_uid=header.sop_instance_uid, size=spooled.size
        )
        return self._answer(session, accepted, discard=None)

    def _refuse_busy(self, session: _Session) -> str | None:
        """Why new objects are refused for now (retry later), or None."""
        assert session.store is not None and session.location is not None
        if store_down(session.store, session.location.pk):
            return "The object store is failing; please retry later."
        if self._backlog.value >= self.max_backlog:
            return "The archive is busy indexing; please retry later."
        return None

    def _answer(
        self,
        session: _Session,
        result: IngestResult,
        discard: Path | None,
        offending: int | None = None,
        comment: str = "",
    ) -> int | Dataset:
        """The C-STORE response for ``result``; a failure is counted and carries ``comment``
        (default: the result's reason) as its Error Comment."""
        if discard is not None:
            discard.unlink(missing_ok=True)
        status = SUCCESS if result.status == "accepted" else cstore_status(result)
        self._count(session, result, status)
        if status == SUCCESS:
            return SUCCESS
        logger.info("dimse: C-STORE refused for org %s with status 0x%04X", session.org.pk, status)
        answer = _failure(status, comment or result.reason)
        if offending is not None:
            answer.OffendingElement = [offending]
        return answer

    def _pending_sha(self, org_id: int, sop_instance_uid: str) -> str | None:
        with self._lock:
            entry = self._pending.get((org_id, sop_instance_uid))
        return entry[0] if entry is not None else None

    def _pending_add(self, org_id: int, sop_instance_uid: str, sha256: str) -> None:
        """Remember an accepted object until the indexer has surely indexed it, so that the same
        UID sent again meanwhile is answered as the database would answer it afterwards."""
        now = time.monotonic()
        with self._lock:
            self._pending[(org_id, sop_instance_uid)] = (sha256, now)
            self._pending.move_to_end((org_id, sop_instance_uid))
            while self._pending:
                _, (_, since) = next(iter(self._pending.items()))
                if now - since < PENDING_SECONDS:
                    break
                self._pending.popitem(last=False)

    def _count(self, session: _Session, result: IngestResult, status: int) -> None:
        """Count the object; the job row is written at most every ``JOB_FLUSH_SECONDS``.

        Writing it per object would add a statement to every C-STORE for a progress figure nobody
        needs at that rate; the counts are complete when the association ends.
        """
        job = session.job
        assert job is not None
        outcome = {"accepted": "accepted", "duplicate": "duplicate"}.get(result.status, "failed")
        session.counts["received"] += 1
        session.counts[outcome] += 1
        session.counts["bytes_received"] += result.size
        if outcome == "failed":
            IngestFailure.objects.create(
                organization=session.org,
                job=job,
                source=f"C-STORE {session.calling_ae}@{session.address}"[:1000],
                sop_instance_uid=result.sop_instance_uid[:64],
                reason_code=status,
                reason=(result.reason or "Refused.")[:500],
            )
        if outcome == "failed" or time.monotonic() - session.flushed_at >= JOB_FLUSH_SECONDS:
            self._flush(session, job)

    def _flush(self, session: _Session, job: IngestJob) -> None:
        """Add what changed since the last flush (the indexer writes to the same row)."""
        delta = {
            name: F(name) + value - session.flushed.get(name, 0)
            for name, value in session.counts.items()
            if name != "accepted" and value != session.flushed.get(name, 0)
        }
        IngestJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now(), **delta)
        session.flushed = dict(session.counts)
        session.flushed_at = time.monotonic()

    # --- end of association -----------------------------------------------------------------

    def _finish(self, assoc: Association, cpu_start: float) -> None:
        """In the association's thread, after it ended: clean up, flush the job's counts and tell
        the indexer that the association is over (it closes the job when its objects are done)."""
        with self._lock:
            session = self._sessions.pop(assoc, None)
        try:
            _discard_partial_datasets(assoc)
            if session is not None and session.job is None and session.queue_dir is not None:
                queue_folder_remove(session.queue_dir)  # nothing was acknowledged
            if session is not None and session.job is not None:
                cpu = time.thread_time() - cpu_start + session.dul_cpu
                with db_serial():
                    self._flush(session, session.job)
                self._inbox.put(
                    Ended(
                        job_id=session.job.pk,
                        outcome=session.outcome or "ended",
                        listener_cpu=cpu,
                    )
                )
            if session is not None:
                counts = session.counts
                logger.info(
                    "dimse: association %s -> %s from %s %s: %d received, %d accepted, "
                    "%d duplicate, %d failed",
                    session.calling_ae,
                    session.called_ae,
                    session.address,
                    session.outcome or "ended",
                    counts["received"],
                    counts["accepted"],
                    counts["duplicate"],
                    counts["failed"],
                )
        except Exception:
            logger.exception("dimse: closing the association's ingest job failed")
        finally:
            if session is not None:
                self.activity.closed(assoc, session.outcome)
            # This thread's connections only: each association thread has its own.
            connections.close_all()


def _reject(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Send the A-ASSOCIATE-RJ and wait until it is on the wire, as pynetdicom's own rejections do.

    Without the wait the association thread would close the socket while the reject PDU is still
    queued, and the peer would see an abort instead of the reason.
    """
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _prefer_senders_transfer_syntax(assoc: Association) -> None:
    """Accept, per presentation context, the first transfer syntax the sender proposed.

    pynetdicom picks the first of the acceptor's syntaxes that the requestor proposed; ordering
    this association's copy of the supported contexts by the sender's proposals means a data set
    is received in the encoding the sender holds it in (stored as received: no lossy compression
    forced on it, no decompression). Precondition: before negotiation (EVT_REQUESTED).
    """
    request = assoc.requestor.primitive
    proposed: dict[str, list[str]] = {}
    for cx in getattr(request, "presentation_context_definition_list", None) or []:
        merged = proposed.setdefault(str(cx.abstract_syntax), [])
        merged.extend(str(ts) for ts in cx.transfer_syntax if str(ts) not in merged)
    for cx in assoc.acceptor.supported_contexts:
        wanted = proposed.get(str(cx.abstract_syntax))
        if wanted:
            ours = [str(ts) for ts in cx.transfer_syntax]
            ordered: list[str | bytes | UID] = [ts for ts in wanted if ts in ours]
            ordered.extend(ts for ts in ours if ts not in wanted)
            cx.transfer_syntax = ordered


def _requested_sop_instance(event: Event) -> str:
    return str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")


def _clean_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def _discard_partial_datasets(assoc: Association) -> None:
    """Delete pynetdicom's temporary files of data sets that never reached the C-STORE handler.

    pynetdicom deletes the file after the handler ran, but not one whose transfer was cut off
    (abort, broken connection) or that was still queued when the association ended. Best effort:
    these are pynetdicom internals, checked defensively.
    """
    dimse = getattr(assoc, "dimse", None)
    partial = getattr(getattr(dimse, "message", None), "_data_set_file", None)
    handles = [partial] if partial is not None else []
    pending = getattr(dimse, "msg_queue", None)
    while pending is not None and not pending.empty():
        try:
            entry = pending.get_nowait()
        except queue.Empty:
            break
        handle = getattr(entry[-1] if isinstance(entry, tuple) else entry, "_dataset_file", None)
        if handle is not None:
            handles.append(handle)
    for handle in handles:
        try:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
        except OSError:
            logger.warning("dimse: could not delete a partial received data set")


def spool_received(
    received: Path,
    spool_dir: Path,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    sending_ae: str,
    receiving_ae: str,
) -> Spooled:
    """Stream a received data set into a new Part 10 spool file with Strata's File Meta header,
    on disk (fsynced) when this returns.

    ``received`` is pynetdicom's file (its own File Meta, then the data set exactly as sent in the
    accepted transfer syntax). The data set bytes are copied unchanged, so compressed data sets are
    stored as received; the header records who sent it to which AE title. Hashes while copying:
    one pass, constant memory.
    """
    meta = create_file_meta(
        sop_class_uid=UID(sop_class_uid),
        sop_instance_uid=UID(sop_instance_uid),
        transfer_syntax=UID(transfer_syntax_uid),
    )
    meta.SourceApplicationEntityTitle = receiving_ae
    if sending_ae:
        meta.SendingApplicationEntityTitle = sending_ae
    meta.ReceivingApplicationEntityTitle = receiving_ae
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    path = spool_dir / f"{uuid.uuid4().hex}.part"
    head = header.getvalue()
    digest = hashlib.sha256(head)
    size = len(head)
    buffer = bytearray(CHUNK)  # reused for every chunk: no allocation per chunk
    view = memoryview(buffer)
    try:
        with open(received, "rb") as source, open(path, "wb") as out:
            source.seek(_dataset_offset(source))
            out.write(head)
            while count := source.readinto(buffer):
                digest.update(view[:count])
                out.write(view[:count])
                size += count
            out.flush()
            os.fsync(out.fileno())  # acknowledged objects must survive a crash
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spooled(path=path, size=size, sha256=digest.hexdigest())
