"""Storage Commitment Push Model SCP: N-ACTION from pynetdicom's SCU to the listener, the
N-EVENT-REPORT back on the same association (the requester proposed the SCP role) or on a new
association to the requester registered as a destination, the decision per instance, bad
requests, and the report after a listener restart.

Debian's dcmtk has no storage commitment SCU (no ``stgcmtscu``), so pynetdicom plays the
modality. Transactional tests: the listener runs in threads with their own connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, build_role, evt

from archive.ae_titles.services import ae_create
from archive.dimse import commitment
from archive.dimse import indexer as dimse_indexer
from archive.dimse.indexer import db_serial
from archive.dimse.peer import Peer
from archive.models import DicomDestination, Instance, PendingObject, StorageCommitment
from tenants.context import Actor
from tenants.models import AuditEvent, Organization
from tests.archive.test_dimse import (
    CALLED,
    MODALITY,
    OTHER_CALLED,
    SYNTAXES,
    Listener,
    associate,
    ct,
)

pytestmark = pytest.mark.django_db(transaction=True)

SOP_CLASS = commitment.SOP_CLASS
SOP_INSTANCE = commitment.SOP_INSTANCE


@pytest.fixture(autouse=True)
def _private_destinations(settings: Any) -> None:
    """The test's destinations listen on 127.0.0.1."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True


@pytest.fixture
def start(start_listener: Any) -> Callable[..., Listener]:
    def run(**options: Any) -> Listener:
        scp, host, port, receive_dir = start_listener(**options)
        return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)

    return run


@pytest.fixture
def listener(start: Callable[..., Listener]) -> Listener:
    return start()


@pytest.fixture
def held_indexer(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The indexer waits, before each batch, until the returned event is set (as in
    test_dimse_indexer); set again at the end so that the listener can stop."""
    release = threading.Event()
    real = dimse_indexer.db_serial

    def held() -> Any:
        assert release.wait(30), "the test never released the indexer"
        return real()

    monkeypatch.setattr(dimse_indexer, "db_serial", held)
    yield release
    release.set()


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with db_serial():  # SQLite: one thread of the process at a time
            value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def store(listener: Listener, datasets: Sequence[Dataset], called: str = CALLED) -> None:
    assoc = associate(listener, called=called)
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    listener.wait_idle()


def pairs(datasets: Sequence[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def action_information(transaction_uid: str, items: Sequence[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    referenced = []
    for sop_class, sop_instance in items:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        referenced.append(item)
    ds.ReferencedSOPSequence = referenced
    return ds


@dataclass
class Report:
    event_type: int
    info: Dataset
    called_ae: str = ""
    calling_ae: str = ""

    @property
    def committed(self) -> list[tuple[str, str]]:
        return [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in self.info.get("ReferencedSOPSequence", [])
        ]

    @property
    def failed(self) -> list[tuple[str, str, int]]:
        return [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
            for i in self.info.get("FailedSOPSequence", [])
        ]


@dataclass
class Reports:
    received: list[Report] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    arrived_at: float = 0.0

    def handler(self, event: Any) -> tuple[int, None]:
        self.arrived_at = time.monotonic()
        self.received.append(
            Report(
                event_type=int(event.event_type),
                info=event.event_information,
                called_ae=str(event.assoc.acceptor.ae_title).strip(),
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
            )
        )
        self.arrived.set()
        return 0x0000, None

    def wait(self, timeout: float = 20.0) -> Report:
        assert self.arrived.wait(timeout), "no N-EVENT-REPORT arrived"
        return self.received[-1]


@dataclass
class Requested:
    status: Dataset
    transaction_uid: str
    reports: Reports
    assoc: Any


def request(
    listener: Listener,
    items: Sequence[tuple[str, str]] | None = None,
    *,
    action: Dataset | None = None,
    role: bool = True,
    calling: str = MODALITY,
    called: str = CALLED,
    action_type: int = 1,
    instance_uid: str = SOP_INSTANCE,
    keep_open: bool = True,
) -> Requested:
    """Send one N-ACTION (``action``, or the Action Information requesting ``items``; neither:
    none); with ``role`` the SCU proposes the SCP role and handles the report on the same
    association (released once the report arrived, or at once when not ``keep_open``)."""
    transaction_uid = generate_uid()
    if action is None and items is not None:
        action = action_information(transaction_uid, items)
    reports = Reports()
    scu = AE(ae_title=calling)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 30
    scu.add_requested_context(SOP_CLASS, SYNTAXES)
    assoc = scu.associate(
        listener.host,
        listener.port,
        ae_title=called,
        ext_neg=[build_role(SOP_CLASS, scu_role=True, scp_role=True)] if role else None,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    assert assoc.is_established
    status, _ = assoc.send_n_action(action, action_type, SOP_CLASS, instance_uid)
    if not keep_open:
        assoc.release()
    return Requested(status=status, transaction_uid=transaction_uid, reports=reports, assoc=assoc)


def finish(requested: Requested, timeout: float = 20.0) -> Report:
    try:
        return requested.reports.wait(timeout)
    finally:
        # pynetdicom's SCU answers the report once the handler returned; releasing before
        # that races its own association thread.
        time.sleep(0.1)
        if requested.assoc.is_established:
            requested.assoc.release()


@pytest.fixture
def modality(org: Organization) -> Iterator[Callable[..., Reports]]:
    """A modality's own storage commitment SCU listening for the report on a new association,
    registered as the organization's destination under its AE title."""
    servers: list[Any] = []

    def run(port: int = 0, ae_title: str = MODALITY, owner: Organization | None = None) -> Reports:
        reports = Reports()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(SOP_CLASS, SYNTAXES)
        server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
        )
        assert server is not None
        servers.append(server)
        DicomDestination.objects.update_or_create(
            organization=owner or org,
            ae_title=ae_title,
            defaults={"host": "127.0.0.1", "port": server.server_address[1]},
        )
        return reports

    yield run
    for server in servers:
        server.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def the_commitment(org: Organization) -> StorageCommitment:
    with db_serial():
        return StorageCommitment.objects.for_org(org).get()


