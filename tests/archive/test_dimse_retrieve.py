"""C-MOVE and C-GET through the shared listener: pynetdicom as SCU and as the move destination,
dcmtk's movescu, getscu and storescp; what is sent, in which transfer syntax, what is answered,
what is recorded. The listener runs in threads with their own database connections, hence
transactional tests."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset

from archive.ae_titles.services import ae_create
from archive.dimse import retrieve, sender
from archive.ingest import pipeline
from archive.models import AccessEvent, DicomDestination, Instance, RestoreRequest
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import UsageEvent
from tenants import netguard
from tenants.context import Actor
from tenants.models import AuditEvent, Organization
from tests.archive.test_dimse import CALLED, MODALITY, Listener, write_large_instance
from tests.conftest import require_service

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db(transaction=True)

DESTINATION = "WS-1"
# The Query/Retrieve information models (PS3.4 C.6).
PatientRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.1.2")
PatientRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.1.3")
MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")  # Study Root - MOVE
GET = UID("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root - GET
ALL_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    UID("1.2.840.10008.1.2.4.91"),  # JPEG 2000
    UID("1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    UID("1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
]
STORAGE = [CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage]


@pytest.fixture
def listener(start_listener: Any) -> Listener:
    """The listener as ``tests/archive/test_dimse.py`` starts it."""
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


@pytest.fixture(autouse=True)
def _private_destinations(settings):
    """The destinations of these tests listen on 127.0.0.1."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True


@pytest.fixture(autouse=True)
def _every_pending_response(monkeypatch):
    """A pending response after every sub-operation, so that tests can count them."""
    monkeypatch.setattr(retrieve, "PENDING_INTERVAL", 0.0)


# --- storing ----------------------------------------------------------------------------------


def ingest(org: Organization, data: bytes) -> Instance:
    store = store_for(pipeline.location_primary(org))
    result = pipeline.instance_ingest(org=org, spooled=pipeline.spool_file(store, io.BytesIO(data)))
    assert result.status == "stored", result.reason
    return Instance.objects.for_org(org).get(sop_instance_uid=result.sop_instance_uid)


@dataclass
class Study:
    uid: str
    patient_id: str
    series_uids: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    @property
    def sop_uids(self) -> list[str]:
        return [i.sop_instance_uid for i in self.instances]


def store_study(
    org: Organization, *, n: int = 3, series: int = 1, patient_id: str = "PAT-1", rows: int = 32
) -> Study:
    spec = study_spec("CT")
    spec.patient_id = patient_id
    study = Study(uid=spec.study_uid, patient_id=patient_id)
    for number in range(1, series + 1):
        series_uid = generate_uid()
        study.series_uids.append(series_uid)
        for position in range(n):
            ds = make_instance(
                spec,
                series_uid=series_uid,
                series_number=number,
                instance_number=position + 1,
                rows=rows,
                columns=rows,
                seed=position,
            )
            study.instances.append(ingest(org, to_bytes(ds)))
    return study


def compressed(name: str, study: Study, series_uid: str) -> bytes:
    """One of pydicom's compressed test files as an instance of ``study`` (new UIDs: several
    files are the same image under the same UIDs), its pixel data untouched."""
    ds = pydicom.dcmread(str(get_testdata_file(name)))
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = study.patient_id
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def add_compressed(org: Organization, study: Study, names: Sequence[str]) -> list[Instance]:
    series_uid = generate_uid()
    study.series_uids.append(series_uid)
    added = [ingest(org, compressed(name, study, series_uid)) for name in names]
    study.instances.extend(added)
    return added


def stored_dataset(instance: Instance) -> bytes:
    """The stored object's data set bytes (after its File Meta)."""
    data = b"".join(
        store_for(instance.location).iter_bytes(key=instance.object_key, tier=instance.tier)
    )
    start = sender._meta_end(data)
    assert start is not None
    return data[start[0] :]


def dataset_of_file(path: Path) -> tuple[bytes, str]:
    meta, offset = split_dataset(path)
    return path.read_bytes()[offset:], str(meta.TransferSyntaxUID)


def file_digest(path: Path, offset: int | None = None) -> str:
    """SHA-256 of a Part 10 file's data set, read in chunks."""
    if offset is None:
        offset = split_dataset(path)[1]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- the move destination -------------------------------------------------------------------------


@dataclass
class Received:
    dataset: bytes  # empty when only the digest was kept
    transfer_syntax: str
    calling_ae: str
    move_originator: str
    digest: str = ""


