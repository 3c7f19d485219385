"""What the listener records of each association for the DICOM connections page
(``archive.dimse.activity``): every kind of operation over real pynetdicom associations, the end of
an association, no patient data kept, the other organization's associations under its own name,
retention, and that a failing record never fails the DIMSE operation.

Transactional tests: the listener and its activity writer run in threads of their own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from pynetdicom import AE

from archive.dimse import activity
from archive.dimse.indexer import db_serial
from archive.dimse.tasks import dimse_activity_purge
from archive.models import (
    DicomAssociation,
    DicomDestination,
    DicomOperation,
    StorageCommitment,
)
from tenants.models import Organization
from tests.archive.test_dimse import (
    CALLED,
    MODALITY,
    OTHER_CALLED,
    SYNTAXES,
    Listener,
    Verification,
    associate,
    ct,
)
from tests.archive.test_dimse_commitment import finish, request
from tests.archive.test_dimse_retrieve import (
    DESTINATION,
    Receiver,
    get,
    identifier,
    move,
    store_study,
)

pytestmark = pytest.mark.django_db(transaction=True)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


@pytest.fixture(autouse=True)
def _private_destinations(settings: Any) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True


@pytest.fixture
def listener(start_listener: Any, dicom_ae: Any) -> Listener:
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


@pytest.fixture
def destination(org: Organization) -> Iterator[Callable[[], Receiver]]:
    """A running C-MOVE destination registered as the organization's WS-1."""
    started: list[Receiver] = []

    def make() -> Receiver:
        receiver = Receiver(ae_title=DESTINATION)
        started.append(receiver)
        DicomDestination.objects.create(
            organization=org, ae_title=DESTINATION, host="127.0.0.1", port=receiver.port
        )
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def written(listener: Listener) -> None:
    """Every association ended, and what they did is written."""
    listener.wait_idle()
    assert listener.scp.activity.wait_written(20), "activity not written"


def rows(org: Organization) -> list[DicomAssociation]:
    with db_serial():
        return list(DicomAssociation.objects.for_org(org).order_by("id"))


def operations(association: DicomAssociation) -> list[DicomOperation]:
    with db_serial():
        return list(association.operations.order_by("id"))


def the_one(org: Organization) -> tuple[DicomAssociation, list[DicomOperation]]:
    (association,) = rows(org)
    return association, operations(association)


def find(listener: Listener, query: Dataset, model: str = STUDY_ROOT_FIND) -> list[int]:
    scu = AE(ae_title="PACS-QR")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 30
    scu.add_requested_context(model, SYNTAXES)
    assoc = scu.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_established
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, model)]
    assoc.release()
    return statuses


def test_echo_and_store_are_counted_per_association_not_per_instance(
    listener: Listener, org: Organization
) -> None:
    assoc = associate(listener)
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_echo().Status == 0x0000
    good = [ct(), ct()]
    for ds in good:
        assert assoc.send_c_store(ds).Status == 0x0000
    broken = ct()
    del broken.StudyInstanceUID
    refused = assoc.send_c_store(broken)
    assert refused.Status == 0xA900
    assoc.release()
    written(listener)

    association, ops = the_one(org)
    assert (association.called_ae, association.calling_ae) == (CALLED, MODALITY)
    assert association.address == "127.0.0.1"
    assert association.direction == "inbound"
    assert association.end == DicomAssociation.End.RELEASED
    assert association.ended_at is not None and association.ended_at >= association.started_at
    assert association.counts == {
        "echo": {"success": 2},
        "store": {"success": 2, "failure": 1},
    }
    assert association.outcome == "warning"
    assert association.dicom_ae is not None and association.dicom_ae.ae_title == CALLED
    echo, store = sorted(ops, key=lambda o: o.kind)
    assert (echo.kind, echo.completed, echo.failed, echo.outcome) == ("echo", 2, 0, "success")
    assert (store.kind, store.completed, store.failed) == ("store", 2, 1)
    assert store.outcome == "warning"  # some stored, some refused
    assert store.status == 0xA900 and store.status_hex == "0xA900"
    assert store.comment == refused.ErrorComment
    assert store.bytes and store.bytes > 0
    assert store.ingest_job is not None and store.ingest_job.received == 3