def reported(org: Organization) -> StorageCommitment:
    assert wait_for(
        lambda: (
            StorageCommitment.objects.for_org(org)
            .filter(state=StorageCommitment.State.REPORTED)
            .exists()
        )
    )
    return the_commitment(org)


# --- all committed -----------------------------------------------------------------------------


def test_all_stored_instances_are_committed_on_the_same_association(listener, org, dicom_ae):
    sent = [ct(), ct(), ct()]
    store(listener, sent)
    requested = request(listener, pairs(sent))
    assert requested.status.Status == 0x0000
    report = finish(requested)
    assert report.event_type == commitment.EVENT_ALL_COMMITTED
    assert report.info.TransactionUID == requested.transaction_uid
    assert report.info.RetrieveAETitle == CALLED
    assert report.committed == pairs(sent)
    assert "FailedSOPSequence" not in report.info
    row = reported(org)
    assert (row.calling_ae, row.called_ae, row.address) == (MODALITY, CALLED, "127.0.0.1")
    assert row.items == [list(p) for p in pairs(sent)]
    assert row.attempts == 1 and row.reported_at is not None
    assert row.result["delivery"] == "same association"
    assert (row.result["event_type"], row.result["committed"], row.result["failed"]) == (1, 3, [])
    audit = {
        e.action: e for e in AuditEvent.objects.filter(organization=org, target_id=str(row.pk))
    }
    assert audit["storage_commitment.requested"].details["instances"] == 3
    assert audit["storage_commitment.requested"].actor_label == f"dicom:{MODALITY}"
    details = audit["storage_commitment.reported"].details
    assert (details["requested"], details["committed"], details["failed"]) == (3, 3, 0)
    assert details["delivery"] == "same association"


def test_without_the_scp_role_the_report_goes_to_the_registered_modality(
    listener, org, dicom_ae, modality
):
    sent = [ct(), ct()]
    store(listener, sent)
    reports = modality()
    requested = request(listener, pairs(sent), role=False, keep_open=False)
    assert requested.status.Status == 0x0000
    report = reports.wait()
    assert not requested.reports.received  # nothing on the N-ACTION's association
    assert report.event_type == commitment.EVENT_ALL_COMMITTED
    assert report.info.TransactionUID == requested.transaction_uid
    assert report.committed == pairs(sent)
    # From the called AE title to the modality's AE title.
    assert (report.calling_ae, report.called_ae) == (CALLED, MODALITY)
    assert reported(org).result["delivery"] == "new association"


