"""The shared C-STORE / C-ECHO listener, driven by pynetdicom's SCU over real TCP in-process.

The listener runs in threads with their own database connections, hence transactional tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import tempfile
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.conf import settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    BreastTomosynthesisImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association

from archive.ae_titles.services import ae_create
from archive.dimse import listener as dimse
from archive.dimse.listener import StrataSCP
from archive.locations.selectors import location_primary
from archive.models import ArchiveSettings, DicomAE, IngestFailure, IngestJob, Instance
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, write
from billing.models import UsageEvent
from tenants.context import Actor
from tenants.models import AuditEvent, Organization
from tests.archive.conftest import DIMSE_CALLED_AE

pytestmark = pytest.mark.django_db(transaction=True)

CALLED = DIMSE_CALLED_AE
OTHER_CALLED = "OTHER-CLINIC"
MODALITY = "CT-SCANNER-1"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
Verification = UID("1.2.840.10008.1.1")


@dataclass
class Listener:
    scp: StrataSCP
    host: str
    port: int
    receive_dir: Path

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until every association thread has ended and the indexer has indexed what they
        acknowledged and closed their jobs."""
        deadline = time.monotonic() + timeout
        while self.scp.associations:
            if time.monotonic() > deadline:
                raise AssertionError("associations still running")
            time.sleep(0.02)
        assert self.scp.wait_indexed(max(deadline - time.monotonic(), 1.0)), "still indexing"


@pytest.fixture
def listener(start_listener: Any) -> Listener:
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


def associate(
    listener: Listener,
    *,
    called: str = CALLED,
    calling: str = MODALITY,
    contexts: Sequence[tuple[str, Sequence[str]]] | None = None,
    timeout: float = 30,
) -> Association:
    scu = AE(ae_title=calling)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = timeout
    for sop_class, syntaxes in contexts or [
        (CTImageStorage, SYNTAXES),
        (MRImageStorage, SYNTAXES),
        (BreastTomosynthesisImageStorage, SYNTAXES),
        (Verification, SYNTAXES),
    ]:
        scu.add_requested_context(sop_class, syntaxes)
    return scu.associate(listener.host, listener.port, ae_title=called)


def ct(rows: int = 64, columns: int = 64, **kwargs: Any) -> Dataset:
    return make_instance(
        study_spec("CT"), series_uid=generate_uid(), rows=rows, columns=columns, **kwargs
    )


def stored_dataset(org: Organization, sop_instance_uid: str) -> Dataset:
    instance = Instance.objects.for_org(org).get(sop_instance_uid=sop_instance_uid)
    data = b"".join(store_for(instance.location).iter_bytes(key=instance.object_key, tier="hot"))
    return pydicom.dcmread(io.BytesIO(data))


def assert_same_dataset(stored: Dataset, sent: Dataset) -> None:
    assert [e.tag for e in stored] == [e.tag for e in sent]
    for element in sent:
        assert stored[element.tag].value == element.value, element.keyword


def send_one(listener: Listener, ds: Dataset, **kwargs: Any) -> Dataset:
    assoc = associate(listener, **kwargs)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    listener.wait_idle()
    return status


def test_c_echo_succeeds_and_creates_no_job(listener, dicom_ae):
    assoc = associate(listener)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert not IngestJob.objects.exists()


@pytest.mark.parametrize(
    ("modality", "size"),
    [
        ("CT", {"rows": 128, "columns": 128}),
        ("MR", {"rows": 96, "columns": 96}),
        ("MG", {"rows": 64, "columns": 48, "frames": 12}),
    ],
)
def test_c_store_indexes_and_stores_the_dataset_element_for_element(
    listener, org, dicom_ae, modality, size
):
    sent = make_instance(study_spec(modality), series_uid=generate_uid(), **size)
    status = send_one(listener, sent)
    assert status.Status == 0x0000
    instance = Instance.objects.for_org(org).get(sop_instance_uid=sent.SOPInstanceUID)
    assert instance.sop_class_uid == sent.SOPClassUID
    assert instance.transfer_syntax_uid == ExplicitVRLittleEndian
    stored = stored_dataset(org, sent.SOPInstanceUID)
    assert_same_dataset(stored, sent)
    assert stored.PixelData == sent.PixelData
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert stored.file_meta.SendingApplicationEntityTitle == MODALITY
    assert stored.file_meta.ReceivingApplicationEntityTitle == CALLED
    assert not list(listener.receive_dir.iterdir())  # pynetdicom's temporary file is gone


