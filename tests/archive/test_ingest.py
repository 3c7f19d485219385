from __future__ import annotations

import io
from datetime import timedelta

import pydicom
import pytest
from django.utils import timezone

from archive.ingest import pipeline
from archive.ingest.dicom import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    STUDY_UID_MISMATCH,
)
from archive.models import ArchiveSettings, Instance, PendingObject, Series, Study
from archive.storage import StorageUnavailable, store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import StorageDelta, UsageEvent
from tests.archive.reconcile_helpers import assert_reconciled

pytestmark = pytest.mark.django_db


def ingest_bytes(org, data: bytes, **kwargs):
    location = pipeline.location_primary(org)
    store = store_for(location)
    return pipeline.instance_ingest(
        org=org, spooled=pipeline.spool_file(store, io.BytesIO(data)), **kwargs
    )


def stored_bytes(instance: Instance) -> bytes:
    return b"".join(
        store_for(instance.location).iter_bytes(key=instance.object_key, tier=instance.tier)
    )


def test_ingest_stores_indexes_meters_byte_for_byte(org, ct_study):
    results = [ingest_bytes(org, data) for data in ct_study]
    assert [r.status for r in results] == ["stored"] * 3
    instance = Instance.objects.for_org(org).get(pk=results[0].instance_id)
    assert stored_bytes(instance) == ct_study[0]
    study = Study.objects.for_org(org).get()
    assert (study.instance_count, study.series_count, study.total_bytes) == (
        3,
        1,
        sum(map(len, ct_study)),
    )
    assert study.bytes_hot == study.total_bytes
    assert study.modality_list == ["CT"]
    assert study.patient_name and study.study_date
    series = Series.objects.for_org(org).get()
    assert series.instance_count == 3 and series.modality == "CT"
    assert instance.metadata["00080018"]["Value"] == [instance.sop_instance_uid]
    assert "7FE00010" not in instance.metadata  # no pixel data in the index
    assert UsageEvent.objects.for_org(org).filter(meter="ingest.instances").count() == 3
    assert (
        sum(
            UsageEvent.objects.for_org(org)
            .filter(meter="ingest.bytes")
            .values_list("quantity", flat=True)
        )
        == study.total_bytes
    )
    assert (
        sum(StorageDelta.objects.for_org(org).values_list("delta_bytes", flat=True))
        == study.total_bytes
    )
    assert not PendingObject.objects.exists()
    assert_reconciled(org)


def test_identical_resend_is_a_noop_not_billed_twice(org, ct_study):
    first = ingest_bytes(org, ct_study[0])
    again = ingest_bytes(org, ct_study[0])
    assert again.status == "duplicate" and again.instance_id == first.instance_id
    assert Instance.objects.for_org(org).count() == 1
    assert UsageEvent.objects.for_org(org).filter(meter="ingest.instances").count() == 1
    assert Study.objects.for_org(org).get().instance_count == 1


def test_different_object_under_same_uid_is_refused(org, ct_study):
    first = ingest_bytes(org, ct_study[0])
    ds = pydicom.dcmread(io.BytesIO(ct_study[0]))
    ds.PatientName = "Changed^Name"
    result = ingest_bytes(org, to_bytes(ds))
    assert result.status == "failed" and result.reason_code == DUPLICATE_SOP_INSTANCE
    instance = Instance.objects.for_org(org).get(pk=first.instance_id)
    assert stored_bytes(instance) == ct_study[0]  # never overwritten