def test_with_the_role_but_the_association_released_the_report_takes_a_new_one(
    listener, org, dicom_ae, modality, held_indexer
):
    first = ct()
    assoc = associate(listener)
    assert assoc.send_c_store(first).Status == 0x0000  # acknowledged, not indexed yet
    assoc.release()
    reports = modality()
    requested = request(listener, pairs([first]), role=True, keep_open=False)
    assert requested.status.Status == 0x0000
    held_indexer.set()
    report = reports.wait()
    assert report.committed == pairs([first])
    assert reported(org).result["delivery"] == "new association"


def test_the_report_follows_the_n_action_response_even_when_decided_first(
    listener, org, dicom_ae, monkeypatch
):
    """The handler still runs when the reporter has decided (here: it sleeps after handing the
    request over); the report waits until the N-ACTION's response is on the wire."""
    sent = ct()
    store(listener, [sent])
    real = commitment.Reporter.submit

    def submit(self: commitment.Reporter, *args: Any) -> None:
        real(self, *args)
        time.sleep(0.5)  # decided and ready to report before the handler returns

    monkeypatch.setattr(commitment.Reporter, "submit", submit)
    requested = request(listener, pairs([sent]))
    answered = time.monotonic()
    assert requested.status.Status == 0x0000
    report = finish(requested)
    assert report.committed == pairs([sent])
    assert requested.reports.arrived_at >= answered


# --- failures per instance -----------------------------------------------------------------


def test_an_unknown_instance_fails_with_no_such_object(listener, org, dicom_ae):
    sent = [ct(), ct()]
    store(listener, sent)
    unknown = (str(CTImageStorage), generate_uid())
    report = finish(request(listener, [*pairs(sent), unknown]))
    assert report.event_type == commitment.EVENT_FAILURES_EXIST
    assert report.committed == pairs(sent)
    assert report.failed == [(*unknown, 0x0112)]
    row = reported(org)
    assert row.result["failure_reasons"] == {"0x0112": 1}
    details = AuditEvent.objects.get(action="storage_commitment.reported").details
    assert (details["committed"], details["failed"]) == (2, 1)