def test_implicit_vr_and_compressed_datasets_are_stored_as_received(listener, org, dicom_ae):
    implicit = ct()
    compressed = ct(rows=32, columns=32)
    compressed.compress(RLELossless)
    assoc = associate(
        listener,
        contexts=[(CTImageStorage, [ImplicitVRLittleEndian]), (MRImageStorage, [RLELossless])],
    )
    assert assoc.is_established
    assert assoc.send_c_store(implicit).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    # The sender's first choice wins when it offers several syntaxes.
    assoc = associate(listener, contexts=[(CTImageStorage, [RLELossless, ExplicitVRLittleEndian])])
    assert assoc.accepted_contexts[0].transfer_syntax == [RLELossless]
    assert assoc.send_c_store(compressed).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    stored = stored_dataset(org, implicit.SOPInstanceUID)
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert_same_dataset(stored, implicit)
    stored = stored_dataset(org, compressed.SOPInstanceUID)
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert stored.PixelData == compressed.PixelData  # the encapsulated fragments, unchanged


def test_duplicate_send_succeeds_and_keeps_one_instance(listener, org, dicom_ae):
    sent = ct()
    assoc = associate(listener)
    assert assoc.send_c_store(sent).Status == 0x0000
    assert assoc.send_c_store(sent).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert Instance.objects.for_org(org).count() == 1
    job = IngestJob.objects.for_org(org).get()
    assert (job.received, job.stored, job.duplicate, job.failed) == (2, 1, 1, 0)


def test_different_object_under_the_same_uid_fails_and_keeps_the_original(listener, org, dicom_ae):
    original = ct()
    assert send_one(listener, original).Status == 0x0000
    changed = pydicom.dcmread(io.BytesIO(_encoded(original)))
    changed.PatientName = "Changed^Name"
    status = send_one(listener, changed)
    assert status.Status == dimse.STATUS_DIFFERENT_OBJECT
    assert "different object" in status.ErrorComment
    assert stored_dataset(org, original.SOPInstanceUID).PatientName == original.PatientName
    failure = IngestFailure.objects.for_org(org).get()
    assert failure.reason_code == dimse.STATUS_DIFFERENT_OBJECT
    assert failure.sop_instance_uid == original.SOPInstanceUID


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_missing_uid_and_quota_are_refused_with_their_status(listener, org, dicom_ae):
    broken = ct()
    del broken.SeriesInstanceUID
    ArchiveSettings.objects.create(organization=org, storage_quota_bytes=1000)
    assoc = associate(listener)
    missing = assoc.send_c_store(broken)
    over_quota = assoc.send_c_store(ct())
    assoc.release()
    listener.wait_idle()
    assert missing.Status == dimse.STATUS_DATASET_MISMATCH
    assert "SeriesInstanceUID" in missing.ErrorComment
    assert over_quota.Status == dimse.STATUS_QUOTA_EXCEEDED
    assert not Instance.objects.exists()
    assert sorted(IngestFailure.objects.for_org(org).values_list("reason_code", flat=True)) == [
        dimse.STATUS_QUOTA_EXCEEDED,
        dimse.STATUS_DATASET_MISMATCH,
    ]


