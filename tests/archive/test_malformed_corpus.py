"""The malformed-DICOM corpus (tests/archive/malformed.py) through every door: STOW-RS, C-STORE,
upload and bucket import answer each case with the same reason, store the valid oddities, and
leave nothing behind for the rest."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import _config

from archive.ingest import jobs
from archive.models import IngestFailure, IngestJob, Instance, PendingObject
from tests.archive.malformed import Case, cases
from tests.archive.test_dicomweb_stow import failures, post
from tests.archive.test_dicomweb_support import multipart
from tests.archive.test_dimse import associate, listener  # noqa: F401 - the listener fixture
from tests.archive.test_jobs import ACTOR, _import, run, send

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.archive.conftest_s3"]

CORPUS = cases()
BAD = [c for c in CORPUS if c.code]
GOOD = [c for c in CORPUS if not c.code]


def assert_reason(case: Case, code: int, reason: str) -> None:
    assert code == case.code, (case.name, hex(code), reason)
    for word in case.words:
        assert word in reason, (case.name, reason)


def stored_files(root: Path) -> list[Path]:
    return [p for p in (root / "hot").rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_stow_rs(case, org, token_client, archive_root):
    response = post(token_client(org, ["dicom:write"]), multipart([case.data]))
    if not case.code:
        assert response.status_code == 200, response.content
        assert Instance.objects.for_org(org).count() == 1
        return
    assert response.status_code == 409, response.content
    [(code, reason)] = failures(response)
    assert_reason(case, code, reason)
    assert not Instance.objects.exists() and not stored_files(archive_root)


def test_upload(org, archive_root, django_capture_on_commit_callbacks):
    job = jobs.upload_job_create(org=org, actor=ACTOR)
    for case in CORPUS:
        send(org, job, f"{case.name}.dcm", case.data)
    run(django_capture_on_commit_callbacks, jobs.upload_job_finish, org=org, job=job, actor=ACTOR)
    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE, job.error
    _assert_job(job, org, CORPUS, prefix="")


def test_bucket_import(org, s3_bucket: Any, archive_root, django_capture_on_commit_callbacks):
    for case in CORPUS:
        s3_bucket.put(f"corpus/{case.name}.dcm", case.data)
    job = run(
        django_capture_on_commit_callbacks,
        jobs.import_job_create,
        org=org,
        data=_import(s3_bucket, "corpus/"),
        actor=ACTOR,
    )
    job.refresh_from_db()
    assert job.state == IngestJob.State.DONE, job.error
    _assert_job(job, org, CORPUS, prefix=f"s3://{s3_bucket.name}/corpus/")


def _assert_job(job: IngestJob, org: Any, sent: list[Case], *, prefix: str) -> None:
    bad = [c for c in sent if c.code]
    found = {
        f.source.removeprefix(prefix).removesuffix(".dcm"): (f.reason_code, f.reason)
        for f in IngestFailure.objects.filter(job=job)
    }
    assert sorted(found) == sorted(c.name for c in bad)
    for case in bad:
        assert_reason(case, *found[case.name])
    assert (job.stored, job.failed) == (len(sent) - len(bad), len(bad))
    assert Instance.objects.for_org(org).count() == len(sent) - len(bad)
    assert not PendingObject.objects.exists()


# Over C-STORE a data set travels without its file meta; the cases that are about the file
# (no preamble, empty) do not exist there, and pynetdicom will not send a UID it cannot encode in
# the command (too long). The rest are sent as the files' data sets, byte for byte.
CSTORE = [
    c
    for c in CORPUS
    if c.name not in {"no-preamble", "empty", "garbage", "sop-too-long", "sop-with-nul"}
]


@pytest.mark.django_db(transaction=True)
def test_c_store(listener, org, dicom_ae, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    # Send each file's data set bytes as they are, not as pydicom would re-encode them.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    contexts = []
    paths = []
    for case in CSTORE:
        path = tmp_path / f"{case.name}.dcm"
        path.write_bytes(case.data)
        paths.append(path)
        meta = pydicom.filereader.read_file_meta_info(path)
        contexts.append((str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)]))
    # One presentation context per (SOP class, transfer syntax): each is accepted on its own.
    assoc = associate(listener, contexts=list(dict.fromkeys((c, tuple(t)) for c, t in contexts)))
    assert assoc.is_established
    statuses = [assoc.send_c_store(path) for path in paths]
    assoc.release()
    listener.wait_idle()
    for case, status in zip(CSTORE, statuses, strict=True):
        if not case.code:
            assert status.Status == 0x0000, (case.name, status)
            continue
        # An ErrorComment holds 64 characters (LO): the attribute comes first in it.
        comment = str(status.get("ErrorComment", ""))
        assert status.Status == case.code, (case.name, status)
        assert not case.words or case.words[0] in comment, (case.name, comment)
    assert Instance.objects.for_org(org).count() == len(GOOD)


def test_the_valid_oddities_are_stored_as_received_and_indexed(org, token_client):
    for case in GOOD:
        response = post(token_client(org, ["dicom:write"]), multipart([case.data]))
        assert response.status_code == 200, (case.name, response.content)
    for case in GOOD:
        ds = pydicom.dcmread(io.BytesIO(case.data))
        row = Instance.objects.for_org(org).get(sop_instance_uid=ds.SOPInstanceUID)
        assert row.study.patient_name == str(ds.PatientName)
        assert row.size_bytes == len(case.data)
