"""WADO-RS bulk data: the metadata names each instance's pixel data by a BulkDataURI, and that
resource gives back exactly the pixel data of the stored object (native in little endian order,
encapsulated frame by frame), read from the object's header on without loading the object, under
the instance retrieve's rules (scope, tenants, archive tier, access metering, Accept)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import RequestFactory
from django.test.client import ClientHandler
from django.utils.http import parse_header_parameters
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from archive.dicomweb.bulkdata import READ_CHUNK, ObjectReader
from archive.ingest.dicom import pixel_data_locate, to_little_endian
from archive.models import AccessEvent, Instance, RestoreRequest
from archive.storage import store_for
from archive.storage.filesystem import FilesystemStore
from archive.synthetic import make_instance, to_bytes
from billing.models import UsageEvent
from tenants.models import AuditEvent
from tests.archive.test_dicomweb_support import SeededStudy, ingest_study, study
from tests.archive.test_restores_support import to_tier

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db

PIXEL_DATA = "7FE00010"


# --- building instances ---------------------------------------------------------------------


def _seeded(*, patient_id: str = "PAT-B1", instances: int = 0) -> SeededStudy:
    """A CT study of one series with ``instances`` native instances; ``_add`` adds more."""
    return study(
        patient_id=patient_id,
        patient_name="Hopper^Grace",
        study_date=dt.date(2026, 4, 1),
        instances_per_series=instances,
    )


def _dataset(seeded: SeededStudy, *, frames: int = 1, rows: int = 16, columns: int = 16) -> Dataset:
    return make_instance(
        seeded.spec,
        series_uid=seeded.series_uids[0],
        instance_number=len(seeded.files) + 1,
        rows=rows,
        columns=columns,
        frames=frames,
    )


def _add(seeded: SeededStudy, ds: Dataset) -> bytes:
    data = to_bytes(ds)
    seeded.files.append(data)
    seeded.sop_uids.append(str(ds.SOPInstanceUID))
    return data


def _item(data: bytes) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(data)) + data


def encapsulated(
    seeded: SeededStudy,
    frames: list[list[bytes]],
    *,
    syntax: str = JPEGBaseline8Bit,
    basic_offsets: bool = True,
    extended_offsets: bool = False,
) -> Dataset:
    """An instance whose frames are the given fragments, encapsulated as PS3.5 A.4 says."""
    ds = _dataset(seeded, frames=len(frames))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    offsets, items = [], b""
    for fragments in frames:
        offsets.append(len(items))
        for fragment in fragments:
            assert len(fragment) % 2 == 0
            items += _item(fragment)
    table = struct.pack(f"<{len(offsets)}L", *offsets) if basic_offsets else b""
    if extended_offsets:
        ds.ExtendedOffsetTable = struct.pack(f"<{len(offsets)}Q", *offsets)
        lengths = [sum(map(len, fragments)) for fragments in frames]
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(lengths)}Q", *lengths)
    ds.PixelData = _item(table) + items + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def jpeg(size: int, seed: int) -> bytes:
    """Bytes that open like a JPEG codestream (nothing here decodes them)."""
    return b"\xff\xd8" + np.random.default_rng(seed).bytes(size - 4) + b"\xff\xd9"


# --- requests -------------------------------------------------------------------------------


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


@pytest.fixture
def seeded(org) -> SeededStudy:
    """One CT series of two native 16-bit instances."""
    return ingest_study(org, _seeded(instances=2))


def instance_path(seeded: SeededStudy, index: int = 0) -> str:
    return (
        f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}"
        f"/instances/{seeded.sop_uids[index]}"
    )


def bulkdata_path(seeded: SeededStudy, index: int = 0, tag: str = PIXEL_DATA) -> str:
    return f"{instance_path(seeded, index)}/bulkdata/{tag}"


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def multipart_parts(content_type: str, body: bytes) -> tuple[str, list[tuple[dict, bytes]]]:
    """(the ``type`` parameter, [(part headers, exact bytes)]); checks the framing strictly."""
    media_type, params = parse_header_parameters(content_type)
    assert media_type == "multipart/related", content_type
    delimiter = b"\r\n--" + params["boundary"].encode()
    pieces = (b"\r\n" + body).split(delimiter)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n", body[:200]
    parts = []
    for piece in pieces[1:-1]:
        head, sep, content = piece.partition(b"\r\n\r\n")
        assert head.startswith(b"\r\n") and sep, piece[:200]
        headers = {}
        for line in head[2:].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(content)
        parts.append((headers, content))
    return params["type"], parts


def fetch(client, path: str, **headers: str) -> tuple[str, list[tuple[dict, bytes]]]:
    response = client.get(path, **headers)
    assert response.status_code == 200, getattr(response, "content", b"")
    body = body_of(response)
    if response.has_header("Content-Length"):
        assert int(response["Content-Length"]) == len(body)
    return multipart_parts(response["Content-Type"], body)


def metadata_of(client, seeded: SeededStudy, index: int = 0) -> dict[str, Any]:
    response = client.get(f"{instance_path(seeded, index)}/metadata")
    assert response.status_code == 200
    (item,) = json.loads(body_of(response))
    return item


# --- the metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_metadata_names_the_pixel_data_by_an_absolute_bulkdata_uri(
    reader, seeded, monkeypatch, level
):
    def no_storage(*args, **kwargs):
        raise AssertionError("metadata must not read object storage")

    monkeypatch.setattr(FilesystemStore, "iter_bytes", no_storage)
    study_path = f"/dicomweb/studies/{seeded.uid}"
    url = {
        "study": f"{study_path}/metadata",
        "series": f"{study_path}/series/{seeded.series_uids[0]}/metadata",
        "instance": f"{instance_path(seeded, 1)}/metadata",
    }[level]

    items = json.loads(body_of(reader.get(url)))

    expected = seeded.sop_uids if level != "instance" else seeded.sop_uids[1:]
    assert [item["00080018"]["Value"][0] for item in items] == expected
    for item, sop in zip(items, expected, strict=True):
        index = seeded.sop_uids.index(sop)
        assert item[PIXEL_DATA] == {
            "vr": "OW",
            "BulkDataURI": f"http://testserver{bulkdata_path(seeded, index)}",
        }
        assert list(item) == sorted(item)  # the tag added last keeps the order


@pytest.mark.parametrize("case", ["no-image", "deflated"])
def test_no_bulkdata_without_pixel_data_or_for_a_deflated_dataset(org, reader, case):
    seeded = _seeded()
    ds = _dataset(seeded)
    if case == "no-image":
        for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelData"):
            delattr(ds, keyword)
    else:  # its pixel data can only be reached by inflating the whole object
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    _add(seeded, ds)
    ingest_study(org, seeded)

    assert PIXEL_DATA not in metadata_of(reader, seeded)
    response = reader.get(bulkdata_path(seeded))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "bulkdata_not_found"


# --- native pixel data ----------------------------------------------------------------------


def test_bulkdata_is_exactly_the_pixel_data_of_the_original(reader, seeded):
    uri = metadata_of(reader, seeded, 1)[PIXEL_DATA]["BulkDataURI"]

    part_type, [(headers, content)] = fetch(reader, uri.removeprefix("http://testserver"))

    original = pydicom.dcmread(io.BytesIO(seeded.files[1]))
    assert content == original.PixelData
    assert part_type == "application/octet-stream"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-location"] == uri


def _implicit(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _eight_bit(ds: Dataset) -> Dataset:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(range(256)) * (ds.Rows * ds.Columns // 256)
    return ds


def _big_endian(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    return ds


def _float(ds: Dataset, keyword: str, bits: int, dtype: str) -> Dataset:
    for name in ("BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
        delattr(ds, name)
    ds.BitsAllocated = bits
    values = np.linspace(-1.5, 1.5, ds.Rows * ds.Columns, dtype=dtype)
    setattr(ds, keyword, values.tobytes())
    return ds


@pytest.mark.parametrize(
    ("encode", "tag", "vr"),
    [
        (_implicit, PIXEL_DATA, "OW"),
        (_eight_bit, PIXEL_DATA, "OB"),
        (_big_endian, PIXEL_DATA, "OW"),
        (lambda ds: _float(ds, "FloatPixelData", 32, "<f4"), "7FE00008", "OF"),
        (lambda ds: _float(ds, "DoubleFloatPixelData", 64, "<f8"), "7FE00009", "OD"),
    ],
    ids=["implicit-vr", "8-bit", "big-endian", "float", "double-float"],
)
def test_each_native_encoding_gives_the_pixels_in_little_endian_order(org, reader, encode, tag, vr):
    seeded = _seeded()
    data = _add(seeded, encode(_dataset(seeded)))
    ingest_study(org, seeded)

    element = metadata_of(reader, seeded)[tag]
    _, [(_, content)] = fetch(reader, element["BulkDataURI"].removeprefix("http://testserver"))

    original = pydicom.dcmread(io.BytesIO(data))
    assert element["vr"] == vr == original[tag].VR
    if original.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        assert content == original.pixel_array.astype("<u2").tobytes()
    else:
        assert content == original[tag].value


def test_a_large_value_before_the_pixel_data_is_skipped_not_read(org, reader):
    seeded = _seeded()
    ds = _dataset(seeded, rows=512, columns=512)  # 512 KiB of pixel data
    ds.add_new(0x60003000, "OW", os.urandom(3 * 1024 * 1024))  # overlay data before it
    data = _add(seeded, ds)
    ingest_study(org, seeded)

    _, [(_, content)] = fetch(reader, bulkdata_path(seeded))

    assert content == pydicom.dcmread(io.BytesIO(data)).PixelData


# --- reading the object: header only ---------------------------------------------------------


class CountingStore(FilesystemStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.requests: list[tuple[int, int | None]] = []
        self.bytes_read = 0

    def iter_bytes(
        self,
        *,
        key: str,
        tier: str,
        chunk_size: int = 1024 * 1024,
        offset: int = 0,
        length: int | None = None,
    ) -> Iterator[bytes]:
        self.requests.append((offset, length))
        for chunk in super().iter_bytes(
            key=key, tier=tier, chunk_size=chunk_size, offset=offset, length=length
        ):
            self.bytes_read += len(chunk)
            yield chunk


def _stored(tmp_path, data: bytes) -> CountingStore:
    store = CountingStore(tmp_path / "store")
    spool = store.spool_dir() / "upload"
    spool.write_bytes(data)
    store.put_file(key="k.dcm", path=spool, tier="hot", sha256="")
    return store


@pytest.mark.parametrize("overlay", [0, 3 * 1024 * 1024])
def test_the_header_is_read_with_one_request_and_large_values_are_skipped(tmp_path, overlay):
    spec_study = _seeded()
    ds = _dataset(spec_study, rows=1024, columns=1024)  # 2 MiB of pixel data
    if overlay:
        ds.add_new(0x60003000, "OW", os.urandom(overlay))
    data = to_bytes(ds)
    store = _stored(tmp_path, data)
    reader = ObjectReader(store, key="k.dcm", tier="hot", size=len(data))

    value = pixel_data_locate(cast(BinaryIO, reader), size=len(data))

    assert value is not None and value.length == len(ds.PixelData)
    assert data[value.offset : value.offset + value.length] == ds.PixelData
    # One request from the start; a value too large to read through costs one more.
    assert len(store.requests) == (2 if overlay else 1)
    assert store.bytes_read <= 2 * READ_CHUNK * len(store.requests)
    pixels = b"".join(reader.iter_range(value.offset, value.length))
    assert pixels == ds.PixelData
    assert len(store.requests) == (2 if overlay else 1)  # the pixels continue the same read
    reader.close()


@pytest.mark.parametrize(("vr", "dtype"), [("OW", "u2"), ("OF", "f4"), ("OD", "f8"), ("OB", "u1")])
def test_big_endian_words_are_swapped_across_chunk_boundaries(vr, dtype):
    values = np.arange(1000).astype(f">{dtype}")
    data = values.tobytes()
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]  # no chunk holds whole words

    swapped = b"".join(to_little_endian(chunks, vr=vr, little=False))

    assert swapped == values.astype(f"<{dtype}").tobytes()
    assert b"".join(to_little_endian(chunks, vr=vr, little=True)) == data


def test_the_reader_refuses_to_read_a_whole_object(tmp_path):
    data = to_bytes(_dataset(_seeded()))
    reader = ObjectReader(_stored(tmp_path, data), key="k.dcm", tier="hot", size=len(data))

    with pytest.raises(ValueError, match="never whole"):
        reader.read()
    assert reader.read(4) == data[:4]
    reader.seek(-4, io.SEEK_END)
    assert reader.read(100) == data[-4:] and reader.read(1) == b""


# --- encapsulated pixel data ----------------------------------------------------------------


def _frames_case(name: str) -> tuple[dict[str, Any], list[list[bytes]]]:
    one = [jpeg(300, 1)]
    split = [jpeg(200, 2)[:100], jpeg(200, 2)[100:]]  # one frame in two fragments
    cases: dict[str, tuple[dict[str, Any], list[list[bytes]]]] = {
        "basic-offset-table": ({}, [one, split, [jpeg(50, 3)]]),
        "codestream-markers": ({"basic_offsets": False}, [split, one, [jpeg(50, 3)]]),
        "single-frame": ({"basic_offsets": False}, [[b"ab" * 10, b"cd" * 30, b"ef" * 5]]),
        "rle-one-fragment-per-frame": (
            {"basic_offsets": False, "syntax": RLELossless},
            [[b"\x01" * 64], [b"\x02" * 64]],
        ),
        # Fragments that each look like a codestream start: only the table tells the frames.
        "extended-offset-table": (
            {"basic_offsets": False, "extended_offsets": True},
            [[jpeg(100, 4), jpeg(100, 5)], [jpeg(80, 6), jpeg(60, 7)]],
        ),
    }
    return cases[name]


@pytest.mark.parametrize(
    "case",
    [
        "basic-offset-table",
        "codestream-markers",
        "single-frame",
        "rle-one-fragment-per-frame",
        "extended-offset-table",
    ],
)
def test_encapsulated_pixel_data_comes_frame_by_frame_as_stored(org, reader, case):
    options, frames = _frames_case(case)
    seeded = _seeded()
    ds = encapsulated(seeded, frames, **options)
    _add(seeded, ds)
    ingest_study(org, seeded)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    media_type = "image/dicom-rle" if syntax == RLELossless else "image/jpeg"

    element = metadata_of(reader, seeded)[PIXEL_DATA]
    part_type, parts = fetch(reader, element["BulkDataURI"].removeprefix("http://testserver"))

    assert element["vr"] == "OB"
    assert part_type == media_type
    assert [content for _, content in parts] == [b"".join(fragments) for fragments in frames]
    assert {headers["content-type"] for headers, _ in parts} == {
        f"{media_type}; transfer-syntax={syntax}"
    }
    event = AccessEvent.objects.for_org(org).filter(kind="retrieve").get()
    assert event.bytes == sum(len(b"".join(fragments)) for fragments in frames)


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ('multipart/related; type="image/jpeg"', 200),
        ('multipart/related; type="image/*"', 200),
        ('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50', 200),
        ('multipart/related; type="*/*"', 200),
        ('multipart/related; type="application/octet-stream"', 406),
        ('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70', 406),
        ('multipart/related; type="image/jls"', 406),
    ],
)
def test_encapsulated_pixel_data_is_not_transcoded(org, reader, accept, status):
    seeded = _seeded()
    _add(seeded, encapsulated(seeded, [[jpeg(100, 1)]]))
    ingest_study(org, seeded)

    response = reader.get(bulkdata_path(seeded), HTTP_ACCEPT=accept)

    assert response.status_code == status
    if status == 406:
        assert response.json()["error"]["code"] == "not_acceptable"
        assert "image/jpeg" in response.json()["error"]["message"]


def test_broken_encapsulation_is_a_clear_503_before_any_byte(org, reader):
    seeded = _seeded()
    data = _add(seeded, encapsulated(seeded, [[jpeg(100, 1)]]))
    header = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # Pixel Data, undefined length
    start = data.index(header) + len(header)
    seeded.files[-1] = data[:start] + b"\x00" * 8 + data[start + 8 :]  # no offset table item
    ingest_study(org, seeded)

    response = reader.get(bulkdata_path(seeded))

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "object_unreadable" and "offset table" in error["message"]
    assert not AccessEvent.objects.exists()


# --- negotiation, metering and the rules every read follows ----------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "multipart/*",
        "multipart/related",
        'multipart/related; type="application/octet-stream"',
        "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        'multipart/related; type="*/*"',
        'application/dicom+json, multipart/related; type="application/octet-stream"; q=0.5',
    ],
)
def test_acceptable_media_types_for_native_pixel_data(reader, seeded, accept):
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    part_type, parts = fetch(reader, bulkdata_path(seeded), **headers)

    assert part_type == "application/octet-stream" and len(parts) == 1


@pytest.mark.parametrize(
    "accept",
    [
        "application/octet-stream",
        "application/dicom+json",
        "image/jpeg",
        'multipart/related; type="application/dicom"',
        'multipart/related; type="image/jpeg"',
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
        'multipart/related; type="application/octet-stream"; q=0',
    ],
)
def test_other_media_types_are_406_and_read_nothing(reader, seeded, accept, monkeypatch):
    monkeypatch.setattr(FilesystemStore, "iter_bytes", None)  # any read would fail loudly

    response = reader.get(bulkdata_path(seeded), HTTP_ACCEPT=accept)

    assert response.status_code == 406
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_acceptable"
    assert not AccessEvent.objects.exists()


def test_a_read_records_access_egress_and_audit_once(org, reader, seeded):
    pixels = pydicom.dcmread(io.BytesIO(seeded.files[0])).PixelData

    fetch(reader, bulkdata_path(seeded))

    event = AccessEvent.objects.for_org(org).get()
    assert (event.kind, event.bytes, event.instances) == ("retrieve", len(pixels), 1)
    assert event.series.series_uid == seeded.series_uids[0]
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == len(pixels)
    audit = AuditEvent.objects.get(organization=org, action="study.retrieve")
    assert audit.details["bytes"] == len(pixels) and audit.details["instances"] == 1
    assert Instance.objects.for_org(org).get(sop_instance_uid=seeded.sop_uids[0]).last_accessed_at


def test_an_aborted_read_records_the_bytes_actually_sent(org, make_token, seeded):
    _, secret = make_token(org, ["dicom:read"])
    handler = ClientHandler()
    handler.load_middleware()
    request = RequestFactory().get(bulkdata_path(seeded), HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = handler.get_response(request)
    stream = iter(response)
    next(stream)  # the part's headers
    first_chunk = next(stream)
    request_finished.disconnect(close_old_connections)  # keep the test's database connection
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)

    event = AccessEvent.objects.for_org(org).get()
    assert (event.bytes, event.instances) == (len(first_chunk), 0)


def test_head_sends_headers_only_and_records_nothing(reader, seeded):
    length = len(body_of(reader.get(bulkdata_path(seeded))))
    AccessEvent.objects.all().delete()

    response = reader.head(bulkdata_path(seeded))

    assert response.status_code == 200
    assert int(response["Content-Length"]) == length
    assert 'type="application/octet-stream"' in response["Content-Type"]
    assert not response.content
    assert not AccessEvent.objects.exists()


@pytest.mark.parametrize("tag", ["00100010", "7FE00008", "7fe0001", "pixels", "7FE000100"])
def test_an_attribute_the_instance_does_not_offer_is_404(reader, seeded, tag, monkeypatch):
    monkeypatch.setattr(FilesystemStore, "iter_bytes", None)

    response = reader.get(bulkdata_path(seeded, tag=tag))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "bulkdata_not_found"
    assert not AccessEvent.objects.exists()


def test_the_tag_may_be_lower_case(reader, seeded):
    _, [(_, content)] = fetch(reader, bulkdata_path(seeded, tag=PIXEL_DATA.lower()))

    assert content == pydicom.dcmread(io.BytesIO(seeded.files[0])).PixelData


@pytest.mark.parametrize("theirs", ["nothing", "the-same-study-uid"])
def test_another_tenants_uids_are_404(other_org, token_client, seeded, theirs, monkeypatch):
    if theirs == "the-same-study-uid":  # a study UID of their own, in a series of their own
        own = SeededStudy(spec=seeded.spec, series_uids=[generate_uid()])
        _add(own, _dataset(own))
        ingest_study(other_org, own)
    monkeypatch.setattr(FilesystemStore, "iter_bytes", None)
    other = token_client(other_org, ["dicom:read"])

    response = other.get(bulkdata_path(seeded))

    assert response.status_code == 404
    assert (
        response.json()["error"]["code"]
        == {
            "nothing": "study_not_found",
            "the-same-study-uid": "series_not_found",
        }[theirs]
    )
    assert not AccessEvent.objects.exists()


def test_reading_needs_dicom_read(org, token_client, seeded):
    response = token_client(org, ["dicom:write"]).get(bulkdata_path(seeded))

    assert response.status_code == 403
    assert response.json()["error"]["fields"]["permission"] == ["images.read"]


def test_the_archive_tier_answers_503_with_the_restore(org, reader, seeded):
    to_tier(Instance.objects.for_org(org).get(sop_instance_uid=seeded.sop_uids[0]), "archive")

    response = reader.get(bulkdata_path(seeded))

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["error"]["code"] == "restore_required"
    assert body["restore"]["id"] == RestoreRequest.objects.for_org(org).get().pk
    assert body["error"]["fields"]["archived_instances"] == [seeded.sop_uids[0]]
    assert not AccessEvent.objects.exists()
    # The metadata still names the pixel data, and the other instance reads.
    assert metadata_of(reader, seeded)[PIXEL_DATA]["BulkDataURI"].endswith(bulkdata_path(seeded))
    assert reader.get(bulkdata_path(seeded, 1)).status_code == 200


def test_a_missing_object_is_a_clear_503(org, reader, seeded, archive_root):
    instance = Instance.objects.for_org(org).get(sop_instance_uid=seeded.sop_uids[0])
    (archive_root / "hot" / instance.object_key).unlink()

    response = reader.get(bulkdata_path(seeded))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert not AccessEvent.objects.exists()


# --- on S3 ----------------------------------------------------------------------------------


def test_bulkdata_from_an_s3_location(org, reader, s3_bucket, make_bucket_location, settings):
    settings.ARCHIVE_BACKEND = "filesystem"
    make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    seeded = _seeded()
    native = _dataset(seeded, rows=700, columns=700)  # ~1 MiB: several chunks
    native.add_new(0x60003000, "OW", os.urandom(2 * 1024 * 1024))  # skipped by a ranged read
    _add(seeded, native)
    _add(seeded, encapsulated(seeded, [[jpeg(5000, 1)], [jpeg(3000, 2)]]))
    ingest_study(org, seeded)
    instance = Instance.objects.for_org(org).select_related("location").first()
    assert instance is not None and instance.location.kind == "s3"
    ranges = []
    store_for(instance.location).client.meta.events.register(  # the client requests share
        "before-call.s3.GetObject",
        lambda params, **kwargs: ranges.append(params["headers"].get("Range")),
    )

    _, [(_, pixels)] = fetch(reader, bulkdata_path(seeded, 0))
    _, frames = fetch(reader, bulkdata_path(seeded, 1))

    assert pixels == native.PixelData
    assert [content for _, content in frames] == [jpeg(5000, 1), jpeg(3000, 2)]
    # The first instance: its header from the start, then a ranged read after the overlay; the
    # second: one read for header and frames.
    assert len(ranges) == 3 and ranges[1] is not None and ranges[1].startswith("bytes=")


# --- with a DICOMweb client over HTTP -------------------------------------------------------


@pytest.fixture
def http_client(live_server, org, make_token) -> Iterator[DICOMwebClient]:
    _, secret = make_token(org, ["dicom:read"])
    with requests.Session() as session:
        client = DICOMwebClient(
            f"{live_server.url}/dicomweb",
            session=session,
            headers={"Authorization": f"Bearer {secret}"},
        )
        # The client sends its host without the port as the Host header, and the server builds
        # absolute BulkDataURIs from that header: the live server's port must be in it.
        client.host = urlsplit(live_server.url).netloc
        yield client


@pytest.mark.django_db(transaction=True)
def test_round_trip_with_dicomweb_client(org, http_client):
    seeded = _seeded()
    _add(seeded, _dataset(seeded, rows=64, columns=64))
    frames = [jpeg(400, 1), jpeg(500, 2)]
    _add(seeded, encapsulated(seeded, [[frame] for frame in frames]))
    ingest_study(org, seeded)
    originals = [pydicom.dcmread(io.BytesIO(data)) for data in seeded.files]

    metadata = [
        http_client.retrieve_instance_metadata(seeded.uid, seeded.series_uids[0], sop)
        for sop in seeded.sop_uids
    ]
    native_uri = metadata[0][PIXEL_DATA]["BulkDataURI"]
    encapsulated_uri = metadata[1][PIXEL_DATA]["BulkDataURI"]

    assert http_client.retrieve_bulkdata(native_uri) == [originals[0].PixelData]
    assert http_client.retrieve_bulkdata(native_uri, media_types=("application/octet-stream",)) == [
        originals[0].PixelData
    ]
    assert http_client.retrieve_bulkdata(encapsulated_uri) == frames
    assert http_client.retrieve_bulkdata(encapsulated_uri, media_types=("image/jpeg",)) == frames
    # pydicom resolves the URI through the client, as a viewer would (the client's parts are
    # bytearrays, which pydicom would take for a list of values).
    ds = pydicom.Dataset.from_json(
        metadata[0], bulk_data_uri_handler=lambda uri: bytes(http_client.retrieve_bulkdata(uri)[0])
    )
    assert ds.PixelData == originals[0].PixelData
    # Five reads of the series' bulk data in a minute: one line of the access log.
    assert AccessEvent.objects.for_org(org).filter(kind="retrieve").get().reads == 5