@pytest.mark.parametrize(
    ("called", "rules", "suspend", "diagnostic"),
    [
        ("NOBODY", {}, False, 0x07),  # called AE title not recognised
        (CALLED, {"allowed_calling_ae_titles": ["PACS-MAIN"]}, False, 0x03),  # calling AE
        (CALLED, {"allowed_networks": ["10.20.0.0/16"]}, False, 0x03),  # 127.0.0.1 is outside
        (CALLED, {}, True, 0x07),  # a suspended organization's title is not served
    ],
    ids=["unknown-called-ae", "calling-ae-not-allowed", "address-not-allowed", "org-suspended"],
)
def test_association_is_rejected_when_not_admitted(
    listener, org, called, rules, suspend, diagnostic
):
    ae_create(
        org=org,
        ae_title=CALLED,
        allowed_calling_ae_titles=rules.get("allowed_calling_ae_titles", []),
        allowed_networks=rules.get("allowed_networks", []),
        allow_any_caller=not rules,
        actor=Actor.system("tests"),
    )
    if suspend:
        Organization.objects.filter(pk=org.pk).update(status=Organization.Status.SUSPENDED)
    assoc = associate(listener, called=called)
    assert assoc.is_rejected and not assoc.is_established
    reject = assoc.acceptor.primitive
    assert reject is not None
    # rejected-permanent, by the service user, with the reason
    assert (reject.result, reject.result_source, reject.diagnostic) == (0x01, 0x01, diagnostic)
    listener.wait_idle()
    assert not IngestJob.objects.exists()


def test_allowed_calling_ae_and_network_are_admitted(listener, org):
    ae_create(
        org=org,
        ae_title=CALLED,
        allowed_calling_ae_titles=[MODALITY],
        allowed_networks=["127.0.0.0/8"],
        actor=Actor.system("tests"),
    )
    assoc = associate(listener)
    assert assoc.is_established
    assoc.release()


def test_accepted_sockets_have_tcp_nodelay(listener, dicom_ae):
    assoc = associate(listener)
    assert assoc.is_established
    (server_side,) = listener.scp.associations
    sock = server_side.dul.socket.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assoc.release()


def test_job_counts_metering_and_audit_per_association(listener, org, dicom_ae):
    sent = [ct() for _ in range(3)]
    assoc = associate(listener)
    statuses = [assoc.send_c_store(ds).Status for ds in [*sent, sent[0]]]
    assoc.release()
    listener.wait_idle()
    assert statuses == [0, 0, 0, 0]
    job = IngestJob.objects.for_org(org).get()
    assert job.kind == IngestJob.Kind.CSTORE and job.state == IngestJob.State.DONE
    assert (job.received, job.stored, job.duplicate, job.failed) == (4, 3, 1, 0)
    stored_sizes = sum(Instance.objects.for_org(org).values_list("size_bytes", flat=True))
    assert job.bytes_stored == stored_sizes
    assert job.bytes_received > stored_sizes
    assert job.started_at and job.finished_at and MODALITY in job.source
    compute = UsageEvent.objects.for_org(org).get(meter="compute.seconds")
    assert compute.quantity >= 1 and compute.idempotency_key.endswith(f":{job.pk}")
    audit = AuditEvent.objects.filter(organization=org, action="ingest.cstore").get()
    assert audit.target_id == str(job.pk) and audit.ip == "127.0.0.1"
    assert audit.details["stored"] == 3 and audit.details["calling_ae"] == MODALITY
    assert audit.details["outcome"] == "released"


