"""Ingesting several files together (a STOW-RS request): per-file outcomes as if sent alone."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.ingest.dicom import CANNOT_UNDERSTAND, DUPLICATE_SOP_INSTANCE, STUDY_UID_MISMATCH
from archive.models import ArchiveSettings, Instance, PendingObject, Series, Study
from archive.storage import StorageUnavailable, store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import StorageDelta, UsageEvent

pytestmark = pytest.mark.django_db


def ingest_many(org, blobs: list[bytes], **kwargs) -> list[pipeline.IngestResult]:
    store = store_for(pipeline.location_primary(org))
    batch = [pipeline.spool_file(store, io.BytesIO(data)) for data in blobs]
    results = pipeline.instances_ingest(org=org, batch=batch, **kwargs)
    assert not [p for p in store.spool_dir().iterdir() if p.is_file()], "spool files left behind"
    return results


def stored_files(archive_root) -> list:
    return [p for p in (archive_root / "hot").rglob("*") if p.is_file()]


def series_of(count: int, spec=None) -> list[bytes]:
    spec = spec or study_spec("CT")
    series = generate_uid()
    return [
        to_bytes(make_instance(spec, series_uid=series, instance_number=n + 1, rows=16, columns=16))
        for n in range(count)
    ]


def test_a_batch_is_indexed_with_aggregates_and_metering_like_single_files(org, archive_root):
    ct = study_spec("CT")
    blobs = series_of(3, ct) + series_of(2, ct) + series_of(2)  # two studies, three series
    results = ingest_many(org, blobs)
    assert [r.status for r in results] == ["stored"] * 7
    assert Instance.objects.for_org(org).count() == 7
    study = Study.objects.for_org(org).get(study_uid=ct.study_uid)
    assert (study.series_count, study.instance_count) == (2, 5)
    assert study.total_bytes == study.bytes_hot == sum(map(len, blobs[:5]))
    assert study.modalities == "\\CT\\"
    assert sorted(Series.objects.for_org(org).values_list("instance_count", flat=True)) == [2, 2, 3]
    assert UsageEvent.objects.for_org(org).filter(meter="ingest.instances").count() == 7
    assert sum(StorageDelta.objects.for_org(org).values_list("delta_bytes", flat=True)) == sum(
        map(len, blobs)
    )
    assert not PendingObject.objects.exists()
    assert len(stored_files(archive_root)) == 7


def test_a_batch_costs_a_few_statements_not_a_few_per_file(org):
    ingest_many(org, series_of(1))  # the location and the first study exist
    with CaptureQueriesContext(connection) as queries:
        ingest_many(org, series_of(20))
    assert len(queries) <= 20


def test_the_same_instance_twice_in_a_batch_is_stored_once_then_a_duplicate(org):
    first = series_of(1)[0]
    ds = pydicom.dcmread(io.BytesIO(first))
    ds.PatientID = "SOMEONE-ELSE"
    different = to_bytes(ds)
    results = ingest_many(org, [first, first, different])
    assert [r.status for r in results] == ["stored", "duplicate", "failed"]
    assert results[1].instance_id == results[0].instance_id
    assert results[2].reason_code == DUPLICATE_SOP_INSTANCE
    assert Instance.objects.for_org(org).count() == 1
    assert UsageEvent.objects.for_org(org).filter(meter="ingest.instances").count() == 1


def test_a_series_of_another_study_fails_alone_and_the_rest_is_stored(org, archive_root):
    stored = series_of(1)
    ingest_many(org, stored)
    ds = pydicom.dcmread(io.BytesIO(stored[0]))
    ds.StudyInstanceUID = generate_uid()  # same series UID, another study
    ds.SOPInstanceUID = generate_uid()
    blobs = series_of(2) + [to_bytes(ds)] + series_of(1)
    results = ingest_many(org, blobs)
    assert [r.status for r in results] == ["stored", "stored", "failed", "stored"]
    assert results[2].reason_code == STUDY_UID_MISMATCH
    assert Instance.objects.for_org(org).count() == 4
    assert len(stored_files(archive_root)) == 4
    assert not PendingObject.objects.exists()


def test_bad_files_quota_and_store_failures_fail_alone(org, archive_root, monkeypatch):
    good = series_of(4)
    ArchiveSettings.objects.create(
        organization=org, storage_quota_bytes=len(good[0]) + len(good[1]) + 10
    )
    from archive.storage.filesystem import FilesystemStore

    real_put = FilesystemStore.put_file

    def flaky(self, **kwargs):
        uid = pydicom.dcmread(io.BytesIO(good[1])).SOPInstanceUID
        if f"/{pipeline._uid_digest(uid)}-" in kwargs["key"]:
            raise StorageUnavailable("HTTP 503")
        return real_put(self, **kwargs)

    monkeypatch.setattr(FilesystemStore, "put_file", flaky)
    results = ingest_many(org, [good[0], b"not dicom at all", good[1], good[2], good[3]])
    assert [r.status for r in results] == ["stored", "failed", "failed", "failed", "failed"]
    assert results[1].reason_code == CANNOT_UNDERSTAND
    assert "object store" in results[2].reason
    assert "quota" in results[3].reason and "quota" in results[4].reason
    assert Instance.objects.for_org(org).count() == 1
    assert len(stored_files(archive_root)) == 1
    assert not PendingObject.objects.exists()


def test_an_index_failure_removes_every_stored_object_of_the_batch(org, archive_root, monkeypatch):
    def crash(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(pipeline, "storage_delta_bulk", crash)
    with pytest.raises(RuntimeError):
        ingest_many(org, series_of(4))
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert not UsageEvent.objects.exists() and not PendingObject.objects.exists()
    assert not stored_files(archive_root)


def test_a_crash_while_storing_removes_every_object_of_the_batch(org, archive_root, monkeypatch):
    from archive.storage.filesystem import FilesystemStore

    real_put = FilesystemStore.put_file
    calls = []

    def crashing(self, **kwargs):
        calls.append(kwargs["key"])
        if len(calls) == 3:
            raise RuntimeError("disk controller reset")
        return real_put(self, **kwargs)

    monkeypatch.setattr(FilesystemStore, "put_file", crashing)
    with pytest.raises(RuntimeError):
        ingest_many(org, series_of(6))
    assert not Instance.objects.exists() and not PendingObject.objects.exists()
    assert not stored_files(archive_root)
