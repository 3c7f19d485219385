"""STOW-RS under hostile or broken input: a part whose ingest raises fails alone (never a 500, no
stray file), limits on parts and failure rows, empty parts, unparsable headers, and a request
whose worker dies mid-body (its job is closed by the sweep with the true counts)."""

from __future__ import annotations

import hashlib
import io
import logging
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from django.utils import timezone

from archive.dicomweb import stow
from archive.dicomweb.multipart import header_parameters
from archive.ingest import jobs, pipeline
from archive.ingest.dicom import CANNOT_UNDERSTAND, PROCESSING_FAILURE
from archive.ingest.tasks import ingest_jobs_sweep
from archive.models import IngestFailure, IngestJob, Instance, PendingObject
from archive.storage import store_for
from archive.storage.filesystem import FilesystemStore
from tenants.context import Actor
from tenants.models import AuditEvent
from tests.archive.test_dicomweb_stow import FAILED, REFERENCED, failures, nothing_stored, post
from tests.archive.test_dicomweb_support import BOUNDARY, multipart

pytestmark = pytest.mark.django_db


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


def stray_files(archive_root: Path) -> list[Path]:
    """Files in the storage root that no index row names (spool files included)."""
    keys = set(Instance.objects.values_list("object_key", flat=True))
    return [
        p
        for p in archive_root.rglob("*")
        if p.is_file() and not any(str(p).endswith(key) for key in keys)
    ]


class Boom(RuntimeError):
    pass


def _raise_in_store(monkeypatch, bad: bytes) -> None:
    bad_sha = hashlib.sha256(bad).hexdigest()
    put_file = FilesystemStore.put_file

    def failing_put(self, *, key, path, tier, sha256, **kwargs):
        if sha256 == bad_sha:
            raise Boom("storage layer bug")
        return put_file(self, key=key, path=path, tier=tier, sha256=sha256, **kwargs)

    monkeypatch.setattr(FilesystemStore, "put_file", failing_put)


def _raise_in_index(monkeypatch, bad: bytes) -> None:
    bad_uid = sop_uid(bad)
    instance_row = pipeline._instance_row

    def failing_row(org, location, study, series, item, now):
        if item.header.sop_instance_uid == bad_uid:
            raise Boom("index insert bug")
        return instance_row(org, location, study, series, item, now)

    monkeypatch.setattr(pipeline, "_instance_row", failing_row)


@pytest.mark.parametrize("where", [_raise_in_store, _raise_in_index], ids=["store", "index"])
def test_a_part_whose_ingest_raises_fails_alone_and_the_others_are_indexed(
    org, token_client, ct_study, archive_root, monkeypatch, caplog, where
):
    good_first, bad, good_last = ct_study
    where(monkeypatch, bad)

    with caplog.at_level(logging.ERROR, logger="archive.dicomweb.stow"):
        response = post(token_client(org), multipart([good_first, bad, good_last]))

    assert response.status_code == 202, response.content
    ((code, comment),) = failures(response)
    assert code == PROCESSING_FAILURE and comment.startswith("Part 2: An internal error")
    referenced = [item["00081155"]["Value"][0] for item in response.json()[REFERENCED]["Value"]]
    assert referenced == [sop_uid(good_first), sop_uid(good_last)]
    indexed = set(Instance.objects.for_org(org).values_list("sop_instance_uid", flat=True))
    assert indexed == {sop_uid(good_first), sop_uid(good_last)}
    job = IngestJob.objects.for_org(org).get()
    assert (job.state, job.stored, job.failed, job.received) == ("done", 2, 1, 3)
    assert IngestFailure.objects.for_org(org).get().reason_code == PROCESSING_FAILURE
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert stray_files(archive_root) == []
    assert not PendingObject.objects.exists()


def test_a_part_that_raises_alone_is_a_409_and_leaves_nothing(
    org, token_client, ct_study, archive_root, monkeypatch
):
    _raise_in_index(monkeypatch, ct_study[0])

    response = post(token_client(org), multipart(ct_study[:1]))

    assert response.status_code == 409
    assert failures(response)[0][0] == PROCESSING_FAILURE
    assert nothing_stored(archive_root) and not PendingObject.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_instance_is_never_answered_stored_when_its_object_is_gone(
    org, token_client, ct_study, monkeypatch, settings
):
    # The follow-up queued at the index commit fails (the broker is down): whatever the pipeline
    # does about it, the answer may call an instance stored only if its bytes can be read.
    from archive.ingest import tasks

    settings.ARCHIVE_SETTLE_SECONDS = 5

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.study_settle, "apply_async", broker_down)

    response = post(token_client(org), multipart(ct_study[:2]))

    assert response.status_code in (200, 202, 409)
    for item in response.json().get(REFERENCED, {}).get("Value", []):
        instance = Instance.objects.get(sop_instance_uid=item["00081155"]["Value"][0])
        stored = b"".join(
            store_for(instance.location).iter_bytes(key=instance.object_key, tier=instance.tier)
        )
        assert len(stored) == instance.size_bytes
    for code, comment in failures(response):
        assert code == PROCESSING_FAILURE and "internal error" in comment


