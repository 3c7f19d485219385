"""C-STORE objects are answered once durable and checked, and indexed afterwards by the indexer:
re-sends and conflicts before indexing, a failing object store, the backlog limit, recovery of
what a stopped listener left, and the indexer in a process of its own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from archive.dimse import indexer as dimse_indexer
from archive.dimse import listener as dimse
from archive.dimse.indexer import association_queue_dir, db_serial, queue_job_record
from archive.locations.selectors import location_primary
from archive.models import IngestFailure, IngestJob, Instance
from archive.storage import StorageUnavailable, store_for
from archive.storage.filesystem import FilesystemStore
from archive.synthetic import write
from tenants.models import AuditEvent
from tests.archive.test_dimse import CALLED, Listener, associate, ct

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def start(start_listener: Any) -> Any:
    """Start a listener with the given options; stopped at the end of the test."""

    def run(**options: Any) -> Listener:
        scp, host, port, receive_dir = start_listener(**options)
        return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)

    return run


@pytest.fixture
def held_indexer(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The indexer waits until the returned event is set before it indexes anything."""
    release = threading.Event()
    real = dimse_indexer.db_serial

    def held() -> Any:  # the indexer takes this before each batch (the listener has its own)
        assert release.wait(30), "the test never released the indexer"
        return real()

    monkeypatch.setattr(dimse_indexer, "db_serial", held)
    return release


def queue_files(org: Any) -> list[Path]:
    return sorted(store_for(location_primary(org)).spool_dir().glob("cstore/*/*.dcm"))


def test_a_different_object_under_an_accepted_but_unindexed_uid_is_refused(
    start, org, dicom_ae, held_indexer
):
    listener = start()
    first = ct()
    other = ct(seed=7)
    other.SOPInstanceUID = first.SOPInstanceUID
    other.StudyInstanceUID, other.SeriesInstanceUID = (
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
    )
    assoc = associate(listener)
    statuses = [assoc.send_c_store(ds).Status for ds in (first, first, other)]
    assoc.release()
    assert not Instance.objects.exists()  # answered before anything was indexed
    held_indexer.set()
    listener.wait_idle()
    assert statuses == [0x0000, 0x0000, dimse.STATUS_DIFFERENT_OBJECT]
    assert Instance.objects.for_org(org).get().sop_instance_uid == first.SOPInstanceUID
    job = IngestJob.objects.for_org(org).get()
    assert (job.received, job.stored, job.duplicate, job.failed) == (3, 1, 1, 1)
    assert job.state == IngestJob.State.DONE
    assert not queue_files(org)


def test_a_failing_store_keeps_acknowledged_objects_and_refuses_new_ones_until_it_recovers(
    start, org, dicom_ae, monkeypatch
):
    monkeypatch.setattr(dimse_indexer, "RETRY_SECONDS", 0.2)
    real_put = FilesystemStore.put_file
    failing = threading.Event()
    failing.set()
    failed_once = threading.Event()

    def put_file(self: FilesystemStore, **kwargs: Any) -> Any:
        if failing.is_set():
            failed_once.set()
            raise StorageUnavailable("HTTP 500 from the object store")
        return real_put(self, **kwargs)

    monkeypatch.setattr(FilesystemStore, "put_file", put_file)
    listener = start()
    first, second = ct(), ct()
    assoc = associate(listener)
    assert assoc.send_c_store(first).Status == 0x0000  # durable in the queue folder
    assert failed_once.wait(10)
    assert listener.scp.wait_indexed(10)
    refused = assoc.send_c_store(second)
    assert refused.Status == dimse.STATUS_STORE_UNAVAILABLE
    assert "retry later" in refused.ErrorComment
    with db_serial():  # the indexer retries meanwhile (SQLite: one thread at a time)
        assert len(queue_files(org)) == 1 and not Instance.objects.exists()
    failing.clear()  # the store is back: the retry stores and indexes the object
    assoc.release()
    listener.wait_idle()
    assert _wait(lambda: IngestJob.objects.for_org(org).get().state == IngestJob.State.DONE)
    assert Instance.objects.for_org(org).get().sop_instance_uid == first.SOPInstanceUID
    job = IngestJob.objects.for_org(org).get()
    assert (job.received, job.stored, job.failed) == (2, 1, 1)
    assert IngestFailure.objects.for_org(org).get().reason_code == dimse.STATUS_STORE_UNAVAILABLE
    # The store works again: new objects are accepted.
    assoc = associate(listener)
    assert assoc.send_c_store(second).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert Instance.objects.for_org(org).count() == 2


def test_objects_beyond_the_backlog_limit_are_refused_for_now(start, org, dicom_ae):
    listener = start(max_backlog=0)
    assoc = associate(listener)
    status = assoc.send_c_store(ct())
    assoc.release()
    listener.wait_idle()
    assert status.Status == dimse.STATUS_STORE_UNAVAILABLE
    assert "busy" in status.ErrorComment
    assert not Instance.objects.exists()


def test_what_a_stopped_listener_left_is_indexed_at_the_next_start(start, org, dicom_ae):
    """A listener killed after acknowledging objects: its queue folder holds them (and a file cut
    off while it was received); the next start indexes the acknowledged ones and closes the job."""
    location = location_primary(org)
    store = store_for(location)
    job = IngestJob.objects.create(
        organization=org,
        kind=IngestJob.Kind.CSTORE,
        state=IngestJob.State.RUNNING,
        received=2,
        bytes_received=1,
        params={"calling_ae": "CT-1", "called_ae": CALLED, "address": "10.1.2.3"},
    )
    folder = association_queue_dir(store, org.pk)
    job.params["queue_folder"] = str(folder)
    job.save(update_fields=["params"])
    queue_job_record(folder, job_id=job.pk, location_id=location.pk)
    acknowledged = [ct(), ct()]
    for n, ds in enumerate(acknowledged):
        write(ds, folder / f"acked-{n}.dcm")
    whole = (folder / "acked-0.dcm").read_bytes()
    (folder / "cut-off.dcm").write_bytes(whole[: len(whole) // 2])
    unfinished = association_queue_dir(store, org.pk)  # admitted, no job yet: nothing acked
    (unfinished / "partial.dcm").write_bytes(whole[:100])

    listener = start()
    listener.wait_idle()
    assert set(Instance.objects.for_org(org).values_list("sop_instance_uid", flat=True)) == {
        ds.SOPInstanceUID for ds in acknowledged
    }
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED and "listener stopped" in job.error
    assert job.stored == 2 and job.failed == 0
    assert not IngestFailure.objects.exists()  # the cut-off file was never acknowledged
    assert AuditEvent.objects.get(action="ingest.cstore").details["outcome"] == "interrupted"
    assert not folder.exists() and not unfinished.exists()


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="the indexer process cannot open the test run's in-memory SQLite database",
)
def test_the_indexer_in_its_own_process_indexes_and_closes_the_job(start, org, dicom_ae):
    listener = start(indexer="process")
    sent = [ct() for _ in range(5)]
    assoc = associate(listener)
    statuses = [assoc.send_c_store(ds).Status for ds in [*sent, sent[0]]]
    assoc.release()
    listener.wait_idle(timeout=60)
    assert statuses == [0x0000] * 6
    assert Instance.objects.for_org(org).count() == 5
    job = IngestJob.objects.for_org(org).get()
    assert job.state == IngestJob.State.DONE
    assert (job.received, job.stored, job.duplicate) == (6, 5, 1)
    assert not queue_files(org)


def _wait(condition: Any, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while True:
        with db_serial():
            if condition():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