def test_other_organizations_ae_title_stores_into_its_own_organization(
    listener, org, other_org, dicom_ae
):
    ae_create(
        org=other_org,
        ae_title=OTHER_CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    ours, theirs = ct(), ct()
    assert send_one(listener, ours).Status == 0x0000
    assert send_one(listener, theirs, called=OTHER_CALLED).Status == 0x0000
    assert send_one(listener, ours, called=OTHER_CALLED).Status == 0x0000  # same UID, new org
    assert set(Instance.objects.for_org(org).values_list("sop_instance_uid", flat=True)) == {
        ours.SOPInstanceUID
    }
    assert set(Instance.objects.for_org(other_org).values_list("sop_instance_uid", flat=True)) == {
        ours.SOPInstanceUID,
        theirs.SOPInstanceUID,
    }
    for instance in Instance.objects.all():
        assert instance.object_key.startswith(f"org-{instance.organization_id}/")
    assert IngestJob.objects.for_org(org).count() == 1
    assert IngestJob.objects.for_org(other_org).count() == 2


def write_large_instance(
    path: Path, *, frames: int, rows: int = 512, columns: int = 512
) -> Dataset:
    """A multi-frame CT written to disk frame by frame: the test never holds it in memory."""
    header = ct(rows=rows, columns=columns)
    del header.PixelData
    header.NumberOfFrames = frames
    write(header, path)
    frame = os.urandom(rows * columns * 2)
    with open(path, "ab") as out:
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * len(frame)).to_bytes(4, "little"))
        for _ in range(frames):
            out.write(frame)
    return header


def test_100_mb_dataset_is_received_to_disk_in_constant_memory(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    path = tmp_path / "large.dcm"
    header = write_large_instance(path, frames=200)  # 200 x 512 KiB = 100 MiB of pixel data
    size = path.stat().st_size
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the SCU streams too
    assoc = associate(listener, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established

    peaks: list[int] = []
    original_store = listener.scp._store

    def measured_store(session: Any, event: Any) -> Any:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        try:
            return original_store(session, event)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1] - start)

    monkeypatch.setattr(listener.scp, "_store", measured_store)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        status = assoc.send_c_store(path)
        overall = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assoc.release()
    listener.wait_idle()
    assert status.Status == 0x0000
    instance = Instance.objects.for_org(org).get(sop_instance_uid=header.SOPInstanceUID)
    assert instance.size_bytes > size - 1024  # the whole object, with Strata's file meta
    # The handler (spool, hash, parse, store, index) and the whole transfer (SCU send, PDU
    # receive, handler) stay far below the data set's size.
    print(f"handler peak {peaks[0]:,} B, transfer peak {overall:,} B for {size:,} B")
    assert peaks and peaks[0] < size // 20, peaks
    assert overall < size // 10, overall
    stored_path = Path(settings.ARCHIVE_ROOT) / "hot" / instance.object_key
    assert dataset_digest(stored_path) == dataset_digest(path)  # byte for byte, pixels included
    assert pydicom.dcmread(stored_path, stop_before_pixels=True).NumberOfFrames == 200