# --- limits ------------------------------------------------------------------------------------


def test_a_body_with_more_parts_than_the_limit_is_a_413_and_stores_nothing(
    org, token_client, ct_study, archive_root, settings
):
    settings.STOW_MAX_PARTS = 3

    response = post(token_client(org), multipart([*ct_study, b"a fourth part"]))

    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_many_parts"
    assert (
        "more than 3 parts" in error["message"] and "Nothing of it was stored" in error["message"]
    )
    assert nothing_stored(archive_root)
    job = IngestJob.objects.for_org(org).get()
    assert job.state == "failed" and job.error.startswith("Refused: ")
    assert (job.received, job.stored, job.failed) == (0, 0, 0)
    assert not IngestFailure.objects.exists()
    assert AuditEvent.objects.get(action="ingest.stow").details["refused"] == "too_many_parts"


def test_a_body_with_exactly_the_limit_of_parts_is_stored(org, token_client, ct_study, settings):
    settings.STOW_MAX_PARTS = 3

    response = post(token_client(org), multipart(ct_study))

    assert response.status_code == 200
    assert Instance.objects.for_org(org).count() == 3


def test_an_empty_part_fails_on_its_own_without_a_spool_file(
    org, token_client, ct_study, monkeypatch
):
    spooled = []
    spool_chunks = pipeline.spool_chunks

    def counting(store, chunks):
        result = spool_chunks(store, chunks)
        spooled.append(result.size)
        return result

    monkeypatch.setattr(pipeline, "spool_chunks", counting)

    response = post(token_client(org), multipart([ct_study[0], b"", ct_study[1]]))

    assert response.status_code == 202
    assert failures(response) == [(CANNOT_UNDERSTAND, "Part 2: The part is empty (0 bytes).")]
    assert len(spooled) == 2 and all(spooled)


def test_failure_rows_per_job_are_capped_and_the_rest_counted(
    org, token_client, settings, archive_root
):
    settings.INGEST_MAX_FAILURE_ROWS = 5

    response = post(token_client(org), multipart([b""] * 12))

    assert response.status_code == 409
    assert len(response.json()[FAILED]["Value"]) == 12  # the answer names every part
    job = IngestJob.objects.for_org(org).get()
    assert (job.failed, job.received, job.state) == (12, 12, "failed")
    assert IngestFailure.objects.filter(job=job).count() == 5
    assert job.params["failures_unlisted"] == 7
    assert AuditEvent.objects.get(action="ingest.stow").details["failures_unlisted"] == 7
    assert nothing_stored(archive_root)


def test_the_answer_sums_up_unidentifiable_failed_parts_beyond_a_limit(
    org, token_client, ct_study, monkeypatch
):
    monkeypatch.setattr(stow, "MAX_UNIDENTIFIED_FAILURES", 3)
    body = multipart([b""] * 5 + [b"not dicom" * 20] * 2 + [ct_study[0]])

    response = post(token_client(org), body)

    assert response.status_code == 202
    listed = failures(response)
    assert [comment[:7] for _, comment in listed[:3]] == ["Part 1:", "Part 2:", "Part 3:"]
    assert listed[3:] == [
        (
            CANNOT_UNDERSTAND,
            "4 more parts failed with this reason (not listed one by one: only the first 3 "
            "parts that are no identifiable instance are).",
        )
    ]
    assert len(response.json()[REFERENCED]["Value"]) == 1


def test_upload_job_failure_rows_are_capped_too(org, settings, django_capture_on_commit_callbacks):
    from tests.archive.test_jobs import ACTOR, run, send

    settings.INGEST_MAX_FAILURE_ROWS = 2
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    for n in range(5):
        send(org, job, f"notes-{n}.txt", b"not an image %d" % n)
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)

    job.refresh_from_db()
    assert (job.failed, job.state) == (5, "done")
    assert IngestFailure.objects.filter(job=job).count() == 2
    assert job.params["failures_unlisted"] == 3