def test_a_long_association_writes_its_stores_while_it_lasts(
    listener: Listener, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity, "AGGREGATE_SECONDS", 0.0)
    assoc = associate(listener)
    assert assoc.send_c_store(ct()).Status == 0x0000
    assert listener.scp.activity.wait_written(20)
    association, ops = the_one(org)
    assert association.end == "open" and association.ended_at is None
    assert [(o.kind, o.completed) for o in ops] == [("store", 1)]
    assert assoc.send_c_store(ct()).Status == 0x0000
    assoc.release()
    written(listener)
    association, ops = the_one(org)
    assert [(o.kind, o.completed) for o in ops] == [("store", 2)]  # the same row, grown
    assert association.end == "released" and association.counts == {"store": {"success": 2}}


def test_an_aborted_association_is_recorded_as_aborted(
    listener: Listener, org: Organization
) -> None:
    assoc = associate(listener)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.abort()
    written(listener)
    association, _ = the_one(org)
    assert association.end == DicomAssociation.End.ABORTED and association.ended_at is not None


def test_a_query_keeps_its_level_and_key_names_never_their_values(
    listener: Listener, org: Organization
) -> None:
    store_study(org, n=2, patient_id="PAT-SECRET-1")
    query = identifier("STUDY", PatientID="PAT-SECRET-1", PatientName="", StudyDate="")
    query.PatientBirthDate = "18000101-"
    statuses = find(listener, query)
    assert statuses == [0xFF00, 0x0000]
    bad = find(listener, identifier("WARD", PatientID="PAT-SECRET-1"))
    assert bad == [0xA900]
    written(listener)

    associations = rows(org)
    assert len(associations) == 2
    ok = operations(associations[0])[0]
    assert (ok.kind, ok.model, ok.level) == ("find", "Study Root", "STUDY")
    assert ok.keys == ["PatientID", "PatientBirthDate"]  # in tag order
    assert ok.details == {"return_keys": 2}
    assert (ok.matches, ok.status, ok.outcome) == (1, 0x0000, "success")
    refused = operations(associations[1])[0]
    assert (refused.level, refused.status, refused.outcome) == ("WARD", 0xA900, "failure")
    assert "QueryRetrieveLevel" in refused.comment
    assert associations[1].counts == {"find": {"failure": 1}}
    for row in (ok, refused):
        stored = json.dumps(
            {f.name: str(getattr(row, f.attname)) for f in DicomOperation._meta.concrete_fields}
        )
        assert "PAT-SECRET-1" not in stored and "18000101" not in stored


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ExplicitVRBigEndian],
    ids=["answers-sent-directly", "answers-through-pynetdicom"],
)
def test_a_query_counts_its_matches_whichever_way_they_are_sent(
    listener: Listener, org: Organization, syntax: str
) -> None:
    store_study(org, n=1, patient_id="PAT-A")
    store_study(org, n=1, patient_id="PAT-A")
    scu = AE(ae_title="PACS-QR")
    scu.add_requested_context(STUDY_ROOT_FIND, [syntax])
    assoc = scu.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_established
    query = identifier("STUDY", PatientID="PAT-A")
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, STUDY_ROOT_FIND)]
    assoc.release()
    assert statuses == [0xFF00, 0xFF00, 0x0000]
    written(listener)
    _, (query_row,) = the_one(org)
    assert (query_row.matches, query_row.outcome) == (2, "success")


def test_a_move_records_its_destination_counts_and_outcome(
    listener: Listener, org: Organization, destination: Callable[..., Any]
) -> None:
    study = store_study(org, n=3)
    destination()
    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert responses[-1].Status == 0x0000
    unknown = move(listener, identifier("STUDY", StudyInstanceUID=study.uid), destination="NOPE")
    assert unknown[-1].Status == 0xA801
    written(listener)

    first, second = rows(org)
    moved = operations(first)[0]
    assert (moved.kind, moved.model, moved.level, moved.destination_ae) == (
        "move",
        "Study Root",
        "STUDY",
        DESTINATION,
    )
    assert (moved.matches, moved.completed, moved.failed, moved.warning) == (3, 3, 0, 0)
    assert moved.bytes and moved.bytes > 0
    assert moved.keys == ["StudyInstanceUID"]
    assert moved.details == {"uids": {"study": 1, "series": 0, "image": 0}}
    assert moved.outcome == "success" and moved.status == 0x0000
    assert moved.finished_at is not None and moved.finished_at >= moved.started_at
    refused = operations(second)[0]
    assert (refused.destination_ae, refused.status, refused.outcome) == ("NOPE", 0xA801, "failure")
    assert "not registered" in refused.comment


