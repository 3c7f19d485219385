"""Crafted UIDs can name nothing: UIDs are checked before anything is named, object keys are
collision-free by construction, and a store never replaces an object with other bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from django.core.management import call_command

from archive.ingest import pipeline
from archive.ingest.dicom import DATASET_DOES_NOT_MATCH, Header, uid_problem
from archive.models import Instance, PendingObject, Study
from archive.storage import ObjectExists, store_for
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from tests.archive.malformed import LONG, encoded, instance
from tests.archive.test_dicomweb_stow import FAILED, REFERENCED, failures, post
from tests.archive.test_dicomweb_support import multipart

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.archive.conftest_s3"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", None),
        ("1.2.03.4", None),  # a leading zero: written by older devices, kept as sent
        ("0.1", None),
        ("", "is empty"),
        ("1" * 65, "65 characters"),
        ("1.2.3/4", "'/'"),
        ("1.2..3", "empty component"),
        (".1.2", "empty component"),
        ("1.2.", "empty component"),
        ("1.2.3\\4", "more than one value"),
        ("1.2.a", "'a'"),
        (" 1.2", "' '"),
        ("1.2\x003", "'\\x00'"),
        ("..", "empty component"),
    ],
)
def test_uid_rules(value, problem):
    found = uid_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def ingest_bytes(org, data: bytes) -> pipeline.IngestResult:
    store = store_for(pipeline.location_primary(org))
    return pipeline.instance_ingest(org=org, spooled=pipeline.spool_file(store, io.BytesIO(data)))


def stored_files(root: Path) -> list[Path]:
    return [p for p in (root / "hot").rglob("*") if p.is_file()]


def test_the_reported_key_collision_is_refused_and_overwrites_nothing(org, archive_root):
    """Study 1.2.3.777: series 1.2.3.778 + SOP 9/9 and series 1.2.3.778/9 + SOP 9 once wrote one
    file for two indexed instances."""
    first = instance(
        StudyInstanceUID="1.2.3.777", SeriesInstanceUID="1.2.3.778", SOPInstanceUID="9/9"
    )
    second = instance(
        StudyInstanceUID="1.2.3.777", SeriesInstanceUID="1.2.3.778/9", SOPInstanceUID="9"
    )
    results = [ingest_bytes(org, encoded(ds)) for ds in (first, second)]
    assert [r.status for r in results] == ["failed", "failed"]
    assert [r.reason_code for r in results] == [DATASET_DOES_NOT_MATCH] * 2
    assert "SOPInstanceUID '9/9' contains '/'" in results[0].reason
    assert "SeriesInstanceUID '1.2.3.778/9' contains '/'" in results[1].reason
    assert not Instance.objects.exists() and not stored_files(archive_root)


def test_long_uids_are_refused_not_cut(org, archive_root):
    result = ingest_bytes(org, encoded(instance(SOPInstanceUID=LONG)))
    assert result.reason_code == DATASET_DOES_NOT_MATCH
    assert "SOPInstanceUID" in result.reason and "66 characters" in result.reason
    assert not Instance.objects.exists()


def test_object_keys_are_distinct_for_uids_that_once_joined_into_one_path(org):
    def key(study: str, series: str, sop: str) -> str:
        header = Header(
            sop_instance_uid=sop,
            sop_class_uid="1.2",
            study_uid=study,
            series_uid=series,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        return pipeline.object_key(org, header)

    a = key("1.2.3.777", "1.2.3.778", "9/9")
    b = key("1.2.3.777", "1.2.3.778/9", "9")
    assert a.rsplit("-", 1)[0] != b.rsplit("-", 1)[0]
    for k in (a, b, key("..", "../..", "\\..\\x")):
        assert k.startswith(f"org-{org.pk}/") and k.count("/") == 3 and ".." not in k
    # Even the same UIDs twice get two keys: concurrent ingests never share an object.
    assert key("1.2", "1.3", "1.4") != key("1.2", "1.3", "1.4")


def test_leading_zero_uids_are_kept_apart_from_their_canonical_form(org, archive_root):
    study = "1.2.826.0.1.3680043.8.498.99"
    odd = instance(StudyInstanceUID=study, SOPInstanceUID="1.2.03.4")
    canonical = instance(StudyInstanceUID=study, SOPInstanceUID="1.2.3.4")
    results = [ingest_bytes(org, encoded(ds)) for ds in (odd, canonical)]
    assert [r.status for r in results] == ["stored", "stored"]
    rows = Instance.objects.for_org(org).order_by("sop_instance_uid")
    assert [r.sop_instance_uid for r in rows] == ["1.2.03.4", "1.2.3.4"]
    assert len({r.object_key for r in rows}) == 2 and len(stored_files(archive_root)) == 2


def test_uid_padding_is_not_part_of_the_uid(org, archive_root):
    ds = instance()
    sop = ds.SOPInstanceUID
    ds["SOPInstanceUID"].value = sop + "\x00"
    result = ingest_bytes(org, encoded(ds))
    assert result.status == "stored", result.reason
    assert Instance.objects.for_org(org).get().sop_instance_uid == sop


def test_a_nul_in_a_text_value_is_dropped_not_a_database_error(org, archive_root):
    ds = instance()
    ds.PatientName = "Doe\x00^Jane"
    ds.StudyDescription = "CHEST\x00"
    result = ingest_bytes(org, encoded(ds))
    assert result.status == "stored", result.reason
    study = Study.objects.for_org(org).get()
    assert study.patient_name == "Doe^Jane" and study.study_description == "CHEST"


def test_filesystem_store_never_replaces_an_object_with_other_bytes(tmp_path):
    store = FilesystemStore(tmp_path / "root")

    def put(data: bytes, sha: str = ""):
        spool = store.spool_dir() / f"spool-{len(data)}-{data[:1].hex()}"
        spool.write_bytes(data)
        return store.put_file(key="org-1/a/b/c.dcm", path=spool, tier="hot", sha256=sha)

    import hashlib

    put(b"first patient", hashlib.sha256(b"first patient").hexdigest())
    with pytest.raises(ObjectExists):
        put(b"second patient", hashlib.sha256(b"second patient").hexdigest())
    with pytest.raises(ObjectExists):
        put(b"first patienT")  # same size, other bytes
    assert b"".join(store.iter_bytes(key="org-1/a/b/c.dcm", tier="hot")) == b"first patient"
    # The same bytes again: stored already, not an error.
    assert put(b"first patient", hashlib.sha256(b"first patient").hexdigest()).size == 13
    assert not list(store.spool_dir().iterdir())  # every spool file was consumed


def test_s3_store_never_replaces_an_object_with_other_bytes(s3_bucket):
    import hashlib

    store = S3Store(
        bucket=s3_bucket.name,
        endpoint_url=s3_bucket.endpoint_url,
        region="us-east-1",
        access_key_id="AKIASTRATATEST0000",
        secret_access_key="strata-test-secret-key",
        storage_classes={"hot": "STANDARD"},
        spool_root=None,
    )

    def put(data: bytes):
        spool = store.spool_dir() / f"spool-{hashlib.sha256(data).hexdigest()[:8]}"
        spool.write_bytes(data)
        return store.put_file(
            key="org-1/k.dcm", path=spool, tier="hot", sha256=hashlib.sha256(data).hexdigest()
        )

    put(b"first patient")
    with pytest.raises(ObjectExists):
        put(b"other patient")
    assert b"".join(store.iter_bytes(key="org-1/k.dcm", tier="hot")) == b"first patient"
    assert put(b"first patient").size == 13  # idempotent


def test_a_refused_overwrite_fails_the_instance_and_keeps_the_existing_object(
    org, archive_root, monkeypatch
):
    """Were two keys ever equal, the second object fails; the first object stays."""
    monkeypatch.setattr(pipeline, "object_key", lambda org, header: f"org-{org.pk}/same.dcm")
    first, second = instance(), instance()
    results = [ingest_bytes(org, encoded(ds)) for ds in (first, second)]
    assert [r.status for r in results] == ["stored", "failed"]
    assert "not overwritten" in results[1].reason
    kept = Instance.objects.for_org(org).get()
    data = b"".join(store_for(kept.location).iter_bytes(key=kept.object_key, tier="hot"))
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == first.SOPInstanceUID
    assert not PendingObject.objects.exists()


def test_stow_bad_uid_parts_fail_alone_and_the_good_ones_are_stored(
    org, token_client, archive_root
):
    good = [encoded(instance()) for _ in range(2)]
    dotdot = encoded(instance(SOPInstanceUID="1.2.3/../4"))
    nul = encoded(instance(SOPInstanceUID="1.2.3\x004"))
    response = post(token_client(org, ["dicom:write"]), multipart([good[0], dotdot, nul, good[1]]))
    assert response.status_code == 202
    body = response.json()
    assert len(body[REFERENCED]["Value"]) == 2 and len(body[FAILED]["Value"]) == 2
    assert [code for code, _ in failures(response)] == [DATASET_DOES_NOT_MATCH] * 2
    assert all("SOPInstanceUID" in reason for _, reason in failures(response))
    assert Instance.objects.for_org(org).count() == 2
    assert len(stored_files(archive_root)) == 2


def test_collision_report_finds_index_rows_sharing_an_object(org, archive_root, capsys):
    for ds in (instance(), instance()):
        assert ingest_bytes(org, encoded(ds)).status == "stored"
    first, second = Instance.objects.for_org(org).order_by("pk")
    call_command("archive_key_collisions")
    assert "No two index rows share an object" in capsys.readouterr().out
    # The old defect, as it left the index: two rows naming one object (the second's bytes).
    Instance.objects.filter(pk=first.pk).update(object_key=second.object_key)
    with pytest.raises(SystemExit) as exit_info:
        call_command("archive_key_collisions")
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"organization {org.pk}" in out and second.object_key in out
    assert f"instance {first.pk}" in out and "bytes do not match" in out
    assert f"instance {second.pk}" in out and "bytes match" in out


@pytest.mark.django_db(transaction=True)
def test_a_follow_up_failing_after_the_index_commit_keeps_the_indexed_objects(
    org, archive_root, monkeypatch
):
    """The settle check is queued when the index commits; a broker that is down then must not
    make the pipeline remove the objects of instances the index already names."""
    from archive.ingest import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.study_settle, "apply_async", broker_down)
    result = ingest_bytes(org, encoded(instance()))
    assert result.status == "stored"
    row = Instance.objects.for_org(org).get()
    assert store_for(row.location).head(key=row.object_key, tier="hot") is not None
    assert not PendingObject.objects.exists()