class Receiver:
    """A pynetdicom storage SCP in this process: the C-MOVE destination."""

    def __init__(
        self,
        *,
        ae_title: str = DESTINATION,
        syntaxes: Sequence[str] = tuple(ALL_SYNTAXES),
        require_calling: str | None = None,
        abort_after: int | None = None,
        delay: float = 0.0,
        status: int = 0x0000,
        digest_only: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.ae = AE(ae_title=ae_title)
        self.ae.network_timeout = self.ae.dimse_timeout = self.ae.acse_timeout = 30
        for sop_class in STORAGE:
            self.ae.add_supported_context(sop_class, list(syntaxes))
        if require_calling is not None:
            self.ae.require_calling_aet = [require_calling]
        self.abort_after = abort_after
        self.delay = delay
        self.status = status
        self.digest_only = digest_only
        self.received: dict[str, Received] = {}
        self.lock = threading.Lock()
        server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=ssl_context,
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> int:
        with self.lock:
            if self.abort_after is not None and len(self.received) >= self.abort_after:
                event.assoc.abort()
                return 0xA700
        time.sleep(self.delay)
        request = event.request
        digest = ""
        if self.digest_only:
            data, digest = b"", file_digest(Path(event.dataset_path))
        elif getattr(request, "_dataset_path", None) is not None:
            data, _ = dataset_of_file(Path(event.dataset_path))
        else:
            data = request.DataSet.getvalue()
        with self.lock:
            self.received[str(request.AffectedSOPInstanceUID)] = Received(
                dataset=data,
                transfer_syntax=str(event.context.transfer_syntax),
                calling_ae=event.assoc.requestor.ae_title,
                move_originator=str(request.MoveOriginatorApplicationEntityTitle or ""),
                digest=digest,
            )
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


@pytest.fixture
def destination(org, receivers):
    """A running destination registered as the organization's WS-1; call it for others."""

    def make(ae_title: str = DESTINATION, **options: Any) -> Receiver:
        receiver = Receiver(ae_title=ae_title, **options)
        receivers.append(receiver)
        DicomDestination.objects.update_or_create(
            organization=org,
            ae_title=ae_title,
            defaults={"host": "127.0.0.1", "port": receiver.port, "tls": False},
        )
        return receiver

    return make


# --- the SCU side ---------------------------------------------------------------------------------


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class Response:
    """A C-MOVE / C-GET response: its status data set (attributes read through) and
    identifier."""

    def __init__(self, status: Dataset, identifier: Dataset | None):
        self.status = status
        self.identifier = identifier

    def __getattr__(self, name: str) -> Any:
        return getattr(self.status, name)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.status.get(keyword, default)


def without_level(**keys: Any) -> Dataset:
    ds = identifier("STUDY", **keys)
    del ds.QueryRetrieveLevel
    return ds


def move(
    scp: Listener,
    query: Dataset,
    *,
    destination: str = DESTINATION,
    model: str = MOVE,
    calling: str = MODALITY,
) -> list[Response]:
    """The C-MOVE's responses."""
    scu = AE(ae_title=calling)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = scu.associate(scp.host, scp.port, ae_title=CALLED)
    assert assoc.is_established
    responses = []
    for status, found in assoc.send_c_move(query, destination, model):
        responses.append(Response(status, found))
    assoc.release()
    scp.wait_idle()
    return responses


def get(
    scp: Listener,
    query: Dataset,
    *,
    model: str = GET,
    syntaxes: Sequence[str] = tuple(ALL_SYNTAXES),
    storage: Sequence[str] = tuple(STORAGE),
) -> tuple[list[Response], dict[str, Received]]:
    """The C-GET's responses and what arrived on the association."""
    received: dict[str, Received] = {}

    def on_store(event: Any) -> int:
        request = event.request
        if getattr(request, "_dataset_path", None) is not None:
            data, _ = dataset_of_file(Path(event.dataset_path))
        else:
            data = request.DataSet.getvalue()
        received[str(request.AffectedSOPInstanceUID)] = Received(
            data, str(event.context.transfer_syntax), CALLED, ""
        )
        return 0x0000

    scu = AE(ae_title=MODALITY)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(model, [ExplicitVRLittleEndian])
    for sop_class in storage:
        for syntax in syntaxes:  # one context per syntax: the archive picks per instance
            scu.add_requested_context(sop_class, [syntax])
    roles: list[Any] = [build_role(sop_class, scp_role=True) for sop_class in storage]
    assoc = scu.associate(
        scp.host,
        scp.port,
        ae_title=CALLED,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    responses = []
    for status, found in assoc.send_c_get(query, model):
        responses.append(Response(status, found))
    assoc.release()
    scp.wait_idle()
    return responses, received


def counts(status: Response | Dataset) -> tuple[int, int, int, int | None]:
    """(completed, failed, warning, remaining) of a response."""
    return (
        status.NumberOfCompletedSuboperations,
        status.NumberOfFailedSuboperations,
        status.NumberOfWarningSuboperations,
        status.get("NumberOfRemainingSuboperations"),
    )


def failed_list(response: Response) -> list[str]:
    found = response.identifier
    if found is None or "FailedSOPInstanceUIDList" not in found:
        return []
    value = found.FailedSOPInstanceUIDList
    return [value] if isinstance(value, str) else list(value)


# --- C-MOVE ---------------------------------------------------------------------------------------


def test_c_move_sends_the_study_as_stored_with_pending_counts(listener, org, dicom_ae, destination):
    study = store_study(org, n=4)
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xFF00] * 4 + [0x0000]
    assert [counts(r) for r in responses[:-1]] == [
        (1, 0, 0, 3),
        (2, 0, 0, 2),
        (3, 0, 0, 1),
        (4, 0, 0, 0),
    ]
    assert counts(responses[-1])[:3] == (4, 0, 0)
    assert set(receiver.received) == set(study.sop_uids)
    for instance in study.instances:
        got = receiver.received[instance.sop_instance_uid]
        assert got.dataset == stored_dataset(instance)  # byte for byte
        assert got.transfer_syntax == ExplicitVRLittleEndian
        # Strata calls the destination with the AE title the caller called.
        assert (got.calling_ae, got.move_originator) == (CALLED, MODALITY)
    assert not list(sender_spool_folders(org))


def test_a_filesystem_store_is_read_in_place_and_its_objects_stay(
    listener, org, dicom_ae, destination, monkeypatch
):
    """No copy of a filesystem store's object is made to send it, and sending never removes or
    changes the stored object, however often it is sent."""
    study = store_study(org, n=3)
    before = {i.sop_instance_uid: stored_dataset(i) for i in study.instances}
    receiver = destination()

    def no_copy(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the stored object was copied to be sent")

    monkeypatch.setattr(store_for(study.instances[0].location).__class__, "iter_bytes", no_copy)
    for _ in range(2):
        responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))
        assert responses[-1].Status == 0x0000
    monkeypatch.undo()

    assert {uid: got.dataset for uid, got in receiver.received.items()} == before
    assert {i.sop_instance_uid: stored_dataset(i) for i in study.instances} == before
    assert not list(sender_spool_folders(org))