def test_many_empty_parts_cost_little_memory_and_no_rows_beyond_the_cap(org, settings):
    settings.INGEST_MAX_FAILURE_ROWS = 100
    parts = 5000
    body = multipart([b""] * parts)
    stream = io.BytesIO(body)
    request = stow.StowBody(read=stream.read, boundary=BOUNDARY, root_type="application/dicom")

    tracemalloc.start()
    try:
        outcome = stow.stow_receive(org=org, actor=Actor.system("tests"), body=request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(outcome.results) == parts and outcome.count("failed") == parts
    assert IngestFailure.objects.count() == 100
    # About 400 bytes per part (its result and reason) and the body's own 300 KB.
    assert peak < 8 * 1024 * 1024, peak


# --- headers that cannot be parsed -------------------------------------------------------------


def test_an_unparsable_part_content_type_is_a_failure_of_that_part(org, token_client, ct_study):
    bad_type = "application/dicom; x*0=a; x*=utf-8'"
    body = (
        multipart([ct_study[0]])[: -len(f"--{BOUNDARY}--\r\n")]
        + f"--{BOUNDARY}\r\nContent-Type: {bad_type}\r\n\r\n".encode()
        + ct_study[1]
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )

    response = post(token_client(org), body)

    assert response.status_code == 202
    assert failures(response) == [
        (CANNOT_UNDERSTAND, "Part 2: The part's Content-Type header cannot be parsed.")
    ]


@pytest.mark.parametrize(
    "value",
    [
        "multipart/related; boundary*0=x; boundary*=utf-8'",  # TypeError inside the parser
        "multipart/related; boundary*=bogus''abc",  # ValueError
    ],
)
def test_header_parameters_that_make_the_parser_raise_are_none(value):
    assert header_parameters(value) is None


# --- a worker killed mid-request ---------------------------------------------------------------


class Killed(BaseException):
    """What the request's thread sees of a kill: nothing of it runs any more."""


def test_a_request_killed_mid_body_leaves_true_counts_that_the_sweep_closes(
    org, token_client, ct_study, monkeypatch, settings
):
    monkeypatch.setattr(stow, "BATCH_PARTS", 2)
    monkeypatch.setattr(stow, "BATCH_BYTES", 1)  # ingest as the parts come
    calls = []
    instances_ingest = pipeline.instances_ingest

    def dying(**kwargs):
        calls.append(len(kwargs["batch"]))
        if len(calls) == 3:
            raise Killed()
        return instances_ingest(**kwargs)

    monkeypatch.setattr(pipeline, "instances_ingest", dying)
    parts = [*ct_study, b"", b"junk, not dicom" * 10]

    with pytest.raises(Killed):
        post(token_client(org), multipart(parts))

    job = IngestJob.objects.for_org(org).get()
    # Parts 1 and 2 (each its own batch) were indexed, part 3 was being ingested.
    assert job.state == "running"
    assert (job.received, job.stored, job.failed) == (2, 2, 0)
    assert Instance.objects.for_org(org).count() == 2

    assert jobs.stow_jobs_close() == 0  # the heartbeat is recent
    later = job.heartbeat_at + jobs.LEASE + timedelta(seconds=1)
    assert jobs.stow_jobs_close(now=later) == 1

    job.refresh_from_db()
    assert job.state == "failed" and job.finished_at == later
    assert (job.received, job.stored, job.failed, job.total_files) == (2, 2, 0, 2)
    assert "Interrupted" in job.error and "2 stored" in job.error
    audit = AuditEvent.objects.get(action="ingest.stow_interrupted")
    assert audit.details["stored"] == 2
    assert jobs.stow_jobs_close(now=later) == 0  # closed once


def test_the_sweep_task_closes_stale_stow_jobs_only(org):
    now = timezone.now()
    stale_beat = now - jobs.LEASE - timedelta(minutes=1)

    def job(**fields) -> IngestJob:
        return IngestJob.objects.create(
            organization=org,
            kind=fields.pop("kind", IngestJob.Kind.STOW),
            state=fields.pop("state", IngestJob.State.RUNNING),
            started_at=stale_beat,
            **fields,
        )

    interrupted = job(heartbeat_at=stale_beat, received=600, stored=500, failed=3, duplicate=1)
    never_beat = job(heartbeat_at=None)
    alive = job(heartbeat_at=now - timedelta(minutes=1))
    finished = job(state=IngestJob.State.DONE, heartbeat_at=stale_beat)

    counts = ingest_jobs_sweep()

    assert counts["interrupted"] == 2
    for row in (interrupted, never_beat, alive, finished):
        row.refresh_from_db()
    assert interrupted.state == never_beat.state == "failed"
    assert (interrupted.received, interrupted.stored, interrupted.total_files) == (600, 500, 600)
    assert "500 stored, 1 already stored, 3 failed" in interrupted.error
    assert alive.state == "running" and finished.state == "done"
