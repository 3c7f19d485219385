"""Ingest jobs: uploads (files and zips, member by member), bucket imports from moto's S3 over real
HTTP, bounded batches that re-queue themselves, the claim, and clear failures."""

from __future__ import annotations

import io
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from archive.ingest import jobs
from archive.models import IngestFailure, IngestJob, Instance, Study
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.context import Actor
from tenants.models import AuditEvent, Organization

pytestmark = pytest.mark.django_db
# The S3 fixtures: moto's server, a bucket per test, failing endpoints.
pytest_plugins = ["tests.archive.conftest_s3"]

# Any credentials work against moto (see tests/archive/conftest_s3.py).
ACCESS_KEY = "AKIASTRATATEST0000"
SECRET_KEY = "strata-test-secret-key"
REGION = "us-east-1"

ACTOR = Actor.system("tests")


def dicoms(n: int, modality: str = "CT") -> list[bytes]:
    spec = study_spec(modality)
    series = generate_uid()
    return [
        to_bytes(make_instance(spec, series_uid=series, instance_number=i + 1, rows=32, columns=32))
        for i in range(n)
    ]


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def send(org: Organization, job: IngestJob, name: str, data: bytes, *, chunk: int = 0) -> None:
    """Upload one file as the browser does: in slices, the last one final."""
    chunk = chunk or max(len(data), 1)
    upload_id = uuid.uuid4().hex
    offset = 0
    while True:
        piece = data[offset : offset + chunk]
        final = offset + len(piece) >= len(data)
        jobs.upload_chunk_append(
            org=org,
            job=job,
            upload_id=upload_id,
            name=name,
            offset=offset,
            size=len(data),
            final=final,
            stream=io.BytesIO(piece),
            length=len(piece),
        )
        offset += len(piece)
        if final:
            return


def run(django_capture_on_commit_callbacks: Any, fn: Any, **kwargs: Any) -> Any:
    """Call a service and run what it queued (Celery is eager in the tests)."""
    with django_capture_on_commit_callbacks(execute=True):
        return fn(**kwargs)


def test_upload_of_files_and_a_zip_ingests_every_member(
    org, django_capture_on_commit_callbacks
) -> None:
    files = dicoms(5)
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, job, "scan/IM0001.dcm", files[0], chunk=1000)
    send(org, job, "scan/IM0002.dcm", files[1])
    archive = zipped(
        {
            "CD/IM0003": files[2],
            "CD/IM0004": files[3],
            "CD/sub/IM0005": files[4],
            "CD/DICOMDIR": b"index",
            "__MACOSX/._IM0003": b"resource fork",
            "CD/README.TXT": b"not an image",
        }
    )
    send(org, job, "export.zip", archive, chunk=4096)
    job.refresh_from_db()
    assert (job.total_files, job.state) == (3, IngestJob.State.PENDING)

    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)

    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE, job.error
    assert (job.received, job.stored, job.duplicate, job.failed) == (6, 5, 0, 1)
    assert job.total_files == 6  # the zip counts as its 4 members
    assert job.bytes_stored == sum(map(len, files))
    assert job.finished_at and job.started_at and job.heartbeat_at
    failure = IngestFailure.objects.get(job=job)
    assert failure.source == "export.zip/CD/README.TXT"
    assert "DICOM" in failure.reason or "understand" in failure.reason.lower()
    assert Instance.objects.for_org(org).count() == 5
    assert not jobs.job_folder(job).exists()
    assert AuditEvent.objects.filter(action="ingest_job.upload_finished").count() == 1


def test_a_corrupt_zip_member_is_a_failure_and_leaves_no_spool_file(
    org, django_capture_on_commit_callbacks, settings
) -> None:
    files = dicoms(2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.dcm", files[0])
        zf.writestr("bad.dcm", files[1])
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("bad.dcm")
    # Garble the middle of the second member's compressed bytes.
    start = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[start : start + 64] = bytes(64)
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, job, "cd.zip", bytes(data))
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)

    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE, job.error
    assert (job.stored, job.failed) == (1, 1)
    failure = IngestFailure.objects.get(job=job)
    assert failure.source == "cd.zip/bad.dcm" and "ZIP member" in failure.reason
    spool = list(settings.ARCHIVE_ROOT.rglob("*.part"))
    spool += list(Path(settings.ARCHIVE_SPOOL_ROOT).rglob("*.part"))
    assert not spool