def test_a_stored_object_whose_size_differs_from_the_index_is_not_sent(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=2)
    bad = study.instances[0]
    path = Path(store_for(bad.location).root) / bad.tier / bad.object_key
    path.write_bytes(path.read_bytes()[:-10])  # damaged on disk after it was verified
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0xB000
    assert counts(responses[-1])[:3] == (1, 1, 0)
    assert failed_list(responses[-1]) == [bad.sop_instance_uid]
    assert "size differs" in responses[-1].ErrorComment
    assert set(receiver.received) == {study.instances[1].sop_instance_uid}


def test_pending_responses_are_spaced_out(listener, org, dicom_ae, destination, monkeypatch):
    monkeypatch.setattr(retrieve, "PENDING_INTERVAL", 60.0)
    study = store_study(org, n=5)
    destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    # The first and the last sub-operation's, then the final response.
    assert [r.Status for r in responses] == [0xFF00, 0xFF00, 0x0000]
    assert [counts(r) for r in responses[:2]] == [(1, 0, 0, 4), (5, 0, 0, 0)]


def sender_spool_folders(org: Organization) -> list[Path]:
    root = store_for(pipeline.location_primary(org)).spool_dir() / sender.SPOOL_DIRNAME
    return list(root.iterdir()) if root.exists() else []


def test_c_move_streams_from_an_s3_bucket_location(
    listener, org, dicom_ae, destination, s3_bucket, make_bucket_location
):
    location = make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    study = store_study(org, n=3)
    assert {i.location_id for i in study.instances} == {location.pk}
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0x0000
    for instance in study.instances:
        assert receiver.received[instance.sop_instance_uid].dataset == stored_dataset(instance)


def test_c_move_records_access_egress_and_one_audit_event(listener, org, dicom_ae, destination):
    study = store_study(org, n=2)
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0x0000
    sent = sum(len(r.dataset) for r in receiver.received.values())
    access = AccessEvent.objects.for_org(org).get()
    assert (access.kind, access.bytes, access.instances) == ("retrieve", sent, 2)
    assert access.study.study_uid == study.uid
    assert f"C-MOVE to {DESTINATION}@127.0.0.1:{receiver.port}" in access.actor_label
    egress = UsageEvent.objects.for_org(org).get(meter="egress.bytes")
    assert egress.quantity == sent
    audit = AuditEvent.objects.get(action="dimse.move")
    assert audit.details["destination"]["ae_title"] == DESTINATION
    assert (audit.details["matched"], audit.details["completed"], audit.details["failed"]) == (
        2,
        2,
        0,
    )
    assert audit.details["bytes"] == sent
    assert audit.details["calling_ae"] == MODALITY and audit.details["status"] == "0x0000"
    assert audit.actor_label == f"dicom:{MODALITY}"