def dataset_digest(path: Path) -> str:
    """SHA-256 of the data set after the File Meta group, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(dimse._dataset_offset(handle))
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# The SCU's own socket thread complains about the send cut short by its abort: not our side.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_aborted_transfer_leaves_no_temporary_file_and_fails_the_job(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    path = tmp_path / "large.dcm"
    write_large_instance(path, frames=400)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = associate(listener, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])], timeout=3)
    assert assoc.send_c_store(ct(rows=512, columns=512)).Status == 0x0000

    sender = threading.Thread(target=_send_ignoring_errors, args=(assoc, path), daemon=True)
    sender.start()
    spool = store_for(location_primary(org)).spool_dir()

    def receiving() -> list[Path]:  # data sets are received straight into the spool folder
        return [*listener.receive_dir.iterdir(), *spool.glob("cstore/*/*")]

    _wait_for(lambda: any(p.stat().st_size > 8_000_000 for p in receiving()))
    assoc.abort()
    sender.join(timeout=30)
    listener.wait_idle()
    assert not receiving()
    job = IngestJob.objects.for_org(org).get()
    assert job.state == IngestJob.State.FAILED and "aborted" in job.error
    assert (job.received, job.stored) == (1, 1)
    assert AuditEvent.objects.get(action="ingest.cstore").details["outcome"] == "aborted"


def _send_ignoring_errors(assoc: Association, path: Path) -> None:
    with contextlib.suppress(Exception):  # the abort cuts the send short
        assoc.send_c_store(path)


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_a_pdu_longer_than_the_announced_maximum_is_refused_unread(listener, caplog):
    with socket.create_connection((listener.host, listener.port), timeout=5) as raw:
        # An A-ASSOCIATE-RQ header claiming 200 MB: refused before a byte of it is buffered.
        raw.sendall(b"\x01\x00" + (200_000_000).to_bytes(4, "big") + b"\x00" * 1024)
        _wait_for(lambda: "refusing a 200000000 byte PDU" in caplog.text, timeout=10)


def test_run_scp_serves_until_sigterm_and_clears_stale_receive_files(
    dicom_ae, monkeypatch, tmp_path, settings
):
    """The management command: listens, answers, and returns cleanly on SIGTERM."""
    import logging
    import re
    import signal

    from django.core.management import call_command

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    pynetdicom_logger = logging.getLogger("pynetdicom")
    monkeypatch.setattr(pynetdicom_logger, "level", pynetdicom_logger.level)
    settings.DICOM_SCP_RECEIVE_DIR = tmp_path / "receive"
    settings.DICOM_SCP_RECEIVE_DIR.mkdir()
    stale = settings.DICOM_SCP_RECEIVE_DIR / "tmpstale.dcm"  # a killed listener's partial file
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = settings.DICOM_SCP_RECEIVE_DIR / "tmpfresh.dcm"  # another listener's, still receiving
    fresh.write_bytes(b"receiving")
    out = io.StringIO()
    echoes: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def client() -> None:
        _wait_for(lambda: "DICOM listener on" in out.getvalue(), timeout=20)
        match = re.search(r":(\d+) ", out.getvalue())
        assert match is not None
        port = int(match.group(1))
        scu = AE(ae_title=MODALITY)
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title=CALLED)
        echoes.append(assoc.send_c_echo().Status)
        assoc.release()
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    call_command("run_scp", "--host", "127.0.0.1", "--port", "0", "--grace", "5", stdout=out)
    thread.join(timeout=10)
    assert echoes == [0x0000]
    assert tempfile.tempdir == str(tmp_path / "receive")  # received data sets land on disk
    assert not stale.exists() and fresh.exists()
    assert signal.getsignal(signal.SIGTERM) == previous


# --- who may call: restrictions or the explicit "any caller" choice ---------------------------


def test_an_ae_title_without_restriction_or_choice_admits_nobody(listener, org):
    # Written around the services (which refuse it): the listener still keeps it closed.
    DicomAE.objects.create(organization=org, ae_title=CALLED)
    assoc = associate(listener)
    assert assoc.is_rejected and not assoc.is_established
    reject = assoc.acceptor.primitive
    assert (reject.result, reject.result_source, reject.diagnostic) == (0x01, 0x01, 0x03)
    listener.wait_idle()
    assert not IngestJob.objects.exists()


def test_the_any_caller_choice_admits_any_calling_ae_title(listener, org):
    ae_create(
        org=org,
        ae_title=CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    for calling in ("ANY-SCU", "unknown_ws"):
        assoc = associate(listener, calling=calling)
        assert assoc.is_established, calling
        assoc.release()


def test_the_called_ae_title_is_matched_exactly(listener, org, dicom_ae):
    # Unique regardless of case, matched as DICOM compares AE titles: a title in another case
    # is unknown, never routed to a hospital.
    assoc = associate(listener, called=CALLED.lower())
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x07


# --- C-STORE statuses for data sets that are not what they claim ------------------------------


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set's bytes (no File Meta) in ``transfer_syntax``."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    buffer.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = deflate.compress(data) + deflate.flush()
    return data


def part10(
    path: Path, payload: bytes, transfer_syntax: str, *, sop_class: str, sop_instance: str
) -> Path:
    """A Part 10 file whose File Meta (what pynetdicom's SCU puts in the C-STORE request as
    Affected SOP Class / Instance UID) says what the test wants, followed by ``payload``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.write_bytes(head.getvalue() + payload)
    return path