def test_resending_gives_duplicates_not_new_rows(org, django_capture_on_commit_callbacks) -> None:
    files = dicoms(2)
    for _ in range(2):
        job = jobs.upload_job_create(org=org, actor=ACTOR)
        for i, data in enumerate(files):
            send(org, job, f"f{i}.dcm", data)
        run(
            django_capture_on_commit_callbacks,
            jobs.upload_job_finish,
            org=org,
            job=job,
            actor=ACTOR,
        )
    job.refresh_from_db()
    assert (job.stored, job.duplicate, job.failed) == (0, 2, 0)
    assert Instance.objects.for_org(org).count() == 2


def test_a_job_is_processed_in_bounded_batches_that_requeue(
    org, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "BATCH_ITEMS", 2)
    calls: list[str | None] = []
    original = jobs.job_process

    def counting(**kwargs: Any) -> str | None:
        calls.append(kwargs.get("handoff"))
        return original(**kwargs)

    monkeypatch.setattr(jobs, "job_process", counting)
    files = dicoms(5)
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    for i, data in enumerate(files[:3]):
        send(org, job, f"f{i}.dcm", data)
    send(org, job, "rest.zip", zipped({"a": files[3], "b": files[4]}))
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)

    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE and job.stored == 5
    # 5 items at 2 per run: 3 runs; each later run took over with the lease it was handed.
    assert len(calls) == 3 and calls[0] is None and all(calls[1:])


def test_an_unexpected_error_stops_the_job_with_a_clear_state(
    org, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    def broken(batch: Any) -> bool:
        raise RuntimeError("database went away")

    monkeypatch.setattr(jobs, "_process_upload", broken)
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, job, "a.dcm", dicoms(1)[0])
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED and "internal error" in job.error


def test_a_claimed_job_is_not_processed_by_a_second_worker(org) -> None:
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, job, "a.dcm", dicoms(1)[0])
    IngestJob.objects.filter(pk=job.pk).update(params={"phase": "queued"})
    lease = jobs._claim(org, job.pk, None)
    assert lease is not None
    # A duplicate delivery of the task finds the job claimed and leaves it alone.
    assert jobs.job_process(org=org, job_id=job.pk) is None
    assert IngestJob.objects.get(pk=job.pk).received == 0
    # A wrong hand-over token does not take it either.
    assert jobs._claim(org, job.pk, (timezone.now() - timedelta(hours=1)).isoformat()) is None
    # The holder's hand-over does.
    assert jobs._claim(org, job.pk, lease.token) is not None


def test_an_expired_lease_is_taken_over_and_the_old_worker_stops(org) -> None:
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, job, "a.dcm", dicoms(1)[0])
    IngestJob.objects.filter(pk=job.pk).update(params={"phase": "queued"})
    old = jobs._claim(org, job.pk, None)
    assert old is not None
    IngestJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - jobs.LEASE * 2)
    new = jobs._claim(org, job.pk, None)
    assert new is not None
    with pytest.raises(jobs.LeaseLost):
        old.update(received=1)