def test_series_image_and_patient_levels_send_what_they_name(listener, org, dicom_ae, destination):
    study = store_study(org, n=2, series=2, patient_id="PAT-LEVELS")
    other = store_study(org, n=1, patient_id="PAT-LEVELS")
    store_study(org, n=1, patient_id="PAT-ELSE")
    receiver = destination()

    move(
        listener,
        identifier("SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=study.series_uids[1]),
    )
    assert set(receiver.received) == set(study.sop_uids[2:])

    receiver.received.clear()
    wanted = [study.sop_uids[0], study.sop_uids[1]]
    responses = move(
        listener,
        identifier(
            "IMAGE",
            StudyInstanceUID=study.uid,
            SeriesInstanceUID=study.series_uids[0],
            SOPInstanceUID=wanted,
        ),
    )
    assert responses[-1].Status == 0x0000
    assert set(receiver.received) == set(wanted)

    receiver.received.clear()
    responses = move(
        listener,
        identifier("PATIENT", PatientID="PAT-LEVELS"),
        model=PatientRootQueryRetrieveInformationModelMove,
    )
    assert responses[-1].Status == 0x0000
    assert set(receiver.received) == set(study.sop_uids + other.sop_uids)

    receiver.received.clear()
    responses = move(
        listener,
        identifier("STUDY", PatientID="PAT-LEVELS", StudyInstanceUID=[study.uid, other.uid]),
        model=PatientRootQueryRetrieveInformationModelMove,
    )
    assert responses[-1].Status == 0x0000
    assert set(receiver.received) == set(study.sop_uids + other.sop_uids)


def test_named_uids_that_are_not_found_make_a_warning(listener, org, dicom_ae, destination):
    study = store_study(org, n=2)
    receiver = destination()
    absent = generate_uid()

    responses = move(
        listener,
        identifier(
            "IMAGE",
            StudyInstanceUID=study.uid,
            SeriesInstanceUID=study.series_uids[0],
            SOPInstanceUID=[study.sop_uids[0], absent],
        ),
    )

    final = responses[-1]
    assert final.Status == 0xB000
    assert counts(final)[:3] == (1, 0, 0)
    assert "not found: instance" in final.ErrorComment
    assert set(receiver.received) == {study.sop_uids[0]}


COMPRESSED = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


def test_compressed_instances_are_sent_as_stored_when_accepted(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=1)
    added = add_compressed(org, study, COMPRESSED)
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0x0000
    for instance in added:
        got = receiver.received[instance.sop_instance_uid]
        assert got.transfer_syntax == instance.transfer_syntax_uid
        assert got.dataset == stored_dataset(instance)


def decoded_pixels(dataset: bytes, transfer_syntax: str) -> bytes:
    ds = _read_dataset(dataset, transfer_syntax)
    if UID(transfer_syntax).is_compressed:
        ds.decompress(generate_instance_uid=False)
    return bytes(ds.PixelData)


def _read_dataset(dataset: bytes, transfer_syntax: str) -> Dataset:
    syntax = UID(transfer_syntax)
    ds = pydicom.filereader.read_dataset(
        io.BytesIO(dataset), is_implicit_VR=syntax.is_implicit_VR, is_little_endian=True
    )
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def test_a_destination_accepting_only_explicit_little_endian_gets_decoded_instances(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=1)
    added = add_compressed(org, study, COMPRESSED)
    receiver = destination(syntaxes=[ExplicitVRLittleEndian])

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0x0000, responses[-1]
    assert set(receiver.received) == set(study.sop_uids)
    for instance in added:
        got = receiver.received[instance.sop_instance_uid]
        assert got.transfer_syntax == ExplicitVRLittleEndian
        original = stored_dataset(instance)
        assert decoded_pixels(got.dataset, got.transfer_syntax) == decoded_pixels(
            original, instance.transfer_syntax_uid
        )
        received = _read_dataset(got.dataset, got.transfer_syntax)
        assert received.SOPInstanceUID == instance.sop_instance_uid  # the same instance
    # The uncompressed CT went as stored.
    ct_instance = study.instances[0]
    assert receiver.received[ct_instance.sop_instance_uid].dataset == stored_dataset(ct_instance)


def undecodable(study: Study) -> bytes:
    """An instance whose JPEG 2000 pixel data is garbage: it cannot be decoded."""
    ds = make_instance(study_spec("CT"), series_uid=generate_uid(), rows=16, columns=16)
    ds.StudyInstanceUID = study.uid
    ds.PatientID = study.patient_id
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_an_instance_that_cannot_be_decoded_is_refused_and_listed(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=2)
    broken = ingest(org, undecodable(study))
    receiver = destination(syntaxes=[ExplicitVRLittleEndian])

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    final = responses[-1]
    assert final.Status == 0xB000
    assert counts(final)[:3] == (2, 1, 0)
    assert failed_list(final) == [broken.sop_instance_uid]
    assert "Cannot be decoded from JPEG 2000" in final.ErrorComment
    assert set(receiver.received) == set(study.sop_uids)


def test_a_destination_accepting_no_proposed_syntax_fails_every_instance(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=2)
    receiver = destination(syntaxes=[JPEGBaseline8Bit])

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    final = responses[-1]
    assert final.Status == 0xA702
    assert counts(final)[:3] == (0, 2, 0)
    assert sorted(failed_list(final)) == sorted(study.sop_uids)
    # The wording is the destination check's (archive.ae_titles.services).
    assert "accept" in final.ErrorComment
    assert not receiver.received
    assert (
        not AccessEvent.objects.exists()
        and not UsageEvent.objects.filter(meter="egress.bytes").exists()
    )


def test_an_unknown_destination_is_refused_with_0xa801(listener, org, dicom_ae, destination):
    study = store_study(org, n=1)
    destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid), destination="NOPE")

    assert [r.Status for r in responses] == [0xA801]
    assert "NOPE" in responses[0].ErrorComment and "not registered" in responses[0].ErrorComment
    audit = AuditEvent.objects.get(action="dimse.move")
    assert audit.details["status"] == "0xA801"


def test_another_organizations_destination_is_unknown(listener, org, other_org, dicom_ae):
    study = store_study(org, n=1)
    receiver = Receiver(ae_title="THEIRS")
    try:
        DicomDestination.objects.create(
            organization=other_org, ae_title="THEIRS", host="127.0.0.1", port=receiver.port
        )
        responses = move(
            listener, identifier("STUDY", StudyInstanceUID=study.uid), destination="THEIRS"
        )
    finally:
        receiver.stop()
    assert [r.Status for r in responses] == [0xA801]
    assert not receiver.received