def test_same_uid_in_two_organizations_is_two_instances(org, other_org, ct_study):
    assert ingest_bytes(org, ct_study[0]).status == "stored"
    assert ingest_bytes(other_org, ct_study[0]).status == "stored"
    keys = set(Instance.objects.values_list("object_key", flat=True))
    assert len(keys) == 2 and all(k.startswith("org-") for k in keys)


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda data: b"this is not a DICOM file at all" * 10, CANNOT_UNDERSTAND),
        (lambda data: data[: len(data) - 500], CANNOT_UNDERSTAND),
        # cut inside the header: what remains lacks the required UIDs
        (lambda data: data[:200], DATASET_DOES_NOT_MATCH),
    ],
    ids=["not-dicom", "truncated-pixels", "truncated-header"],
)
def test_bad_files_are_refused_with_a_reason_and_leave_nothing(
    org, ct_study, archive_root, mangle, code
):
    result = ingest_bytes(org, mangle(ct_study[0]))
    assert result.status == "failed"
    assert result.reason_code == code
    assert result.reason
    assert (
        not Instance.objects.exists()
        and not Study.objects.exists()
        and not UsageEvent.objects.exists()
    )
    assert not [p for p in archive_root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("attribute", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uids_are_refused(org, attribute):
    ds = make_instance(study_spec("CT"), series_uid="1.2.3.4", rows=16, columns=16)
    delattr(ds, attribute)
    result = ingest_bytes(org, to_bytes(ds))
    assert result.status == "failed" and result.reason_code == DATASET_DOES_NOT_MATCH
    assert attribute in result.reason


def test_study_uid_must_match_the_url(org, ct_study):
    result = ingest_bytes(org, ct_study[0], expected_study_uid="1.2.3.999")
    assert result.status == "failed" and result.reason_code == STUDY_UID_MISMATCH
    assert not Instance.objects.exists()


def test_quota_refuses_when_exhausted(org, ct_study):
    ArchiveSettings.objects.create(organization=org, storage_quota_bytes=len(ct_study[0]) + 10)
    assert ingest_bytes(org, ct_study[0]).status == "stored"
    result = ingest_bytes(org, ct_study[1])
    assert result.status == "failed" and "quota" in result.reason


def test_object_store_failure_is_a_clear_failure_with_nothing_indexed(
    org, ct_study, monkeypatch, archive_root
):
    from archive.storage.filesystem import FilesystemStore

    def broken(self, **kwargs):
        raise StorageUnavailable("HTTP 500 from the object store")

    monkeypatch.setattr(FilesystemStore, "put_file", broken)
    result = ingest_bytes(org, ct_study[0])
    assert result.status == "failed" and "object store" in result.reason
    assert (
        not Instance.objects.exists()
        and not PendingObject.objects.exists()
        and not UsageEvent.objects.exists()
    )


def test_index_failure_removes_the_stored_bytes(org, ct_study, monkeypatch, archive_root):
    def crash(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(pipeline, "record_usage_bulk", crash)
    with pytest.raises(RuntimeError):
        ingest_bytes(org, ct_study[0])
    assert not Instance.objects.exists()
    assert not [p for p in (archive_root / "hot").rglob("*") if p.is_file()]


def test_crash_between_store_and_index_is_cleaned_up(org, ct_study, monkeypatch, archive_root):
    """A worker killed after the bytes are stored leaves a pending row; the cleanup removes the orphan."""

    class Killed(BaseException):
        pass

    def killed(**kwargs):
        raise Killed()

    monkeypatch.setattr(pipeline, "_index", killed)
    with pytest.raises(Killed):
        ingest_bytes(org, ct_study[0])
    assert PendingObject.objects.count() == 1
    assert list((archive_root / "hot").rglob("*.dcm"))
    PendingObject.objects.update(created_at=timezone.now() - timedelta(hours=2))
    assert pipeline.orphans_cleanup() == 1
    assert not PendingObject.objects.exists()
    assert not list((archive_root / "hot").rglob("*.dcm"))


def test_cleanup_keeps_objects_that_were_indexed(org, ct_study):
    result = ingest_bytes(org, ct_study[0])
    instance = Instance.objects.get(pk=result.instance_id)
    PendingObject.objects.create(
        organization=org,
        location=instance.location,
        object_key=instance.object_key,
        created_at=timezone.now() - timedelta(hours=2),
    )
    assert pipeline.orphans_cleanup() == 0
    assert stored_bytes(instance)


def test_ingest_completed_webhook_once_per_settled_study(
    org, ct_study, receiver, django_capture_on_commit_callbacks
):
    from archive.ingest.pipeline import study_settle_check
    from tenants.context import Actor
    from tenants.services import webhook_endpoint_create

    webhook_endpoint_create(
        org=org, url=receiver.url, actor=Actor.system(), event_types=["ingest.completed"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        for data in ct_study:
            ingest_bytes(org, data)
    study = Study.objects.for_org(org).get()
    with django_capture_on_commit_callbacks(execute=True):
        study_settle_check(org_id=org.pk, study_id=study.pk)
    assert [r["headers"]["strata-event"] for r in receiver.requests] == ["ingest.completed"]
    import json

    assert json.loads(receiver.requests[0]["body"])["data"]["instances"] == 3


def test_one_settle_check_is_queued_per_study_burst(
    org, ct_study, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from django.core.cache import cache

    from archive.ingest import tasks

    cache.clear()
    settings.ARCHIVE_SETTLE_SECONDS = 120
    queued: list[tuple] = []
    monkeypatch.setattr(
        tasks.study_settle, "apply_async", lambda args, countdown: queued.append((args, countdown))
    )
    with django_capture_on_commit_callbacks(execute=True):
        for data in ct_study:
            ingest_bytes(org, data)
    study = Study.objects.for_org(org).get()
    assert queued == [((org.pk, study.pk), 120)]


def test_settle_check_requeues_itself_while_the_study_is_receiving(
    org, ct_study, settings, monkeypatch
):
    from archive.ingest import tasks
    from archive.ingest.pipeline import study_settle_check

    ingest_bytes(org, ct_study[0])
    study = Study.objects.for_org(org).get()
    settings.ARCHIVE_SETTLE_SECONDS = 120
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued: list[tuple] = []
    monkeypatch.setattr(
        tasks.study_settle, "apply_async", lambda args, countdown: queued.append((args, countdown))
    )
    assert study_settle_check(org_id=org.pk, study_id=study.pk) is False
    assert len(queued) == 1 and queued[0][0] == (org.pk, study.pk) and 100 < queued[0][1] <= 120