def test_sweeper_resumes_dead_jobs_and_discards_abandoned_uploads(
    org, django_capture_on_commit_callbacks
) -> None:
    stale = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, stale, "a.dcm", dicoms(1)[0])
    IngestJob.objects.filter(pk=stale.pk).update(
        params={"phase": "queued"},
        state=IngestJob.State.RUNNING,
        heartbeat_at=timezone.now() - jobs.LEASE * 2,
    )
    abandoned = jobs.upload_job_create(org=org, actor=ACTOR)
    send(org, abandoned, "b.dcm", b"x" * 10)
    IngestJob.objects.filter(pk=abandoned.pk).update(created_at=timezone.now() - timedelta(days=2))

    counts = jobs.jobs_sweep()

    assert counts == {"resumed": 1, "abandoned": 1}
    stale.refresh_from_db()
    abandoned.refresh_from_db()
    assert stale.state == IngestJob.State.DONE and stale.stored == 1
    assert abandoned.state == IngestJob.State.FAILED and "never finished" in abandoned.error
    assert not jobs.job_folder(abandoned).exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"upload_id": "x"}, "upload"),
        ({"name": ""}, "name"),
        ({"offset": 5, "size": 4}, "offset"),
    ],
)
def test_bad_upload_requests_are_refused_with_the_field(org, kwargs, field) -> None:
    from tenants.errors import ValidationFailed

    job = jobs.upload_job_create(org=org, actor=ACTOR)
    args: dict[str, Any] = {
        "upload_id": uuid.uuid4().hex,
        "name": "a.dcm",
        "offset": 0,
        "size": 4,
        "final": True,
        "stream": io.BytesIO(b"abcd"),
        "length": 4,
        **kwargs,
    }
    with pytest.raises(ValidationFailed) as caught:
        jobs.upload_chunk_append(org=org, job=job, **args)
    assert field in caught.value.fields
    assert not list(jobs.job_folder(job).glob("*.data"))


def test_a_chunk_at_the_wrong_offset_says_where_to_resume(org) -> None:
    from tenants.errors import Conflict

    job = jobs.upload_job_create(org=org, actor=ACTOR)
    upload_id = uuid.uuid4().hex
    common = {"org": org, "job": job, "upload_id": upload_id, "name": "a.dcm", "size": 10}
    jobs.upload_chunk_append(**common, offset=0, final=False, stream=io.BytesIO(b"01234"), length=5)
    with pytest.raises(Conflict) as caught:
        jobs.upload_chunk_append(**common, offset=8, final=True, stream=io.BytesIO(b"89"), length=2)
    assert caught.value.fields["offset"] == ["5"]
    result = jobs.upload_chunk_append(
        **common, offset=5, final=True, stream=io.BytesIO(b"56789"), length=5
    )
    assert result.complete and result.received == 10
    # A repeated final chunk (its answer was lost) is accepted without a second file.
    again = jobs.upload_chunk_append(
        **common, offset=5, final=True, stream=io.BytesIO(b"56789"), length=5
    )
    assert again.complete
    job.refresh_from_db()
    assert job.total_files == 1 and job.total_bytes == 10


def test_finishing_without_files_is_refused_and_finished_jobs_take_no_more(org) -> None:
    from tenants.errors import Conflict, ValidationFailed

    job = jobs.upload_job_create(org=org, actor=ACTOR)
    with pytest.raises(ValidationFailed):
        jobs.upload_job_finish(org=org, job=job, actor=ACTOR)
    send(org, job, "a.dcm", b"data")
    jobs.upload_job_finish(org=org, job=job, actor=ACTOR)
    job.refresh_from_db()
    with pytest.raises(Conflict):
        send(org, job, "b.dcm", b"more")


# --- bucket import over real HTTP ---------------------------------------------------------


def _import(source: Any, prefix: str, **overrides: Any) -> jobs.ImportInput:
    values = {
        "bucket": source.name,
        "prefix": prefix,
        "endpoint_url": source.endpoint_url,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **overrides,
    }
    return jobs.ImportInput(**values)