def test_a_destination_that_refuses_the_association_fails_every_instance(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=3)
    receiver = destination(require_calling="SOMEONE-ELSE")

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xA702]
    final = responses[0]
    assert counts(final)[:3] == (0, 3, 0)
    assert sorted(failed_list(final)) == sorted(study.sop_uids)
    assert "rejected" in final.ErrorComment
    assert not receiver.received
    assert not AccessEvent.objects.exists()
    assert not UsageEvent.objects.filter(meter="egress.bytes").exists()
    assert AuditEvent.objects.get(action="dimse.move").details["failed"] == 3


def _certificate(subject: str, key: Any, issuer_key: Any, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Retrieve Test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def test_a_tls_destination_gets_the_study_over_tls(
    listener, org, dicom_ae, destination, settings, tmp_path, monkeypatch
):
    host = "pacs.retrieve.test"
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Retrieve Test CA", ca_key, ca_key, ca=True)
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(
        _certificate(host, key, ca_key, ca=False).public_bytes(serialization.Encoding.PEM)
    )
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["cert"], paths["key"])
    settings.DIMSE_TLS_CA_FILE = str(paths["ca"])
    real = socket.getaddrinfo

    def getaddrinfo(name: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if name == host:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]
        return real(name, port, *args, **kwargs)

    monkeypatch.setattr(netguard.socket, "getaddrinfo", getaddrinfo)
    study = store_study(org, n=2)
    receiver = destination(ssl_context=context)
    DicomDestination.objects.filter(ae_title=DESTINATION).update(host=host, tls=True)

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert responses[-1].Status == 0x0000
    for instance in study.instances:
        assert receiver.received[instance.sop_instance_uid].dataset == stored_dataset(instance)
    # Without the hospital's CA the certificate is refused: nothing is sent.
    receiver.received.clear()
    settings.DIMSE_TLS_CA_FILE = ""
    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert [r.Status for r in responses] == [0xA702]
    assert "TLS" in responses[0].ErrorComment
    assert not receiver.received


def test_a_destination_where_nothing_listens_fails_every_instance(listener, org, dicom_ae):
    study = store_study(org, n=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    DicomDestination.objects.create(
        organization=org, ae_title=DESTINATION, host="127.0.0.1", port=port
    )

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xA702]
    assert counts(responses[0])[:3] == (0, 2, 0)
    assert "Connection refused" in responses[0].ErrorComment


def test_a_destination_on_a_private_address_is_refused_by_the_guard(
    listener, org, dicom_ae, destination, settings
):
    study = store_study(org, n=1)
    receiver = destination()
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xA702]
    assert "Refused" in responses[0].ErrorComment
    assert not receiver.received


def test_a_destination_that_goes_away_mid_transfer(listener, org, dicom_ae, destination):
    study = store_study(org, n=5)
    receiver = destination(abort_after=2)

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xFF00, 0xFF00, 0xB000]
    assert [counts(r) for r in responses[:2]] == [(1, 0, 0, 4), (2, 0, 0, 3)]
    final = responses[-1]
    assert counts(final)[:3] == (2, 3, 0)
    assert failed_list(final) == study.sop_uids[2:]
    assert "aborted" in final.ErrorComment
    assert set(receiver.received) == set(study.sop_uids[:2])
    # Only what the destination took is recorded and billed.
    sent = sum(len(r.dataset) for r in receiver.received.values())
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == sent
    assert AccessEvent.objects.for_org(org).get().instances == 2


def test_a_destination_refusing_a_c_store_counts_it_failed(listener, org, dicom_ae, destination):
    study = store_study(org, n=2)
    destination(status=0xA700)

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    final = responses[-1]
    assert final.Status == 0xA702
    assert counts(final)[:3] == (0, 2, 0)
    assert "refused the C-STORE" in final.ErrorComment


def test_another_organizations_study_is_not_found_and_never_sent(
    listener, org, other_org, dicom_ae, destination
):
    theirs = store_study(other_org, n=2)
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=theirs.uid))

    assert [r.Status for r in responses] == [0xC000]
    assert "not found" in responses[0].ErrorComment
    assert not receiver.received
    assert not AccessEvent.objects.exists()
    # The same with C-GET.
    responses, received = get(listener, identifier("STUDY", StudyInstanceUID=theirs.uid))
    assert [r.Status for r in responses] == [0xC000]
    assert not received


