"""STOW-RS through the Django stack: responses, the job record, metering, every bad input, memory."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from django.test import RequestFactory
from django.test.client import ClientHandler

from archive.ingest.dicom import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    STUDY_UID_MISMATCH,
)
from archive.models import IngestFailure, IngestJob, Instance, Study
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import UsageEvent
from tenants.models import AuditEvent
from tests.archive.test_dicomweb_support import (
    BOUNDARY,
    STOW_TYPE,
    multipart,
    stored_bytes,
)

pytestmark = pytest.mark.django_db

REFERENCED = "00081199"
FAILED = "00081198"


def post(client, body: bytes, *, path: str = "/dicomweb/studies", content_type: str = STOW_TYPE):
    return client.post(path, data=body, content_type=content_type)


def failures(response) -> list[tuple[int, str]]:
    return [
        (item["00081197"]["Value"][0], item["00000902"]["Value"][0])
        for item in response.json().get(FAILED, {}).get("Value", [])
    ]


def nothing_stored(archive_root: Path) -> bool:
    return (
        not Instance.objects.exists()
        and not Study.objects.exists()
        and not [p for p in (archive_root / "hot").rglob("*") if p.is_file()]
        and not [p for p in (archive_root / ".incoming").rglob("*") if p.is_file()]
    )


def test_store_answers_200_with_references_and_keeps_bytes_exactly(org, token_client, ct_study):
    response = post(token_client(org, ["dicom:write"]), multipart(ct_study))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    body = response.json()
    study_uid = pydicom.dcmread(io.BytesIO(ct_study[0])).StudyInstanceUID
    assert body["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{study_uid}"]
    assert FAILED not in body
    items = body[REFERENCED]["Value"]
    assert len(items) == 3
    for item, data in zip(items, ct_study, strict=True):
        ds = pydicom.dcmread(io.BytesIO(data))
        assert item["00081150"]["Value"] == [ds.SOPClassUID]
        assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
        assert item["00081190"]["Value"][0].endswith(
            f"/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        instance = Instance.objects.for_org(org).get(sop_instance_uid=ds.SOPInstanceUID)
        assert stored_bytes(instance) == data


def test_one_job_per_request_with_counts_compute_and_audit(org, token_client, ct_study):
    post(token_client(org), multipart(ct_study))

    job = IngestJob.objects.for_org(org).get()
    assert (job.kind, job.state) == ("stow", "done")
    assert (job.received, job.stored, job.duplicate, job.failed) == (3, 3, 0, 0)
    assert job.bytes_received == sum(map(len, ct_study)) == job.bytes_stored
    assert job.started_at and job.finished_at
    compute = UsageEvent.objects.for_org(org).get(meter="compute.seconds")
    assert compute.quantity >= 1 and compute.idempotency_key == f"compute:stow:{job.pk}"
    audit = AuditEvent.objects.get(organization=org, action="ingest.stow")
    assert audit.details == {
        "received": 3,
        "stored": 3,
        "duplicate": 0,
        "failed": 0,
        "bytes": job.bytes_received,
    }
    assert audit.target_id == str(job.pk)


def test_sending_the_same_instance_again_is_200_already_stored(org, token_client, ct_study):
    client = token_client(org)
    first = post(client, multipart(ct_study[:1]))
    again = post(client, multipart(ct_study[:1]))

    assert first.status_code == again.status_code == 200
    assert again.json()[REFERENCED]["Value"] == first.json()[REFERENCED]["Value"]
    assert "Warning" not in first and "already stored" in again["Warning"]
    assert Instance.objects.for_org(org).count() == 1
    latest = IngestJob.objects.for_org(org).first()
    assert (latest.stored, latest.duplicate) == (0, 1)
    assert UsageEvent.objects.for_org(org).filter(meter="ingest.instances").count() == 1


def test_a_bad_part_fails_alone_with_202(org, token_client, ct_study):
    body = multipart([ct_study[0], b"not a dicom file" * 20, ct_study[1]])

    response = post(token_client(org), body)

    assert response.status_code == 202
    assert len(response.json()[REFERENCED]["Value"]) == 2
    ((code, comment),) = failures(response)
    assert code == CANNOT_UNDERSTAND and comment.startswith("Part 2: ")
    assert Instance.objects.for_org(org).count() == 2
    job = IngestJob.objects.for_org(org).get()
    assert (job.stored, job.failed, job.state) == (2, 1, "done")
    failure = IngestFailure.objects.for_org(org).get()
    assert failure.job_id == job.pk and failure.reason_code == CANNOT_UNDERSTAND


def _without(attribute: str, data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    delattr(ds, attribute)
    return to_bytes(ds)


def _cut_before_close(data: bytes) -> bytes:
    return multipart([data])[: -len(f"\r\n--{BOUNDARY}--\r\n") - 100]


@pytest.mark.parametrize(
    ("make_body", "path", "code", "words"),
    [
        (lambda d: multipart([b"plain text, no DICM" * 50]), "", CANNOT_UNDERSTAND, "not a DICOM"),
        (lambda d: multipart([d[:-300]]), "", CANNOT_UNDERSTAND, "truncated"),
        (lambda d: multipart([d[:200]]), "", DATASET_DOES_NOT_MATCH, "missing"),
        (
            lambda d: multipart([_without("SOPInstanceUID", d)]),
            "",
            DATASET_DOES_NOT_MATCH,
            "SOPInstanceUID",
        ),
        (
            lambda d: multipart([_without("StudyInstanceUID", d)]),
            "",
            DATASET_DOES_NOT_MATCH,
            "StudyInstanceUID",
        ),
        (
            lambda d: multipart([d], part_type="application/dicom+json"),
            "",
            CANNOT_UNDERSTAND,
            "application/dicom+json",
        ),
        (
            lambda d: multipart([d], part_type="image/jpeg"),
            "",
            CANNOT_UNDERSTAND,
            "image/jpeg",
        ),
        (lambda d: multipart([d]), "/1.2.3.999", STUDY_UID_MISMATCH, "1.2.3.999"),
        (_cut_before_close, "", CANNOT_UNDERSTAND, "closing boundary"),
    ],
    ids=[
        "not-dicom",
        "truncated-part",
        "truncated-header",
        "missing-sop-uid",
        "missing-study-uid",
        "dicom-json-part",
        "jpeg-part",
        "study-uid-mismatch",
        "body-cut-mid-part",
    ],
)
def test_every_bad_part_is_a_409_with_a_reason_and_nothing_stored(
    org, token_client, ct_study, archive_root, make_body, path, code, words
):
    response = post(token_client(org), make_body(ct_study[0]), path=f"/dicomweb/studies{path}")

    assert response.status_code == 409, response.content
    ((reason_code, comment),) = failures(response)
    assert reason_code == code
    assert words in comment
    assert REFERENCED not in response.json()
    assert nothing_stored(archive_root)
    job = IngestJob.objects.for_org(org).get()
    assert (job.state, job.failed, job.stored) == ("failed", 1, 0)
    assert IngestFailure.objects.for_org(org).get().reason_code == code


def test_study_url_accepts_its_own_instances(org, token_client, ct_study):
    uid = pydicom.dcmread(io.BytesIO(ct_study[0])).StudyInstanceUID

    response = post(token_client(org), multipart(ct_study), path=f"/dicomweb/studies/{uid}")

    assert response.status_code == 200
    assert response.json()["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{uid}"]


def test_a_different_object_under_a_stored_uid_is_refused(org, token_client, ct_study):
    client = token_client(org)
    post(client, multipart(ct_study[:1]))
    ds = pydicom.dcmread(io.BytesIO(ct_study[0]))
    ds.PatientName = "Changed^Name"

    response = post(client, multipart([to_bytes(ds)]))

    assert response.status_code == 409
    assert failures(response)[0][0] == DUPLICATE_SOP_INSTANCE


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/dicom", b"DICM", 415, "unsupported_media_type"),
        ("multipart/form-data; boundary=x", b"--x--", 415, "unsupported_media_type"),
        (
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            None,
            415,
            "unsupported_media_type",
        ),
        ('multipart/related; type="application/dicom"', None, 400, "invalid_multipart"),
        (
            'multipart/related; type="application/dicom"; boundary="has;semicolon"',
            None,
            400,
            "invalid_multipart",
        ),
        (
            'multipart/related; type="application/dicom"; boundary=not-the-one',
            None,
            400,
            "invalid_multipart",
        ),
        (STOW_TYPE, b"", 400, "empty_body"),
        (STOW_TYPE, f"--{BOUNDARY}--\r\n".encode(), 400, "invalid_multipart"),
        (STOW_TYPE, b"garbage without any boundary", 400, "invalid_multipart"),
    ],
    ids=[
        "single-part-dicom",
        "form-data",
        "metadata-bulkdata-form",
        "no-boundary",
        "invalid-boundary",
        "wrong-boundary",
        "empty-body",
        "no-parts",
        "boundary-absent-from-body",
    ],
)
def test_a_body_that_cannot_be_framed_is_refused_whole(
    org, token_client, ct_study, archive_root, content_type, body, status, code
):
    data = multipart(ct_study) if body is None else body

    response = post(token_client(org), data, content_type=content_type)

    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert nothing_stored(archive_root)
    assert not IngestJob.objects.exists()


def test_stow_answers_406_when_json_is_not_acceptable(org, token_client, ct_study, archive_root):
    response = token_client(org).post(
        "/dicomweb/studies",
        data=multipart(ct_study),
        content_type=STOW_TYPE,
        HTTP_ACCEPT="application/dicom+xml",
    )

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    assert nothing_stored(archive_root)


def test_token_without_dicom_write_gets_403_naming_the_scope(
    org, token_client, ct_study, archive_root
):
    response = post(token_client(org, ["dicom:read"]), multipart(ct_study))

    assert response.status_code == 403
    error = response.json()["error"]
    assert "dicom:write" in error["message"] and error["fields"]["permission"] == ["images.write"]
    assert nothing_stored(archive_root)


def test_without_a_token_the_answer_is_401(api_client, ct_study, archive_root):
    response = api_client.post(
        "/dicomweb/studies", data=multipart(ct_study), content_type=STOW_TYPE
    )

    assert response.status_code == 401
    assert nothing_stored(archive_root)


def _raw_request(secret: str, body_file, **environ):
    """Run a request through the full handler with ``wsgi.input`` reading from a file, as a
    server socket would: the body never exists in memory as one bytes object."""
    request = RequestFactory().post("/dicomweb/studies", HTTP_AUTHORIZATION=f"Bearer {secret}")
    base = {**request.environ, "CONTENT_TYPE": STOW_TYPE, "wsgi.input": body_file}
    base.pop("CONTENT_LENGTH", None)  # the factory's own (empty form) body
    base.update(environ)
    return ClientHandler(enforce_csrf_checks=False)(base)


def test_a_chunked_body_is_read_when_the_server_dechunks_it(org, make_token, ct_study, tmp_path):
    _, secret = make_token(org)
    path = tmp_path / "body"
    path.write_bytes(multipart(ct_study))
    with open(path, "rb") as body:
        response = _raw_request(
            secret, body, HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input_terminated": True}
        )

    assert response.status_code == 200
    assert Instance.objects.for_org(org).count() == 3


def test_a_chunked_body_the_server_cannot_dechunk_is_411(org, make_token, ct_study, tmp_path):
    _, secret = make_token(org)
    path = tmp_path / "body"
    path.write_bytes(multipart(ct_study))
    with open(path, "rb") as body:
        response = _raw_request(secret, body, HTTP_TRANSFER_ENCODING="chunked")

    assert response.status_code == 411
    assert not Instance.objects.exists()


def test_a_50_mb_instance_is_stored_in_constant_memory(org, make_token, ct_study, tmp_path):
    """tracemalloc around the request handling: parsing, spooling, hashing, header reads and
    indexing of a 50 MB instance stay far below its size."""
    _, secret = make_token(org)
    warm_up = tmp_path / "warm-up"
    warm_up.write_bytes(multipart(ct_study[:1]))
    with open(warm_up, "rb") as body:  # first-request imports and caches are not the request's
        assert (
            _raw_request(secret, body, CONTENT_LENGTH=str(warm_up.stat().st_size)).status_code
            == 200
        )
    ds = make_instance(study_spec("MG"), series_uid="1.2.3.4.5", rows=1024, columns=1024, frames=25)
    path = tmp_path / "body"
    with open(path, "wb") as out:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        ds.save_as(out, enforce_file_format=True)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    del ds
    size = path.stat().st_size
    assert size > 50 * 1024 * 1024

    with open(path, "rb") as body:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            response = _raw_request(secret, body, CONTENT_LENGTH=str(size))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert response.status_code == 200, response.content
    assert peak < 20 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    instance = Instance.objects.for_org(org).get(series__series_uid="1.2.3.4.5")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(len(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n"))
        remaining = instance.size_bytes
        while remaining:
            chunk = handle.read(min(remaining, 1 << 20))
            digest.update(chunk)
            remaining -= len(chunk)
    assert instance.sha256 == digest.hexdigest()