def test_a_get_records_its_sub_operations(listener: Listener, org: Organization) -> None:
    study = store_study(org, n=2)
    responses, received = get(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert responses[-1].Status == 0x0000 and len(received) == 2
    written(listener)
    _, (got,) = the_one(org)
    assert (got.kind, got.matches, got.completed, got.outcome) == ("get", 2, 2, "success")
    assert got.destination_ae == ""


def test_a_commitment_request_is_linked_to_its_commitment(
    listener: Listener, org: Organization
) -> None:
    datasets = [ct(), ct()]
    assoc = associate(listener)
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    requested = request(
        listener, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
    )
    assert requested.status.Status == 0x0000
    report = finish(requested)
    assert len(report.committed) == 2
    written(listener)

    _, second = rows(org)
    (committed,) = operations(second)
    assert (committed.kind, committed.matches, committed.outcome) == ("commit", 2, "success")
    with db_serial():
        commitment = StorageCommitment.objects.get(pk=committed.commitment_id or 0)
    assert commitment.transaction_uid == requested.transaction_uid


def test_a_refused_commitment_request_is_a_failure_with_its_reason(
    listener: Listener, org: Organization
) -> None:
    requested = request(listener, [], keep_open=False)
    assert requested.status.Status == 0x0115
    written(listener)
    _, (refused,) = the_one(org)
    assert (refused.kind, refused.status, refused.outcome) == ("commit", 0x0115, "failure")
    assert refused.commitment is None and refused.comment


def test_another_organizations_associations_are_its_own(
    listener: Listener, org: Organization, other_org: Organization
) -> None:
    from archive.ae_titles.services import ae_create
    from tenants.context import Actor

    ae_create(
        org=other_org,
        ae_title=OTHER_CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    assoc = associate(listener, called=OTHER_CALLED)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    written(listener)
    assert rows(org) == []
    (theirs,) = rows(other_org)
    assert theirs.called_ae == OTHER_CALLED


def test_a_rejected_association_is_not_recorded(listener: Listener, org: Organization) -> None:
    assoc = associate(listener, called="NOBODY")
    assert assoc.is_rejected
    written(listener)
    assert not DicomAssociation.objects.exists()


# --- recording never breaks the operation -----------------------------------------------------


def test_a_failing_writer_changes_no_dimse_answer(
    listener: Listener,
    org: Organization,
    destination: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refuses every activity row: every operation is answered as before."""
    study = store_study(org, n=2)
    destination()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("activity table is gone")

    monkeypatch.setattr(activity, "_association_create", broken)
    monkeypatch.setattr(activity, "_operation_create", broken)
    assoc = associate(listener)
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(ct()).Status == 0x0000
    assoc.release()
    assert find(listener, identifier("STUDY", StudyInstanceUID=study.uid)) == [0xFF00, 0x0000]
    moved = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert moved[-1].Status == 0x0000
    written(listener)
    assert not DicomAssociation.objects.exists()
    assert "writing association activity failed" in caplog.text


def test_a_failing_recorder_in_the_handlers_changes_no_dimse_answer(
    listener: Listener,
    org: Organization,
    destination: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-memory side fails at every step: every operation is answered as before."""
    study = store_study(org, n=2)
    destination()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("recorder bug")

    for name in ("finish", "begin", "_counted", "close"):
        monkeypatch.setattr(activity.AssociationRecord, name, broken)
    assoc = associate(listener)
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(ct()).Status == 0x0000
    assoc.release()
    assert find(listener, identifier("STUDY", StudyInstanceUID=study.uid)) == [0xFF00, 0x0000]
    assert move(listener, identifier("STUDY", StudyInstanceUID=study.uid))[-1].Status == 0x0000
    got, received = get(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert got[-1].Status == 0x0000 and len(received) == 2
    listener.wait_idle()


def test_a_full_queue_drops_reports_and_counts_them(
    listener: Listener, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = threading.Event()
    real = activity.Recorder._write

    def slow(self: Any, item: Any) -> None:
        hold.wait(20)
        real(self, item)

    monkeypatch.setattr(activity.Recorder, "_write", slow)
    recorder = listener.scp.activity
    monkeypatch.setattr(recorder, "_queue", type(recorder._queue)(maxsize=2))
    assoc = associate(listener)
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert recorder.dropped >= 1
    hold.set()
    assert recorder.wait_written(20)


# --- retention ------------------------------------------------------------------------------


def test_the_beat_task_deletes_activity_older_than_the_retention(
    org: Organization, settings: Any
) -> None:
    settings.DIMSE_ACTIVITY_RETENTION_DAYS = 30
    now = timezone.now()
    old = DicomAssociation.objects.create(
        organization=org, called_ae=CALLED, calling_ae=MODALITY, started_at=now - timedelta(days=31)
    )
    DicomOperation.objects.create(
        organization=org, association=old, kind="find", outcome="success", started_at=old.started_at
    )
    recent = DicomAssociation.objects.create(
        organization=org, called_ae=CALLED, calling_ae=MODALITY, started_at=now - timedelta(days=29)
    )
    DicomOperation.objects.create(
        organization=org, association=recent, kind="echo", outcome="success"
    )
    assert dimse_activity_purge.apply().get() == 1
    assert list(DicomAssociation.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(DicomOperation.objects.values_list("kind", flat=True)) == ["echo"]
    assert dimse_activity_purge.apply().get() == 0  # safe to run again


def test_purge_works_in_bounded_batches(org: Organization, settings: Any) -> None:
    settings.DIMSE_ACTIVITY_RETENTION_DAYS = 1
    old = timezone.now() - timedelta(days=2)
    DicomAssociation.objects.bulk_create(
        DicomAssociation(organization=org, called_ae=CALLED, calling_ae=MODALITY, started_at=old)
        for _ in range(5)
    )
    assert activity.activity_purge(batch=2) == 2
    assert DicomAssociation.objects.count() == 3


def test_the_purge_is_on_the_beat_schedule() -> None:
    from saas.celery import app

    entries = [e for e in app.conf.beat_schedule.values() if "dimse_activity" in e["task"]]
    assert [e["task"] for e in entries] == ["archive.tasks.dimse_activity_purge"]


# --- outcome rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, "success"),
        (0xFE00, "cancelled"),
        (0xB000, "warning"),
        (0x0107, "warning"),
        (0xA801, "failure"),
        (0xC000, "failure"),
        (0x0124, "failure"),
        (None, "failure"),
    ],
)
def test_outcome_of_a_status(status: int | None, outcome: str) -> None:
    assert activity.outcome_of(status) == outcome


def test_query_summary_names_keys_without_values() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "series"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = "SECRET"
    ds.Modality = ""
    ds.SeriesInstanceUID = ""
    ds.add_new(0x00091001, "LO", "private value")
    level, keys, returned = activity.query_summary(ds)
    assert (level, keys, returned) == ("SERIES", ["(0009,1001)", "PatientID"], 2)


def test_retrieve_hook_outside_a_listener_does_nothing() -> None:
    from types import SimpleNamespace

    fake = SimpleNamespace(event=SimpleNamespace(assoc=object()), operation="C-MOVE")
    activity.retrieve_finished(fake, 0x0000, "")  # no listener, no record, no error


def test_time_is_kept_in_utc(listener: Listener, org: Organization) -> None:
    before = timezone.now()
    assoc = associate(listener, contexts=[(Verification, [ExplicitVRLittleEndian])])
    assoc.send_c_echo()
    assoc.release()
    written(listener)
    association, _ = the_one(org)
    assert association.started_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= association.started_at <= timezone.now()


def test_an_association_that_ends_mid_request_records_it_cancelled() -> None:
    recorder = activity.Recorder()  # not started: the reports stay on its queue
    record = activity.AssociationRecord(
        recorder, org_id=1, dicom_ae_id=None, called_ae=CALLED, calling_ae=MODALITY, address=""
    )
    operation = record.begin("find", level="STUDY")
    record.close("aborted")
    items = list(recorder._queue.queue)
    assert [type(i).__name__ for i in items] == ["_Opened", "_Operation", "_Closed"]
    assert items[1].operation is operation
    assert (operation.status, operation.outcome) == (None, "cancelled")
    assert operation.comment == activity.ENDED_EARLY
    assert (items[2].end, items[2].counts) == ("aborted", {"find": {"cancelled": 1}})
