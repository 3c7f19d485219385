"""The same image through two doors: each door writes its own File Meta header (C-STORE names
the sending AE title), so the second send is compared by its data set. The same data set in the
same transfer syntax is a duplicate, as within one door; anything else stays refused, with its
reason, and nothing is overwritten."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.utils import timezone
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.dimse import indexer as dimse_indexer
from archive.dimse import listener as dimse
from archive.ingest import pipeline
from archive.ingest.dicom import DUPLICATE_SOP_INSTANCE, read_header
from archive.ingest.pipeline import instance_ingest, spool_file
from archive.locations.selectors import location_primary
from archive.models import IngestFailure, IngestJob, Instance
from archive.storage import StorageUnavailable, store_for
from archive.storage.filesystem import FilesystemStore
from billing.models import StorageDelta, UsageEvent
from tests.archive.reconcile_helpers import assert_reconciled
from tests.archive.test_dicomweb_support import STOW_TYPE, multipart
from tests.archive.test_dimse import CALLED, Listener, associate, ct

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.archive.conftest_s3"]

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))
REFERENCED = "00081199"
FAILED = "00081198"


@pytest.fixture
def listener(start_listener: Any) -> Listener:
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


def ingest(org: Any, data: bytes) -> pipeline.IngestResult:
    """What a portal upload does (the pipeline of STOW-RS too)."""
    store = store_for(location_primary(org))
    return instance_ingest(org=org, spooled=spool_file(store, io.BytesIO(data)))


def stow(client: Any, parts: list[bytes]) -> Any:
    return client.post(
        "/dicomweb/studies",
        data=multipart(parts),
        content_type=STOW_TYPE,
    )


def cstore(listener: Listener, what: Any, syntaxes: list[str] | None = None, **kw: Any) -> Any:
    assoc = associate(
        listener, contexts=[(CTImageStorage, syntaxes or [ExplicitVRLittleEndian])], **kw
    )
    assert assoc.is_established
    status = assoc.send_c_store(what)
    assoc.release()
    listener.wait_idle()
    return status


def objects(org: Any) -> list[Path]:
    root = Path(store_for(location_primary(org)).root)  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*.dcm") if f"org-{org.pk}" in str(p))


def ledger(org: Any) -> list[tuple[str, int]]:
    return list(StorageDelta.objects.for_org(org).order_by("pk").values_list("tier", "delta_bytes"))


def usage(org: Any) -> int:
    return UsageEvent.objects.for_org(org).filter(meter__startswith="ingest.").count()


def job(org: Any) -> IngestJob:
    return IngestJob.objects.for_org(org).filter(kind=IngestJob.Kind.CSTORE).get()


def test_stow_then_cstore_of_the_same_file_is_a_duplicate(listener, org, dicom_ae, token_client):
    response = stow(token_client(org, ["dicom:write"]), [CT_SMALL.read_bytes()])
    assert response.status_code == 200, response.content
    before = (ledger(org), usage(org), objects(org))
    first = Instance.objects.for_org(org).get()

    status = cstore(listener, CT_SMALL)

    assert status.Status == 0x0000
    assert (job(org).received, job(org).stored, job(org).duplicate, job(org).failed) == (1, 0, 1, 0)
    assert list(Instance.objects.for_org(org)) == [first]
    assert Instance.objects.for_org(org).get().sha256 == first.sha256
    assert (ledger(org), usage(org), objects(org)) == before
    assert len(objects(org)) == 1
    assert not IngestFailure.objects.for_org(org).exists()
    assert_reconciled(org)


def test_stow_then_dcmtk_storescu_of_the_same_file_is_a_duplicate(listener, org, dicom_ae):
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed")
    assert ingest(org, CT_SMALL.read_bytes()).status == "stored"
    before = (ledger(org), usage(org), objects(org))
    done = subprocess.run(
        [
            "storescu",
            "-aet",
            "MODALITY9",
            "-aec",
            CALLED,
            listener.host,
            str(listener.port),
            str(CT_SMALL),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    listener.wait_idle()
    assert done.returncode == 0, (
        done.stderr,
        list(IngestFailure.objects.values_list("reason", flat=True)),
    )
    assert (job(org).stored, job(org).duplicate, job(org).failed) == (0, 1, 0)
    assert (ledger(org), usage(org), objects(org)) == before
    assert_reconciled(org)


def test_cstore_then_stow_of_the_same_file_is_a_duplicate_in_a_batch_too(
    listener, org, dicom_ae, token_client
):
    assert cstore(listener, CT_SMALL).Status == 0x0000
    assert job(org).stored == 1
    before = (ledger(org), usage(org), objects(org))
    other = ct()  # a new image in the same request: stored beside the duplicate
    buffer = io.BytesIO()
    other.save_as(buffer, enforce_file_format=True)

    response = stow(token_client(org, ["dicom:write"]), [CT_SMALL.read_bytes(), buffer.getvalue()])

    assert response.status_code == 200, response.content
    body = response.json()
    assert FAILED not in body
    assert len(body[REFERENCED]["Value"]) == 2
    stow_job = IngestJob.objects.for_org(org).exclude(kind=IngestJob.Kind.CSTORE).get()
    assert (stow_job.stored, stow_job.duplicate, stow_job.failed) == (1, 1, 0)
    assert Instance.objects.for_org(org).count() == 2
    assert len(objects(org)) == len(before[2]) + 1
    assert ledger(org)[: len(before[0])] == before[0] and len(ledger(org)) == len(before[0]) + 1
    assert_reconciled(org)


def test_a_different_data_set_under_the_uid_is_refused_through_the_other_door(
    listener, org, dicom_ae
):
    assert ingest(org, CT_SMALL.read_bytes()).status == "stored"
    before = (ledger(org), usage(org), objects(org), Instance.objects.for_org(org).get().sha256)
    changed = pydicom.dcmread(CT_SMALL)
    changed.PatientName = "Other^Patient"  # same length and UIDs: only the data set differs

    status = cstore(listener, changed)

    assert status.Status == dimse.STATUS_DIFFERENT_OBJECT
    assert "different object" in status.ErrorComment
    after = (ledger(org), usage(org), objects(org), Instance.objects.for_org(org).get().sha256)
    assert after == before
    assert_reconciled(org)
    # And the other way round: C-STORE first, a changed data set through the pipeline.
    original = ct()
    assert cstore(listener, original).Status == 0x0000
    original.PatientName = "Other^Patient"
    buffer = io.BytesIO()
    original.save_as(buffer, enforce_file_format=True)
    result = ingest(org, buffer.getvalue())
    assert (result.status, result.reason_code) == ("failed", DUPLICATE_SOP_INSTANCE)
    assert "different object" in result.reason
    assert Instance.objects.for_org(org).count() == 2
    assert_reconciled(org)


def test_the_same_data_set_in_another_transfer_syntax_is_refused_with_its_reason(
    listener, org, dicom_ae
):
    assert ingest(org, CT_SMALL.read_bytes()).status == "stored"
    before = (ledger(org), objects(org))

    status = cstore(listener, pydicom.dcmread(CT_SMALL), syntaxes=[ImplicitVRLittleEndian])

    assert status.Status == dimse.STATUS_DIFFERENT_OBJECT
    assert status.ErrorComment.startswith("Different transfer syntax")
    failure = IngestFailure.objects.for_org(org).get()
    assert "stored Explicit VR Little Endian, sent Implicit VR Little Endian" in failure.reason
    assert (ledger(org), objects(org)) == before
    assert_reconciled(org)


def test_an_archived_object_is_refused_until_restored_then_compared(listener, org, dicom_ae):
    assert ingest(org, CT_SMALL.read_bytes()).status == "stored"
    instance = Instance.objects.for_org(org).get()
    store = store_for(instance.location)
    store.change_tier(key=instance.object_key, from_tier="hot", to_tier="archive")
    store.change_tier_finish(key=instance.object_key, from_tier="hot", to_tier="archive")
    Instance.objects.filter(pk=instance.pk).update(tier="archive")

    status = cstore(listener, CT_SMALL)

    assert status.Status == dimse.STATUS_DIFFERENT_OBJECT
    assert "archived" in status.ErrorComment and "until restored" in status.ErrorComment
    assert "until restored" in IngestFailure.objects.for_org(org).get().reason
    assert Instance.objects.for_org(org).get().object_key == instance.object_key
    # With a restored copy it can be read, and it is the same image.
    Instance.objects.filter(pk=instance.pk).update(
        restored_until=timezone.now() + dt.timedelta(days=1)
    )
    assert cstore(listener, CT_SMALL).Status == 0x0000
    assert Instance.objects.for_org(org).count() == 1


def test_a_store_that_cannot_be_read_refuses_with_its_error(listener, org, dicom_ae, monkeypatch):
    assert ingest(org, CT_SMALL.read_bytes()).status == "stored"
    real = FilesystemStore.iter_bytes

    def failing(self: FilesystemStore, **kwargs: Any) -> Any:
        if kwargs.get("key", "").startswith(f"org-{org.pk}/"):
            raise StorageUnavailable("HTTP 503 from the object store")
        return real(self, **kwargs)

    monkeypatch.setattr(FilesystemStore, "iter_bytes", failing)
    status = cstore(listener, CT_SMALL)
    assert status.Status == dimse.STATUS_DIFFERENT_OBJECT
    reason = IngestFailure.objects.for_org(org).get().reason
    assert "cannot be read to compare" in reason and "HTTP 503" in reason
    assert Instance.objects.for_org(org).count() == 1


def test_another_calling_ae_title_sending_the_same_image_is_a_duplicate(listener, org, dicom_ae):
    """Within the C-STORE door too: the File Meta names the sending AE title."""
    sent = ct()
    assert cstore(listener, sent, calling="CT-SCANNER-1").Status == 0x0000
    # The first object is indexed (wait_idle) but still remembered as accepted by the listener.
    assert cstore(listener, sent, calling="ROUTER-2").Status == 0x0000
    assert Instance.objects.for_org(org).count() == 1
    jobs = IngestJob.objects.for_org(org).order_by("pk")
    assert [(j.stored, j.duplicate, j.failed) for j in jobs] == [(1, 0, 0), (0, 1, 0)]
    assert_reconciled(org)


def _with_group_length(data: bytes, value: int) -> bytes:
    assert data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL"
    return data[:140] + struct.pack("<I", value) + data[144:]


CRAFTED = {"zero": lambda n: 0, "short": lambda n: n - 8, "long": lambda n: n + 8}
CRAFTED |= {"odd": lambda n: n + 7, "huge": lambda n: 0xFFFFFFF0}


@pytest.mark.parametrize("craft", CRAFTED)
def test_a_crafted_file_meta_group_length_is_never_taken_for_the_same_data_set(
    org, other_org, craft
):
    data = CT_SMALL.read_bytes()
    assert ingest(org, data).status == "stored"
    before = (ledger(org), objects(org))
    value = CRAFTED[craft](struct.unpack_from("<I", data, 140)[0])
    crafted = _with_group_length(data, value)
    result = ingest(org, crafted)  # the portal's door: the file as sent, its File Meta too
    assert result.status == "failed"
    assert result.reason_code in (DUPLICATE_SOP_INSTANCE, pipeline.CANNOT_UNDERSTAND)
    assert (ledger(org), objects(org)) == before
    assert_reconciled(org)
    # The other way round: the crafted file stored first (where the reader takes it), then the
    # true one is never found the same.
    if ingest(other_org, crafted).status == "stored":
        again = ingest(other_org, data)
        assert (again.status, again.reason_code) == ("failed", DUPLICATE_SOP_INSTANCE)
        assert Instance.objects.for_org(other_org).count() == 1


def test_the_file_meta_walk_refuses_hostile_headers():
    data = CT_SMALL.read_bytes()
    found = pipeline.file_meta_end(data[: pipeline.FILE_META_MAX])
    assert found is not None
    end, ts = found
    assert ts == ExplicitVRLittleEndian
    assert end == 144 + struct.unpack_from("<I", data, 140)[0]
    assert pipeline.file_meta_end(data[:end]) is None  # nothing after the File Meta
    assert pipeline.file_meta_end(b"\0" * 128 + b"DIXM" + data[132:]) is None
    for value in (0, 1, end, 0x7FFFFFFF, 0xFFFFFFFF):
        assert pipeline.file_meta_end(_with_group_length(data, value)) is None
    # An element whose length runs past what is read (or undefined) stops the walk.
    huge = data[:144] + b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\xff" + data[144:]
    assert pipeline.file_meta_end(huge) is None
    element = b"\x02\x00\x02\x00UI\x40\x00" + b"1" * 0x40
    assert pipeline.file_meta_end(data[:132] + element * 2000) is None  # past the limit
    assert pipeline.file_meta_end(b"") is None
    # Without a group length the group is walked, as pydicom reads it.
    assert pipeline.file_meta_end(data[:132] + data[144:]) == (end - 12, ts)


def test_the_comparison_streams_in_chunks(org, monkeypatch):
    """Both objects are read a chunk at a time (objects can be 1 GB+): nothing holds one whole."""
    data = CT_SMALL.read_bytes()
    assert ingest(org, data).status == "stored"
    instance = Instance.objects.for_org(org).select_related("location").get()
    read: list[int] = []
    real = FilesystemStore.iter_bytes

    def small_chunks(self: FilesystemStore, **kwargs: Any) -> Any:
        for chunk in real(self, **{**kwargs, "chunk_size": 1000}):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(FilesystemStore, "iter_bytes", small_chunks)
    ours = iter([data[i : i + 777] for i in range(0, len(data), 777)])
    assert pipeline._compare_with_stored(ours, len(data), instance) is None
    assert max(read) == 1000 and sum(read) == len(data)
    pixel = len(data) - 139  # the last byte of the pixel data, before the trailing padding
    changed = data[:pixel] + bytes([data[pixel] ^ 1]) + data[pixel + 1 :]
    ours = iter([changed[i : i + 777] for i in range(0, len(changed), 777)])
    assert pipeline._compare_with_stored(ours, len(data), instance) == pipeline.DIFFERENT_OBJECT


def test_only_a_whole_trailing_padding_element_may_be_missing(org):
    """CT_small.dcm ends with 138 bytes of Data Set Trailing Padding (FFFC,FFFC), which DCMTK
    leaves out when it sends the file."""
    data = CT_SMALL.read_bytes()
    assert data[-138:-134] == b"\xfc\xff\xfc\xff"
    assert ingest(org, data).status == "stored"
    instance = Instance.objects.for_org(org).select_related("location").get()
    for cut, same in [(138, True), (137, False), (139, False), (1, False), (0, True)]:
        sent = data[: len(data) - cut]
        assert (pipeline._compare_with_stored(iter([sent]), len(sent), instance) is None) == same
    # A padding element whose length does not end the data set is not one.
    lying = data[:-130] + struct.pack("<I", 1) + data[-126:]
    assert pipeline._compare_with_stored(iter([lying]), len(lying), instance) is not None


def with_own_file_meta(data: bytes, sending_ae: str) -> bytes:
    """The same data set behind another File Meta header, as another door writes it."""
    found = pipeline.file_meta_end(data)
    assert found is not None
    end, transfer_syntax = found
    original = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = original.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = original.MediaStorageSOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.SourceApplicationEntityTitle = sending_ae
    meta.SendingApplicationEntityTitle = sending_ae
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + data[end:]


def test_the_indexer_finds_a_duplicate_of_a_series_new_to_the_association(
    listener, org, dicom_ae, token_client
):
    """The listener looks a UID up only for series the index held when the association first
    sent one; the indexer decides the others, and compares the data sets too."""
    sent = ct()
    sibling = ct()
    sibling.StudyInstanceUID, sibling.SeriesInstanceUID = (
        sent.StudyInstanceUID,
        sent.SeriesInstanceUID,
    )
    assoc = associate(listener, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.send_c_store(sibling).Status == 0x0000  # the series is new to the index
    buffer = io.BytesIO()
    sent.save_as(buffer, enforce_file_format=True)
    assert ingest(org, buffer.getvalue()).status == "stored"  # meanwhile, through another door
    assert assoc.send_c_store(sent).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert (job(org).stored, job(org).duplicate, job(org).failed) == (1, 1, 0)
    assert not IngestFailure.objects.for_org(org).exists()
    assert Instance.objects.for_org(org).count() == 2
    assert_reconciled(org)


def test_a_concurrent_ingest_that_lost_the_race_compares_the_data_sets(org):
    """The loser of the index race compares its stored object with the winner's, then removes
    its own."""
    data = CT_SMALL.read_bytes()
    assert ingest(org, data).status == "stored"
    store = store_for(location_primary(org))
    header = read_header(CT_SMALL)
    for sent, outcome in [
        (with_own_file_meta(data, "ROUTER"), "duplicate"),
        (with_own_file_meta(data[:-1] + b"\x01", "ROUTER"), "failed"),
    ]:
        spooled = spool_file(store, io.BytesIO(sent))
        key = pipeline.object_key(org, header)
        store.put_file(key=key, path=spooled.path, tier="hot", sha256=spooled.sha256)
        result = pipeline._retry_as_duplicate(org, header, spooled, store, key)
        assert result.status == outcome
        store.delete(key=key, tier="hot")
    assert Instance.objects.for_org(org).count() == 1
    assert_reconciled(org)


def test_an_object_in_a_hospital_bucket_is_compared_through_s3(
    org, s3_bucket, make_bucket_location
):
    """The stored object is read back from the hospital's S3 bucket (moto's server over HTTP)."""
    location = make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    store = store_for(location)

    def send(data: bytes) -> pipeline.IngestResult:
        spooled = spool_file(store, io.BytesIO(data))
        return instance_ingest(org=org, spooled=spooled, location=location)

    data = CT_SMALL.read_bytes()
    assert send(data).status == "stored"
    before = (ledger(org), usage(org))
    assert send(with_own_file_meta(data, "ROUTER")).status == "duplicate"
    assert send(with_own_file_meta(data[:-139], "ROUTER")).status == "failed"  # cut
    assert (ledger(org), usage(org)) == before
    assert Instance.objects.for_org(org).count() == 1
    assert_reconciled(org)


def test_an_accepted_object_not_yet_indexed_is_compared_by_digest_only(
    listener, org, dicom_ae, monkeypatch
):
    """Kept as it was: until the listener's accepted object is indexed, another AE title's copy
    (another File Meta header) is refused; once it is indexed, the data sets are compared."""
    release = threading.Event()
    real = dimse_indexer.db_serial

    def held() -> Any:
        assert release.wait(30), "the test never released the indexer"
        return real()

    monkeypatch.setattr(dimse_indexer, "db_serial", held)
    sent = ct()
    contexts = [(CTImageStorage, [ExplicitVRLittleEndian])]
    first = associate(listener, calling="CT-SCANNER-1", contexts=contexts)
    assert first.send_c_store(sent).Status == 0x0000  # accepted, not indexed
    second = associate(listener, calling="ROUTER-2", contexts=contexts)
    assert second.send_c_store(sent).Status == dimse.STATUS_DIFFERENT_OBJECT
    release.set()
    first.release()
    assert listener.scp.wait_indexed(20)
    assert second.send_c_store(sent).Status == 0x0000  # indexed now: the same data set
    second.release()
    listener.wait_idle()
    assert Instance.objects.for_org(org).count() == 1
    jobs = IngestJob.objects.for_org(org).order_by("pk")
    assert [(j.stored, j.duplicate, j.failed) for j in jobs] == [(1, 0, 0), (0, 1, 1)]