def test_bulk_import_from_a_prefix_counts_right_and_lists_non_dicom_as_failure(
    org, s3_bucket: Any, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "BATCH_ITEMS", 3)
    files = dicoms(6)
    for i, data in enumerate(files[:4]):
        s3_bucket.put(f"export/2024/IM{i:04d}.dcm", data)
    s3_bucket.put("export/2024/batch.zip", zipped({"x/IM5": files[4], "x/IM6": files[5]}))
    s3_bucket.put("export/2024/notes.txt", b"radiology notes, not an image")
    s3_bucket.put("export/2024/", b"")  # a folder marker
    s3_bucket.put("elsewhere/IM9999.dcm", dicoms(1)[0])  # outside the prefix

    job = run(
        django_capture_on_commit_callbacks,
        jobs.import_job_create,
        org=org,
        data=_import(s3_bucket, "export/2024/"),
        actor=ACTOR,
    )

    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE, job.error
    assert (job.received, job.stored, job.duplicate, job.failed) == (7, 6, 0, 1)
    assert job.total_files == 7
    assert job.bytes_stored == sum(map(len, files))
    failure = IngestFailure.objects.get(job=job)
    assert failure.source == f"s3://{s3_bucket.name}/export/2024/notes.txt"
    assert failure.reason
    assert Study.objects.for_org(org).get().instance_count == 6
    assert "secret" not in job.params  # the credentials are dropped when the job ends
    assert job.source == f"s3://{s3_bucket.name}/export/2024/"


def test_import_with_unreachable_bucket_fails_clearly_and_indexes_nothing(
    org, closed_port: str, django_capture_on_commit_callbacks
) -> None:
    data = jobs.ImportInput(
        bucket="hospital-export",
        endpoint_url=closed_port,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    job = run(
        django_capture_on_commit_callbacks, jobs.import_job_create, org=org, data=data, actor=ACTOR
    )
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED
    assert job.error.startswith("Could not list s3://hospital-export/")
    assert "connect" in job.error.lower()
    assert not Instance.objects.exists()


def test_import_from_an_endpoint_answering_500_fails_clearly(
    org, failing_s3: str, django_capture_on_commit_callbacks
) -> None:
    data = jobs.ImportInput(
        bucket="hospital-export",
        endpoint_url=failing_s3,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    job = run(
        django_capture_on_commit_callbacks, jobs.import_job_create, org=org, data=data, actor=ACTOR
    )
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED
    assert "InternalError" in job.error and "Could not list" in job.error
    assert not Instance.objects.exists() and not Study.objects.exists()


def test_import_with_a_missing_bucket_fails_with_the_reason(
    org, s3_bucket: Any, django_capture_on_commit_callbacks
) -> None:
    data = _import(s3_bucket, "", bucket="no-such-bucket-here")
    job = run(
        django_capture_on_commit_callbacks, jobs.import_job_create, org=org, data=data, actor=ACTOR
    )
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED and "NoSuchBucket" in job.error


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"bucket": "ab"}, "bucket"),
        ({"endpoint_url": "ftp://files.example.com"}, "endpoint_url"),
        ({"secret_access_key": ""}, "secret_access_key"),
        ({"access_key_id": ""}, "access_key_id"),
        ({"prefix": "/absolute"}, "prefix"),
    ],
)
def test_bad_import_settings_are_refused_and_nothing_is_saved(org, overrides, field) -> None:
    from tenants.errors import ValidationFailed

    values = {
        "bucket": "hospital-export",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **overrides,
    }
    with pytest.raises(ValidationFailed) as caught:
        jobs.import_job_create(org=org, data=jobs.ImportInput(**values), actor=ACTOR)
    assert field in caught.value.fields
    assert not IngestJob.objects.exists()


def test_private_endpoints_are_refused_unless_allowed(org, settings) -> None:
    from tenants.errors import ValidationFailed

    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    data = jobs.ImportInput(
        bucket="hospital-export",
        endpoint_url="http://169.254.169.254",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    with pytest.raises(ValidationFailed) as caught:
        jobs.import_job_create(org=org, data=data, actor=ACTOR)
    assert "private or internal" in caught.value.fields["endpoint_url"][0]


def test_a_destination_that_refuses_objects_stops_the_job_with_a_clear_error(
    make_bucket_location, org, closed_port: str, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "INFRA_FAILURES_TO_STOP", 2)
    make_bucket_location(org, endpoint_url=closed_port, bucket="radiology")
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    for i, data in enumerate(dicoms(3)):
        send(org, job, f"f{i}.dcm", data)
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)
    job.refresh_from_db()
    assert job.state == IngestJob.State.FAILED
    assert "Radiology bucket" in job.error and "not accepting" in job.error
    assert job.failed == 2 and job.stored == 0
    assert not Instance.objects.exists()