@pytest.mark.parametrize(
    ("query", "model", "comment"),
    [
        (identifier("WORLD", StudyInstanceUID="1.2.3"), MOVE, "Unknown QueryRetrieveLevel"),
        (without_level(StudyInstanceUID="1.2.3"), MOVE, "QueryRetrieveLevel is missing"),
        (identifier("STUDY"), MOVE, "StudyInstanceUID is required"),
        (identifier("SERIES", SeriesInstanceUID="1.2.3"), MOVE, "StudyInstanceUID is required"),
        (
            identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"),
            MOVE,
            "SOPInstanceUID is required",
        ),
        (identifier("PATIENT", PatientID="P1"), MOVE, "no PATIENT level"),
        (
            identifier("PATIENT"),
            PatientRootQueryRetrieveInformationModelMove,
            "PatientID is required",
        ),
        (identifier("STUDY", StudyInstanceUID="1.2.x"), MOVE, "is not a UID"),
        (
            identifier("SERIES", StudyInstanceUID=["1.2", "1.3"], SeriesInstanceUID="1.4"),
            MOVE,
            "must be one UID",
        ),
        (
            identifier("STUDY", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"),
            MOVE,
            "below the STUDY level",
        ),
    ],
)
def test_bad_identifiers_are_refused_with_0xa900(
    listener, org, dicom_ae, destination, query, model, comment
):
    receiver = destination()
    store_study(org, n=1)

    responses = move(listener, query, model=model)

    assert [r.Status for r in responses] == [0xA900]
    assert comment in responses[0].ErrorComment
    assert not receiver.received


def test_a_caller_not_admitted_is_rejected_and_nothing_is_sent(listener, org, destination):
    ae_create(
        org=org,
        ae_title=CALLED,
        allowed_calling_ae_titles=["PACS-ONLY"],
        allowed_networks=[],
        actor=Actor.system("tests"),
    )
    study = store_study(org, n=1)
    receiver = destination()
    scu = AE(ae_title="INTRUDER")
    scu.add_requested_context(MOVE)
    assoc = scu.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_rejected
    listener.wait_idle()
    assert not receiver.received
    # The handler itself refuses a request without an admitted peer.
    rsp = retrieve._execute(None, fake_event(study.uid), "C-MOVE")
    assert rsp.Status == 0x0124
    assert not AuditEvent.objects.filter(action="dimse.move").exists()


def fake_event(study_uid: str) -> Any:
    request = C_MOVE()
    request.MessageID = 7
    request.AffectedSOPClassUID = MOVE
    request.MoveDestination = DESTINATION
    return SimpleNamespace(
        request=request,
        context=SimpleNamespace(context_id=1, transfer_syntax=ExplicitVRLittleEndian),
        identifier=identifier("STUDY", StudyInstanceUID=study_uid),
    )


def test_archive_tier_instances_start_a_restore_and_are_listed_with_when(
    listener, org, dicom_ae, destination
):
    study = store_study(org, n=3)
    archived = study.instances[1]
    Instance.objects.filter(pk=archived.pk).update(tier="archive")
    store = store_for(archived.location)
    root: Path = getattr(store, "root")  # noqa: B009 - the filesystem store's folder
    source = root / "hot" / archived.object_key
    target = root / "archive" / archived.object_key
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    receiver = destination()

    responses = move(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    final = responses[-1]
    assert final.Status == 0xB000
    assert counts(final)[:3] == (2, 1, 0)
    assert failed_list(final) == [archived.sop_instance_uid]
    restore = RestoreRequest.objects.for_org(org).get()
    assert f"1 in archive tier; restore {restore.pk} ready ~" in final.ErrorComment
    assert set(receiver.received) == {study.sop_uids[0], study.sop_uids[2]}
    audit = AuditEvent.objects.get(action="dimse.move")
    assert audit.details["restore_id"] == restore.pk
    # Asked again while the restore runs: the same restore, no second one.
    move(listener, identifier("STUDY", StudyInstanceUID=study.uid))
    assert RestoreRequest.objects.for_org(org).count() == 1


def test_c_move_cancel_stops_and_answers_with_the_counts(listener, org, dicom_ae, destination):
    study = store_study(org, n=6)
    destination(delay=0.3)
    scu = AE(ae_title=MODALITY)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(MOVE)
    assoc = scu.associate(listener.host, listener.port, ae_title=CALLED)
    responses = []
    for status, _ in assoc.send_c_move(
        identifier("STUDY", StudyInstanceUID=study.uid), DESTINATION, MOVE, msg_id=9
    ):
        responses.append(status)
        if len(responses) == 1:
            assoc.send_c_cancel(9, query_model=MOVE)
    assoc.release()
    listener.wait_idle()
    final = responses[-1]
    assert final.Status == 0xFE00
    completed, failed, warning, remaining = counts(final)
    assert completed >= 1 and failed == 0 and remaining is not None and remaining >= 1
    assert completed + remaining == 6
    assert AuditEvent.objects.get(action="dimse.move").details["cancelled"] is True


def test_a_large_instance_is_moved_in_constant_memory(
    listener, org, dicom_ae, destination, tmp_path
):
    path = tmp_path / "large.dcm"
    header = write_large_instance(path, frames=128)  # 64 MiB of pixel data
    instance = ingest_file(org, path)
    receiver = destination(digest_only=True)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        responses = move(listener, identifier("STUDY", StudyInstanceUID=header.StudyInstanceUID))
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert responses[-1].Status == 0x0000
    print(f"C-MOVE of {size:,} B: traced peak {peak:,} B")
    # Sender and receiver (both in this process) stay far below the size of the instance.
    assert peak < size // 8, peak
    assert receiver.received[instance.sop_instance_uid].digest == file_digest(path)


def ingest_file(org: Organization, path: Path) -> Instance:
    store = store_for(pipeline.location_primary(org))
    with open(path, "rb") as handle:
        spooled = pipeline.spool_file(store, handle)
    result = pipeline.instance_ingest(org=org, spooled=spooled)
    assert result.status == "stored", result.reason
    return Instance.objects.for_org(org).get(sop_instance_uid=result.sop_instance_uid)


# --- C-GET ----------------------------------------------------------------------------------------


def test_c_get_sends_on_the_same_association_as_stored(listener, org, dicom_ae):
    study = store_study(org, n=2)
    added = add_compressed(org, study, ["MR_small_RLE.dcm"])

    responses, received = get(listener, identifier("STUDY", StudyInstanceUID=study.uid))

    assert [r.Status for r in responses] == [0xFF00] * 3 + [0x0000]
    assert set(received) == set(study.sop_uids)
    for instance in study.instances:
        assert received[instance.sop_instance_uid].dataset == stored_dataset(instance)
    assert received[added[0].sop_instance_uid].transfer_syntax == RLELossless
    access = AccessEvent.objects.for_org(org).get()
    assert access.instances == 3 and f"C-GET by {MODALITY}@127.0.0.1" in access.actor_label
    audit = AuditEvent.objects.get(action="dimse.get")
    assert audit.details["completed"] == 3 and "destination" not in audit.details


def test_the_network_thread_waits_while_a_c_get_holds_the_connection():
    """While the sub-operations of a C-GET read the caller's connection themselves, the
    listener's network thread must not spin on it (the connection is readable: the responses
    are waiting for the sub-operations), yet wakes at once when there is a PDU to send."""
    from archive.dimse.listener import IDLE_WAIT, _AcceptorDUL

    caller, ours = socket.socketpair()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    caller.sendall(b"a C-STORE response waiting to be read")
    wrapper = SimpleNamespace(socket=ours, strata_held=True)
    dul = SimpleNamespace(
        socket=wrapper,
        _wake_r=wake_r,
        _wake_w=wake_w,
        _run_loop_delay=0.001,
        _drain_wake=lambda: _AcceptorDUL._drain_wake(dul),
    )
    try:
        started = time.monotonic()
        _AcceptorDUL._idle_wait(dul)
        assert time.monotonic() - started >= IDLE_WAIT * 0.8  # not woken by the readable socket

        wake_w.send(b"\0")  # a pending response to send
        started = time.monotonic()
        _AcceptorDUL._idle_wait(dul)
        assert time.monotonic() - started < IDLE_WAIT * 0.5

        wrapper.strata_held = False  # handed back: the readable connection wakes it
        started = time.monotonic()
        _AcceptorDUL._idle_wait(dul)
        assert time.monotonic() - started < IDLE_WAIT * 0.5
    finally:
        for sock in (caller, ours, wake_r, wake_w):
            sock.close()


def test_c_get_decodes_for_a_caller_accepting_only_uncompressed(listener, org, dicom_ae):
    study = store_study(org, n=1)
    added = add_compressed(org, study, ["MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm"])

    responses, received = get(
        listener,
        identifier("STUDY", StudyInstanceUID=study.uid),
        model=PatientRootQueryRetrieveInformationModelGet,
        syntaxes=[ImplicitVRLittleEndian],
    )

    assert responses[-1].Status == 0x0000
    for instance in added:
        got = received[instance.sop_instance_uid]
        assert got.transfer_syntax == ImplicitVRLittleEndian
        assert decoded_pixels(got.dataset, got.transfer_syntax) == decoded_pixels(
            stored_dataset(instance), instance.transfer_syntax_uid
        )


def test_c_get_without_storage_contexts_fails_every_instance(listener, org, dicom_ae):
    study = store_study(org, n=2)

    responses, received = get(
        listener, identifier("STUDY", StudyInstanceUID=study.uid), storage=[MRImageStorage]
    )

    final = responses[-1]
    assert final.Status == 0xA702
    assert counts(final)[:3] == (0, 2, 0)
    assert "accepted no context for CT Image Storage" in final.ErrorComment
    assert not received


def test_c_get_cancel_stops_and_answers_with_the_counts(listener, org, dicom_ae):
    study = store_study(org, n=6)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        time.sleep(0.3)
        return 0x0000

    scu = AE(ae_title=MODALITY)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(GET, [ExplicitVRLittleEndian])
    scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = scu.associate(
        listener.host,
        listener.port,
        ae_title=CALLED,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    responses = []
    for status, _ in assoc.send_c_get(
        identifier("STUDY", StudyInstanceUID=study.uid), GET, msg_id=11
    ):
        responses.append(status)
        if len(responses) == 1:
            assoc.send_c_cancel(11, query_model=GET)
    assoc.release()
    listener.wait_idle()
    final = responses[-1]
    assert final.Status == 0xFE00
    completed, failed, warning, remaining = counts(final)
    assert completed == len(received) and failed == 0 and remaining is not None
    assert remaining >= 1 and completed + remaining == 6
    assert AuditEvent.objects.get(action="dimse.get").details["cancelled"] is True


def test_a_c_get_caller_that_aborts_mid_transfer_ends_the_retrieve(listener, org, dicom_ae):
    study = store_study(org, n=5)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 2:
            event.assoc.abort()
        return 0x0000

    scu = AE(ae_title=MODALITY)
    scu.acse_timeout = scu.network_timeout = 30
    scu.dimse_timeout = 3  # the SCU's own wait for a response after its abort
    scu.add_requested_context(GET, [ExplicitVRLittleEndian])
    scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = scu.associate(
        listener.host,
        listener.port,
        ae_title=CALLED,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    with contextlib.suppress(Exception):  # the association ends under the SCU
        list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study.uid), GET))
    listener.wait_idle()  # the association thread ended: nothing hangs
    audit = AuditEvent.objects.get(action="dimse.get")
    assert audit.details["completed"] <= 2
    assert audit.details["completed"] + audit.details["failed"] + audit.details["remaining"] <= 5
    assert not sender_spool_folders(org)


def test_c_get_bad_identifier_is_refused(listener, org, dicom_ae):
    responses, _ = get(listener, identifier("SERIES", StudyInstanceUID=generate_uid()))
    assert [r.Status for r in responses] == [0xA900]
    assert "SeriesInstanceUID is required" in responses[0].ErrorComment


# --- dcmtk ---------------------------------------------------------------------------------------


def dcmtk(*tools: str) -> dict[str, str]:
    found = {tool: shutil.which(tool) for tool in tools}
    missing = [tool for tool, path in found.items() if path is None]
    require_service("dcmtk", not missing, f"{', '.join(missing)} not found (Debian package dcmtk)")
    return {tool: str(path) for tool, path in found.items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def storescp(binary: str, folder: Path, ae_title: str, *options: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [binary, "-aet", ae_title, "-od", str(folder), "-uf", "+B", *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("storescp did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def received_files(folder: Path) -> dict[str, tuple[bytes, str]]:
    out = {}
    for path in folder.iterdir():
        meta, _ = split_dataset(path)
        out[str(meta.MediaStorageSOPInstanceUID)] = dataset_of_file(path)
    return out


def test_movescu_to_storescp_moves_the_study_byte_for_byte(listener, org, dicom_ae, tmp_path):
    tools = dcmtk("movescu", "storescp")
    study = store_study(org, n=3, rows=64)
    add_compressed(org, study, ["MR_small_RLE.dcm"])
    folder = tmp_path / "storescp"
    folder.mkdir()
    with storescp(tools["storescp"], folder, "DCMTK-WS", "+xa") as port:
        DicomDestination.objects.create(
            organization=org, ae_title="DCMTK-WS", host="127.0.0.1", port=port
        )
        done = subprocess.run(  # noqa: S603
            [
                tools["movescu"],
                "-S",
                "-aet",
                MODALITY,
                "-aec",
                CALLED,
                "-aem",
                "DCMTK-WS",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study.uid}",
                listener.host,
                str(listener.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        listener.wait_idle()
    assert done.returncode == 0, done.stderr
    got = received_files(folder)
    assert set(got) == set(study.sop_uids)
    for instance in study.instances:
        dataset, syntax = got[instance.sop_instance_uid]
        assert syntax == instance.transfer_syntax_uid
        assert dataset == stored_dataset(instance)
    assert AuditEvent.objects.get(action="dimse.move").details["completed"] == 4


def test_movescu_unknown_destination_gets_0xa801(listener, org, dicom_ae):
    tools = dcmtk("movescu")
    study = store_study(org, n=1)
    done = subprocess.run(  # noqa: S603
        [
            tools["movescu"],
            "-S",
            "-v",
            "-aet",
            MODALITY,
            "-aec",
            CALLED,
            "-aem",
            "UNKNOWN",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study.uid}",
            listener.host,
            str(listener.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    listener.wait_idle()
    output = done.stdout + done.stderr
    assert "0xa801" in output.lower() or "MoveDestinationUnknown" in output, output


def test_getscu_gets_the_study_on_its_association(listener, org, dicom_ae, tmp_path):
    tools = dcmtk("getscu")
    study = store_study(org, n=3, rows=64)
    folder = tmp_path / "getscu"
    folder.mkdir()
    done = subprocess.run(  # noqa: S603
        [
            tools["getscu"],
            "-S",
            "-aet",
            MODALITY,
            "-aec",
            CALLED,
            "-od",
            str(folder),
            "+B",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study.uid}",
            listener.host,
            str(listener.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    listener.wait_idle()
    assert done.returncode == 0, done.stdout + done.stderr
    got = received_files(folder)
    assert set(got) == set(study.sop_uids)
    for instance in study.instances:
        assert got[instance.sop_instance_uid][0] == stored_dataset(instance)
    assert AuditEvent.objects.get(action="dimse.get").details["completed"] == 3


# --- pieces -------------------------------------------------------------------------------------


def test_requested_contexts_offer_each_stored_syntax_alone_and_uncompressed_once():
    contexts = sender.requested_contexts(
        [
            (CTImageStorage, ExplicitVRLittleEndian),
            (CTImageStorage, ExplicitVRLittleEndian),
            (MRImageStorage, RLELossless),
            (MRImageStorage, ImplicitVRLittleEndian),
        ]
    )
    offered = [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax]) for cx in contexts]
    assert offered == [
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (MRImageStorage, [RLELossless]),
        (MRImageStorage, [ImplicitVRLittleEndian]),
    ]


@pytest.mark.parametrize(
    ("originator_aet", "originator_id"), [("PACS1", 7), ("ODD-TITLE", 65535), (None, None)]
)
def test_the_c_store_command_is_encoded_as_pynetdicom_encodes_it(originator_aet, originator_id):
    request = C_STORE()
    request.MessageID = 513
    request.Priority = 2
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.1234567890123")
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request._dataset_path = (Path("unused.dcm"), 0)
    message = C_STORE_RQ()
    message.primitive_to_message(request)

    ours = sender.c_store_command(
        message_id=513,
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1234567890123",
        originator_aet=originator_aet,
        originator_id=originator_id,
    )

    assert ours == encode(message.command_set, True, True)


def test_error_comments_fit_64_characters():
    assert len(retrieve.error_comment("x" * 200)) == 64
    assert retrieve.error_comment("a\\b") == "a/b"