def send_file(listener: Listener, path: Path, contexts: list[tuple[str, list[str]]]) -> Dataset:
    assoc = associate(listener, contexts=contexts)
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    listener.wait_idle()
    return status


ALL_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]
GARBAGE = {
    "random": os.urandom(4096),
    "text": b"This is a text file, not an image.\n" * 40,
    "zeros": b"\0" * 512,
    "png": b"\x89PNG\r\n\x1a\n" + os.urandom(1000),
}


@pytest.mark.parametrize("transfer_syntax", ALL_SYNTAXES, ids=lambda ts: UID(ts).keyword)
@pytest.mark.parametrize("garbage", GARBAGE, ids=str)
def test_garbage_over_c_store_is_refused_as_not_a_dicom_data_set(
    listener, org, dicom_ae, tmp_path, monkeypatch, transfer_syntax, garbage
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # sent as the bytes are
    path = part10(
        tmp_path / "garbage.dcm",
        GARBAGE[garbage],
        transfer_syntax,
        sop_class=CTImageStorage,
        sop_instance=generate_uid(),
    )
    status = send_file(listener, path, [(CTImageStorage, [transfer_syntax])])
    assert status.Status == dimse.STATUS_CANNOT_UNDERSTAND == 0xC000
    assert status.ErrorComment.startswith("Not a DICOM data set"), status.ErrorComment
    failure = IngestFailure.objects.for_org(org).get()
    assert failure.reason_code == 0xC000 and failure.reason.startswith("Not a DICOM data set")
    assert not Instance.objects.exists()


@pytest.mark.parametrize("transfer_syntax", ALL_SYNTAXES, ids=lambda ts: UID(ts).keyword)
def test_a_truncated_dicom_data_set_is_not_called_not_dicom(
    listener, org, dicom_ae, tmp_path, monkeypatch, transfer_syntax
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = ct(rows=128, columns=128)
    payload = encode(ds, transfer_syntax)[:-4000]  # cut in the pixel data
    path = part10(
        tmp_path / "truncated.dcm",
        payload,
        transfer_syntax,
        sop_class=ds.SOPClassUID,
        sop_instance=ds.SOPInstanceUID,
    )
    status = send_file(listener, path, [(CTImageStorage, [transfer_syntax])])
    assert status.Status in (0xA900, 0xC000)
    assert not status.ErrorComment.startswith("Not a DICOM"), status.ErrorComment
    assert not Instance.objects.exists()


def test_a_data_set_missing_uids_keeps_0xa900_in_every_transfer_syntax(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    for transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        ds = ct()
        uid = ds.SOPInstanceUID
        del ds.StudyInstanceUID
        path = part10(
            tmp_path / "no-study.dcm",
            encode(ds, transfer_syntax),
            transfer_syntax,
            sop_class=ds.SOPClassUID,
            sop_instance=uid,
        )
        status = send_file(listener, path, [(CTImageStorage, [transfer_syntax])])
        assert status.Status == 0xA900, transfer_syntax
        assert "StudyInstanceUID" in status.ErrorComment


def test_a_data_set_with_another_sop_instance_uid_than_requested_is_refused(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = ct(sop_instance_uid="1.2.3.5")
    path = part10(
        tmp_path / "other.dcm",
        encode(ds, ExplicitVRLittleEndian),
        ExplicitVRLittleEndian,
        sop_class=CTImageStorage,
        sop_instance="1.2.3.4",
    )
    status = send_file(listener, path, [(CTImageStorage, [ExplicitVRLittleEndian])])
    assert status.Status == dimse.STATUS_DATASET_MISMATCH == 0xA900
    assert status.ErrorComment == "SOPInstanceUID data set 1.2.3.5, request 1.2.3.4"
    assert status.OffendingElement == 0x00080018
    assert not Instance.objects.exists()
    failure = IngestFailure.objects.for_org(org).get()
    assert failure.reason_code == 0xA900 and failure.sop_instance_uid == "1.2.3.4"
    assert "1.2.3.5" in failure.reason and "AffectedSOPInstanceUID 1.2.3.4" in failure.reason


def test_long_mismatching_uids_are_both_named_within_64_characters(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds, requested = ct(), generate_uid()
    path = part10(
        tmp_path / "other.dcm",
        encode(ds, ExplicitVRLittleEndian),
        ExplicitVRLittleEndian,
        sop_class=CTImageStorage,
        sop_instance=requested,
    )
    status = send_file(listener, path, [(CTImageStorage, [ExplicitVRLittleEndian])])
    assert status.Status == 0xA900
    comment = status.ErrorComment
    assert len(comment) <= 64
    assert comment.startswith("SOPInstanceUID data set ..")
    assert ds.SOPInstanceUID[-10:] in comment and requested[-10:] in comment
    reason = IngestFailure.objects.for_org(org).get().reason
    assert ds.SOPInstanceUID in reason and requested in reason  # in full for the portal / API


def test_a_data_set_of_another_sop_class_than_requested_is_refused(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = ct()  # a CT image announced as an MR image
    path = part10(
        tmp_path / "mr.dcm",
        encode(ds, ExplicitVRLittleEndian),
        ExplicitVRLittleEndian,
        sop_class=MRImageStorage,
        sop_instance=ds.SOPInstanceUID,
    )
    status = send_file(listener, path, [(MRImageStorage, [ExplicitVRLittleEndian])])
    assert status.Status == 0xA900
    assert status.ErrorComment == "SOPClassUID data set ..5.1.4.1.1.2, request ..5.1.4.1.1.4"
    assert status.OffendingElement == 0x00080016
    reason = IngestFailure.objects.for_org(org).get().reason
    assert CTImageStorage in reason and MRImageStorage in reason
    assert not Instance.objects.exists()


def test_a_refused_mismatch_leaves_the_quota_and_the_uid_for_the_right_object(
    listener, org, dicom_ae, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = ct()
    payload = encode(ds, ExplicitVRLittleEndian)
    # Room for one object: the refused one must not have used it up.
    ArchiveSettings.objects.create(organization=org, storage_quota_bytes=len(payload) * 3 // 2)
    wrong = part10(
        tmp_path / "wrong.dcm",
        payload,
        ExplicitVRLittleEndian,
        sop_class=CTImageStorage,
        sop_instance=generate_uid(),
    )
    right = part10(
        tmp_path / "right.dcm",
        payload,
        ExplicitVRLittleEndian,
        sop_class=CTImageStorage,
        sop_instance=ds.SOPInstanceUID,
    )
    assoc = associate(listener, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.send_c_store(wrong).Status == 0xA900
    assert assoc.send_c_store(right).Status == 0x0000
    assoc.release()
    listener.wait_idle()
    assert Instance.objects.for_org(org).get().sop_instance_uid == ds.SOPInstanceUID


def test_each_association_negotiates_on_its_own_copy_of_the_supported_contexts(listener, dicom_ae):
    """The listener copies its supported contexts per association one level deep (a deep copy
    cost ~80 ms per association): what negotiation changes on one association's contexts never
    reaches the listener's own or another association's."""
    from pydicom.uid import JPEG2000Lossless
    from pynetdicom import build_context

    from archive.dimse.listener import _context_copy

    original = build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    original.scp_role = True
    copied = _context_copy(original)
    copied.transfer_syntax.append(JPEG2000Lossless)
    copied.context_id = 3
    copied.scp_role = False
    assert original.transfer_syntax == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert original.context_id is None and original.scp_role is True

    # Two associations in a row negotiate the same contexts with the same results.
    for _ in range(2):
        assoc = associate(listener, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [ExplicitVRLittleEndian]
        assoc.release()
    assert all(cx.context_id is None for cx in listener.scp.server.contexts)