def test_another_organizations_instance_is_no_such_object(listener, org, other_org, dicom_ae):
    ae_create(
        org=other_org,
        ae_title=OTHER_CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    theirs, ours = ct(), ct()
    store(listener, [theirs], called=OTHER_CALLED)
    store(listener, [ours])
    report = finish(request(listener, pairs([theirs, ours])))
    assert report.committed == pairs([ours])
    assert report.failed == [(*pairs([theirs])[0], 0x0112)]
    # And the other way round: ours is unknown to the other organization.
    report = finish(request(listener, pairs([ours, theirs]), called=OTHER_CALLED))
    assert report.committed == pairs([theirs])
    assert report.failed == [(*pairs([ours])[0], 0x0112)]
    assert StorageCommitment.objects.for_org(other_org).count() == 1


def test_a_different_sop_class_under_the_same_uid_is_a_class_instance_conflict(
    listener, org, dicom_ae
):
    sent = ct()
    store(listener, [sent])
    report = finish(request(listener, [(str(MRImageStorage), str(sent.SOPInstanceUID))]))
    assert report.event_type == commitment.EVENT_FAILURES_EXIST
    assert report.committed == []
    assert report.failed == [(str(MRImageStorage), str(sent.SOPInstanceUID), 0x0119)]


def test_an_instance_in_the_trash_or_with_its_intent_row_left_is_not_committed(
    listener, org, dicom_ae, monkeypatch
):
    monkeypatch.setattr(commitment, "INDEX_WAIT_SECONDS", 0.3)
    trashed, pending, fine = ct(), ct(), ct()
    store(listener, [trashed, pending, fine])
    with db_serial():
        instance = Instance.objects.for_org(org).get(sop_instance_uid=trashed.SOPInstanceUID)
        instance.study.__class__.objects.filter(pk=instance.study_id).update(
            trashed_at=timezone.now()
        )
        other = Instance.objects.for_org(org).get(sop_instance_uid=pending.SOPInstanceUID)
        PendingObject.objects.create(
            organization=org, location=other.location, object_key=other.object_key
        )
    report = finish(request(listener, pairs([trashed, pending, fine])))
    assert report.committed == pairs([fine])
    assert report.failed == [(*pairs([trashed])[0], 0x0112), (*pairs([pending])[0], 0x0110)]


def test_an_instance_still_being_indexed_is_committed_once_indexed(
    listener, org, dicom_ae, held_indexer
):
    first = ct()
    assoc = associate(listener)
    assert assoc.send_c_store(first).Status == 0x0000  # acknowledged, in the queue folder
    assoc.release()
    assert not Instance.objects.exists()
    requested = request(listener, pairs([first]))
    assert requested.status.Status == 0x0000
    time.sleep(0.5)  # the decision waits for the indexer
    assert not requested.reports.received
    held_indexer.set()
    report = finish(requested)
    assert report.event_type == commitment.EVENT_ALL_COMMITTED
    assert report.committed == pairs([first])


def test_an_instance_not_indexed_within_the_wait_fails_with_processing_failure(
    listener, org, dicom_ae, held_indexer, monkeypatch
):
    monkeypatch.setattr(commitment, "INDEX_WAIT_SECONDS", 0.5)
    first, stored = ct(), ct()
    held_indexer.set()
    store(listener, [stored])
    held_indexer.clear()
    assoc = associate(listener)
    assert assoc.send_c_store(first).Status == 0x0000
    assoc.release()
    report = finish(request(listener, pairs([stored, first])))
    held_indexer.set()
    assert report.event_type == commitment.EVENT_FAILURES_EXIST
    assert report.committed == pairs([stored])
    assert report.failed == [(*pairs([first])[0], 0x0110)]


# --- bad requests ----------------------------------------------------------------------------


def _item(sop_class: str | None, sop_instance: str | None) -> Dataset:
    item = Dataset()
    if sop_class is not None:
        item.ReferencedSOPClassUID = sop_class
    if sop_instance is not None:
        item.ReferencedSOPInstanceUID = sop_instance
    return item


def _action(transaction_uid: str | None = "1.2.3.4", items: list[Dataset] | None = None) -> Any:
    ds = Dataset()
    if transaction_uid is not None:
        ds.TransactionUID = transaction_uid
    if items is not None:
        ds.ReferencedSOPSequence = items
    return ds


GOOD_ITEM = (str(CTImageStorage), "1.2.3.4.5")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, on the SCU side
@pytest.mark.parametrize(
    ("action", "status", "comment"),
    [
        (_action(None, [_item(*GOOD_ITEM)]), 0x0115, "Transaction UID is empty"),
        (_action("1.2.x", [_item(*GOOD_ITEM)]), 0x0115, "Transaction UID contains 'x'"),
        (_action("1.2..3", [_item(*GOOD_ITEM)]), 0x0115, "Transaction UID has an empty"),
        (_action("1.2.3", None), 0x0115, "Referenced SOP Sequence is missing"),
        (_action("1.2.3", []), 0x0115, "Referenced SOP Sequence is empty"),
        (
            _action("1.2.3", [_item(*GOOD_ITEM), _item(str(CTImageStorage), None)]),
            0x0115,
            "Item 2: SOP Instance UID is empty",
        ),
        (
            _action("1.2.3", [_item(None, "1.2.3.4")]),
            0x0115,
            "Item 1: SOP Class UID is empty",
        ),
        (
            _action("1.2.3", [_item("1.2.840.10008.5.1.4.1.1.2 ", "1.2.3.4/5")]),
            0x0115,
            "Item 1: SOP Instance UID contains '/'",
        ),
        (None, 0x0115, "Transaction UID is empty"),
    ],
    ids=[
        "no-transaction-uid",
        "transaction-uid-letters",
        "transaction-uid-empty-component",
        "no-referenced-sequence",
        "empty-referenced-sequence",
        "item-without-instance",
        "item-without-class",
        "item-with-invalid-instance",
        "no-action-information",
    ],
)
def test_bad_action_information_is_refused_with_invalid_argument_value(
    listener, org, dicom_ae, action, status, comment
):
    requested = request(listener, action=action, keep_open=False)
    assert requested.status.Status == status
    assert requested.status.ErrorComment.startswith(comment)
    assert not StorageCommitment.objects.exists()


def test_an_action_type_other_than_1_is_no_such_action(listener, org, dicom_ae):
    requested = request(listener, [GOOD_ITEM], action_type=2, keep_open=False)
    assert requested.status.Status == 0x0123
    assert "only 1" in requested.status.ErrorComment
    assert not StorageCommitment.objects.exists()


def test_another_requested_sop_instance_is_no_such_sop_instance(listener, org, dicom_ae):
    requested = request(listener, [GOOD_ITEM], instance_uid="1.2.3.4", keep_open=False)
    assert requested.status.Status == 0x0112
    assert SOP_INSTANCE in requested.status.ErrorComment
    assert not StorageCommitment.objects.exists()


def test_too_many_items_is_a_resource_limitation(listener, org, dicom_ae, monkeypatch):
    monkeypatch.setattr(commitment, "MAX_ITEMS", 2)
    items = [(str(CTImageStorage), generate_uid()) for _ in range(3)]
    requested = request(listener, items, keep_open=False)
    assert requested.status.Status == 0x0213
    assert "at most 2" in requested.status.ErrorComment
    assert not StorageCommitment.objects.exists()


def test_no_role_and_no_destination_is_refused_as_it_could_never_be_reported(
    listener, org, other_org, dicom_ae, modality
):
    modality(owner=other_org)  # the modality's title is another organization's destination
    requested = request(listener, [GOOD_ITEM], role=False, keep_open=False)
    assert requested.status.Status == 0x0110
    assert "register AE as destination" in requested.status.ErrorComment
    assert not StorageCommitment.objects.exists()


class _Event:
    """What the listener hands ``n_action`` (pynetdicom's event), for what an SCU cannot send."""

    def __init__(self, *, sop_class: str = SOP_CLASS, information: Any = None):
        self.request = SimpleNamespace(
            RequestedSOPClassUID=sop_class, RequestedSOPInstanceUID=SOP_INSTANCE, ActionTypeID=1
        )
        self.assoc = SimpleNamespace(accepted_contexts=[], scp=None)
        self.context = SimpleNamespace(context_id=1)
        self._information = information

    @property
    def action_information(self) -> Dataset:
        if isinstance(self._information, Exception):
            raise self._information
        return self._information


def _peer(org: Organization) -> Peer:
    return Peer(org=org, called_ae=CALLED, calling_ae=MODALITY, address="127.0.0.1")


def test_n_action_refusals_an_scu_cannot_provoke(org):
    status, reply = commitment.n_action(None, _Event())
    assert (status.Status, reply) == (0x0124, None)
    status, _ = commitment.n_action(_peer(org), _Event(sop_class="1.2.840.10008.5.1.1.1"))
    assert status.Status == 0x0118
    status, _ = commitment.n_action(_peer(org), _Event(information=ValueError("bad tag")))
    assert (status.Status, status.ErrorComment) == (0x0115, "Action Information cannot be read")
    bad = Dataset()
    bad.TransactionUID = "1.2.3"
    bad.ReferencedSOPSequence = [_item(*GOOD_ITEM)]
    bad.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = ["1.2.3", "1.2.4"]
    status, _ = commitment.n_action(_peer(org), _Event(information=bad))
    assert status.Status == 0x0115
    assert status.ErrorComment == "Item 1: SOP Instance UID has more than one value"
    assert not StorageCommitment.objects.exists()


# --- delivery failures, retries, restart ------------------------------------------------------


def test_an_unreachable_modality_is_retried_with_backoff_then_failed(
    start, org, dicom_ae, monkeypatch
):
    monkeypatch.setattr(commitment, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(commitment, "RETRY_BASE_SECONDS", 0.2)
    monkeypatch.setattr(commitment, "POLL_SECONDS", 0.1)
    listener = start()
    sent = ct()
    store(listener, [sent])
    DicomDestination.objects.create(
        organization=org, ae_title=MODALITY, host="127.0.0.1", port=free_port()
    )
    requested = request(listener, pairs([sent]), role=False, keep_open=False)
    assert requested.status.Status == 0x0000
    assert wait_for(
        lambda: StorageCommitment.objects.filter(state=StorageCommitment.State.FAILED).exists()
    )
    row = the_commitment(org)
    assert row.attempts == 2 and row.reported_at is None
    assert "association to" in row.last_error
    failed = AuditEvent.objects.get(action="storage_commitment.failed")
    assert failed.details["attempts"] == 2
    assert commitment.retry_delay(1) == 0.2 and commitment.retry_delay(2) == 0.4
    monkeypatch.setattr(commitment, "RETRY_BASE_SECONDS", 15.0)
    assert commitment.retry_delay(30) == commitment.RETRY_MAX_SECONDS


def test_a_private_address_is_refused_unless_the_platform_allows_it(
    listener, org, dicom_ae, modality, settings
):
    sent = ct()
    store(listener, [sent])
    reports = modality()
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    request(listener, pairs([sent]), role=False, keep_open=False)
    assert wait_for(lambda: StorageCommitment.objects.filter(attempts=1, claimed_by="").exists())
    row = the_commitment(org)
    assert row.state == StorageCommitment.State.PENDING
    assert "loopback" in row.last_error
    assert not reports.received


def test_the_report_arrives_after_a_listener_restart_between_n_action_and_report(
    start, org, dicom_ae, modality
):
    """The modality is down when the listener first tries; the listener stops; the modality
    comes back; the listener starts again and reports the recorded request."""
    first = start()
    sent = [ct(), ct()]
    store(first, sent)
    port = free_port()
    DicomDestination.objects.create(
        organization=org, ae_title=MODALITY, host="127.0.0.1", port=port
    )
    requested = request(first, pairs(sent), role=False, keep_open=False)
    assert requested.status.Status == 0x0000
    assert wait_for(lambda: StorageCommitment.objects.filter(attempts=1, claimed_by="").exists())
    assert the_commitment(org).state == StorageCommitment.State.PENDING
    first.scp.stop(grace=5)
    reports = modality(port=port)
    start()
    report = reports.wait()
    assert report.info.TransactionUID == requested.transaction_uid
    assert report.committed == pairs(sent)
    row = reported(org)
    assert row.attempts == 2 and row.result["delivery"] == "new association"


def test_a_request_recorded_by_a_listener_that_died_is_reported_at_the_next_start(
    start, org, dicom_ae, modality, monkeypatch
):
    first = start()
    sent = ct()
    store(first, [sent])
    reports = modality()
    # The listener dies right after answering: its reporter never sees the request.
    monkeypatch.setattr(commitment.Reporter, "submit", lambda self, *a, **k: None)
    requested = request(first, pairs([sent]), role=True, keep_open=False)
    assert requested.status.Status == 0x0000
    first.scp.stop(grace=5)
    monkeypatch.undo()
    row = the_commitment(org)
    assert (row.state, row.attempts) == (StorageCommitment.State.PENDING, 0)
    start()
    report = reports.wait()
    assert report.info.TransactionUID == requested.transaction_uid
    assert report.committed == pairs([sent])
    assert reported(org).result["delivery"] == "new association"


def test_a_claim_of_a_dead_listener_is_taken_over_once_it_ran_out(
    start, org, dicom_ae, modality, monkeypatch
):
    monkeypatch.setattr(commitment, "POLL_SECONDS", 0.2)
    listener = start()
    sent = ct()
    store(listener, [sent])
    reports = modality()
    with db_serial():
        row = StorageCommitment.objects.create(
            organization=org,
            transaction_uid=generate_uid(),
            calling_ae=MODALITY,
            called_ae=CALLED,
            items=[list(p) for p in pairs([sent])],
            attempts=1,
            claimed_by="elsewhere:1:dead",
            claimed_until=timezone.now() + timedelta(seconds=1),
            next_attempt_at=timezone.now(),
        )
    time.sleep(0.5)
    assert not reports.received  # still claimed
    report = reports.wait()
    assert report.info.TransactionUID == row.transaction_uid
    row = reported(org)
    assert row.attempts == 2


def test_two_listeners_never_report_one_commitment_twice(org, dicom_ae):
    row = StorageCommitment.objects.create(
        organization=org,
        transaction_uid=generate_uid(),
        calling_ae=MODALITY,
        called_ae=CALLED,
        items=[GOOD_ITEM],
    )
    assert commitment.commitment_claim(commitment_id=row.pk, token="a") is not None
    assert commitment.commitment_claim(commitment_id=row.pk, token="b") is None
    assert commitment.commitments_due(include_not_due=True) == []


def test_the_listener_offers_storage_commitment_with_both_roles(listener, dicom_ae):
    scu = AE(ae_title=MODALITY)
    scu.add_requested_context(SOP_CLASS, [ExplicitVRLittleEndian])
    assoc = scu.associate(
        listener.host,
        listener.port,
        ae_title=CALLED,
        ext_neg=[build_role(SOP_CLASS, scu_role=True, scp_role=True)],
    )
    assert assoc.is_established
    (context,) = assoc.accepted_contexts
    assert context.abstract_syntax == SOP_CLASS
    assert (context.as_scu, context.as_scp) == (True, True)
    assoc.release()
