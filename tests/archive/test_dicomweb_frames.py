"""WADO-RS frames: every frame of every transfer syntax pydicom's test files cover comes back
byte for byte as pydicom extracts it (as stored) or decodes it (uncompressed), each read from the
store by one byte range that the frame index computed at ingest names; every bad input has its
clear answer; the reading rules of WADO-RS hold (tenants, archive tier, access metering)."""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from django.utils import timezone
from django.utils.http import parse_header_parameters
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames, generate_frames
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from archive.dicomweb.frames import (
    STORE_BYTES_HEADER,
    FrameReader,
    decoded_frame,
    frame_bytes,
    parse_frame_list,
)
from archive.index.selectors import instance_by_uids
from archive.ingest import pipeline
from archive.ingest.dicom import DicomRejected, read_header
from archive.models import AccessEvent, FrameIndex, Instance, RestoreRequest, Study
from archive.storage import store_for
from archive.storage.filesystem import FilesystemStore
from billing.models import UsageEvent
from tests.archive.test_dicomweb_bulkdata import (
    _add,
    _dataset,
    _seeded,
    encapsulated,
    jpeg,
    multipart_parts,
)
from tests.archive.test_dicomweb_support import ingest_study
from tests.archive.test_restores_support import to_tier

pytestmark = pytest.mark.django_db

STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"


# --- pydicom's test files -----------------------------------------------------------------------


def pydicom_file(name: str) -> Path:
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def _testdata_images() -> list[str]:
    """pydicom's bundled test files that are images this archive stores (Part 10, whole, valid
    UIDs, pixel data that can be read by range): every transfer syntax they cover, single and
    multi-frame."""
    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(pydicom_file("").glob("*.dcm")):
            try:
                header = read_header(path)
            except DicomRejected:
                continue
            if header.frames is not None:
                names.append(path.name)
    return names


TESTDATA = _testdata_images()


def test_the_test_files_cover_every_syntax_pydicom_ships():
    syntaxes = set()
    for name in TESTDATA:
        syntaxes.add(str(pydicom.dcmread(pydicom_file(name)).file_meta.TransferSyntaxUID))
    assert syntaxes >= {
        "1.2.840.10008.1.2",  # implicit VR little endian
        EXPLICIT_LE,
        BIG_ENDIAN,
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.70",  # JPEG lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE
    }


def ingest_bytes(org, data: bytes) -> Instance:
    store = store_for(pipeline.location_primary(org))
    result = pipeline.instance_ingest(org=org, spooled=pipeline.spool_file(store, io.BytesIO(data)))
    assert result.status == "stored" and result.instance_id is not None, result.reason
    return Instance.objects.select_related("study", "series", "location").get(pk=result.instance_id)


def ingest_testdata(org, name: str) -> tuple[Instance, Dataset]:
    data = pydicom_file(name).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ingest_bytes(org, data), pydicom.dcmread(io.BytesIO(data))


def frames_path(instance: Instance, frames: str) -> str:
    return (
        f"/dicomweb/studies/{instance.study.study_uid}/series/{instance.series.series_uid}"
        f"/instances/{instance.sop_instance_uid}/frames/{frames}"
    )


def get_frames(client, instance: Instance, frames: str, accept: str | None = STORED):
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    return client.get(frames_path(instance, frames), **headers)


def parts_of(response) -> tuple[str, list[tuple[dict[str, str], bytes]]]:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    body = b"".join(response.streaming_content)
    if response.has_header("Content-Length"):
        assert int(response["Content-Length"]) == len(body)
    return multipart_parts(response["Content-Type"], body)


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def pydicom_frames_as_stored(ds: Dataset) -> list[bytes]:
    """What each frame is, as stored, by pydicom's reading: encapsulated, its own frame
    extraction (``generate_frames``); native, the slices of the value it read, little endian."""
    syntax = ds.file_meta.TransferSyntaxUID
    count = frame_count(ds)
    if syntax.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    bits = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        bits = bits * 2 // 3
    assert bits % 8 == 0 or count == 1, "no bundled file has unaligned bit-packed frames"
    size = -(-bits // 8)
    frames = [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]
    if syntax == BIG_ENDIAN and ds.BitsAllocated > 8:
        word = f">u{ds.BitsAllocated // 8}"
        frames = [np.frombuffer(f, word).astype(word.replace(">", "<")).tobytes() for f in frames]
    return frames


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


# --- byte for byte ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TESTDATA)
def test_every_frame_as_stored_is_pydicoms_frame(org, reader, name):
    instance, ds = ingest_testdata(org, name)
    expected = pydicom_frames_as_stored(ds)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    numbers = list(range(1, len(expected) + 1))

    response = get_frames(reader, instance, ",".join(map(str, reversed(numbers))))
    media_type, parts = parts_of(response)

    assert [content for _, content in parts] == expected[::-1]
    part_types = {headers["content-type"] for headers, _ in parts}
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        assert part_types == {f"application/octet-stream; transfer-syntax={syntax}"}
    else:
        assert part_types == {"application/octet-stream"}
    assert media_type == "application/octet-stream"
    # Every frame read by its byte range: what the store sent is what the frames take (their
    # fragments' item headers included).
    index = FrameIndex.objects.get(instance=instance)
    assert index.frames == len(expected) and not index.problem
    items = 0
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        fragmented = generate_fragmented_frames(ds.PixelData, number_of_frames=len(expected))
        items = 8 * sum(len(fragments) for fragments in fragmented)
    assert int(response[STORE_BYTES_HEADER]) == sum(map(len, expected)) + items


def _decodes(name: str) -> bool:
    ds = pydicom.dcmread(pydicom_file(name))
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018 - does pydicom decode it here?
    except Exception:  # noqa: BLE001
        return False
    return True


DECODABLE = [name for name in TESTDATA if _decodes(name)]


@pytest.mark.parametrize("name", DECODABLE)
def test_compressed_frames_asked_uncompressed_are_pydicoms_pixels(org, reader, name):
    instance, ds = ingest_testdata(org, name)
    count = frame_count(ds)
    pixels = ds.pixel_array
    expected = [pixels] if count == 1 else [pixels[k] for k in range(count)]
    expected_bytes = [
        np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in expected
    ]

    media_type, parts = parts_of(get_frames(reader, instance, "1", UNCOMPRESSED))
    if count > 1:
        _, last = parts_of(get_frames(reader, instance, str(count), UNCOMPRESSED))
        assert last[0][1] == expected_bytes[-1]

    assert media_type == "application/octet-stream"
    assert [content for _, content in parts] == expected_bytes[:1]
    assert parts[0][0]["content-type"] == "application/octet-stream"


def test_the_api_other_code_uses_reads_and_decodes_one_frame(org):
    instance, ds = ingest_testdata(org, "examples_ybr_color.dcm")

    data, syntax = frame_bytes(instance, 7)
    frame = decoded_frame(instance, 7)

    assert data == pydicom_frames_as_stored(ds)[6]
    assert syntax == JPEGBaseline8Bit
    assert np.array_equal(frame.pixels, ds.pixel_array[6])
    assert frame.photometric_interpretation == "RGB"
    assert frame.description.photometric_interpretation == "YBR_FULL_422"
    assert frame.description.number_of_frames == 30
    native, _ = ingest_testdata(org, "rtdose_expb.dcm")
    with FrameReader(native) as frames:
        assert frames.frames == 15
        assert np.array_equal(
            frames.decoded(15).pixels,
            pydicom.dcmread(pydicom_file("rtdose_expb.dcm")).pixel_array[14],
        )
        assert frames.store_bytes == 10 * 10 * 4


# --- synthetic encapsulations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "frames"),
    [
        ({}, [[jpeg(300, 1)], [jpeg(200, 2)[:100], jpeg(200, 2)[100:]], [jpeg(50, 3)]]),
        ({"basic_offsets": False}, [[jpeg(200, 2)[:100], jpeg(200, 2)[100:]], [jpeg(300, 1)]]),
        ({"basic_offsets": False, "syntax": RLELossless}, [[b"\x01" * 64], [b"\x02" * 64]]),
        (
            {"basic_offsets": False, "extended_offsets": True},
            [[jpeg(100, 4)], [jpeg(80, 6)], [jpeg(60, 7)]],
        ),
        # No table, fragments that do not open with a codestream marker, as many as the frames:
        # one frame per fragment.
        ({"basic_offsets": False}, [[b"\x00\x01" * 20], [b"\x00\x02" * 30]]),
    ],
    ids=["basic-offset-table", "markers", "rle", "extended-offset-table", "one-per-fragment"],
)
def test_each_encapsulation_gives_its_frames(org, reader, options, frames):
    seeded = _seeded()
    _add(seeded, encapsulated(seeded, frames, **options))
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()

    _, parts = parts_of(
        get_frames(reader, instance, ",".join(str(n) for n in range(len(frames), 0, -1)))
    )

    assert [content for _, content in parts] == [b"".join(f) for f in reversed(frames)]


# --- reading by range ---------------------------------------------------------------------------


class Counting:
    """Every request made of the filesystem store (offset, length), and the bytes it sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int | None]] = []
        self.bytes_read = 0


@pytest.fixture
def counting(monkeypatch) -> Counting:
    seen = Counting()
    original = FilesystemStore.iter_bytes

    def iter_bytes(store: FilesystemStore, **kwargs: Any) -> Iterator[bytes]:
        seen.requests.append((kwargs.get("offset", 0), kwargs.get("length")))
        for chunk in original(store, **kwargs):
            seen.bytes_read += len(chunk)
            yield chunk

    monkeypatch.setattr(FilesystemStore, "iter_bytes", iter_bytes)
    return seen


def test_a_native_frame_is_one_ranged_read_of_its_bytes(org, reader, counting):
    seeded = _seeded()
    ds = _dataset(seeded, rows=256, columns=256, frames=20)  # 2.5 MiB of pixel data
    ds.add_new(0x60003000, "OW", os.urandom(1024 * 1024))  # an overlay before it
    data = _add(seeded, ds)
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()
    index = FrameIndex.objects.get(instance=instance)
    frame = 256 * 256 * 2

    response = get_frames(reader, instance, "13")
    _, [(_, content)] = parts_of(response)

    assert content == ds.PixelData[12 * frame : 13 * frame]
    assert response.has_header("Content-Length")
    assert counting.requests == [(index.offset + 12 * frame, frame)]
    assert counting.bytes_read == frame == int(response[STORE_BYTES_HEADER])
    assert data[index.offset : index.offset + index.length] == ds.PixelData


def test_an_encapsulated_frame_is_one_ranged_read_of_its_items(org, reader, counting):
    seeded = _seeded()
    tiles = [[jpeg(20_000 + 1000 * k, k)] for k in range(40)]
    _add(seeded, encapsulated(seeded, tiles, basic_offsets=False))
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()

    response = get_frames(reader, instance, "31,7")
    _, parts = parts_of(response)

    assert [content for _, content in parts] == [tiles[30][0], tiles[6][0]]
    assert [length for _, length in counting.requests] == [
        len(tiles[30][0]) + 8,
        len(tiles[6][0]) + 8,
    ]
    assert (
        counting.bytes_read
        == int(response[STORE_BYTES_HEADER])
        == 2 * 8 + len(tiles[30][0]) + len(tiles[6][0])
    )


def test_an_instance_stored_before_frame_indexes_gets_one_on_its_first_frame(org, reader, counting):
    seeded = _seeded()
    tiles = [[jpeg(3000 + 10 * k, k)] for k in range(30)]
    _add(seeded, encapsulated(seeded, tiles, basic_offsets=False))
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()
    FrameIndex.objects.all().delete()  # as ingested before this archive kept frame indexes

    first = get_frames(reader, instance, "2")
    requests_first = list(counting.requests)
    counting.requests, counting.bytes_read = [], 0
    second = get_frames(reader, instance, "29")

    assert parts_of(first)[1][0][1] == tiles[1][0]
    assert parts_of(second)[1][0][1] == tiles[28][0]
    index = FrameIndex.objects.get(instance=instance)
    assert index.frames == 30 and index.organization_id == org.pk
    assert requests_first[0] == (0, None)  # the header and the item headers, read on
    (start,) = struct.unpack_from("<Q", bytes(index.boundaries), 8 * 28)
    assert counting.requests == [(start, len(tiles[28][0]) + 8)]
    assert int(first[STORE_BYTES_HEADER]) > int(second[STORE_BYTES_HEADER]) == len(tiles[28][0]) + 8


def test_a_broken_encapsulation_is_a_clear_503_and_is_not_read_again(org, reader, counting):
    seeded = _seeded()
    data = _add(seeded, encapsulated(seeded, [[jpeg(100, 1)], [jpeg(100, 2)]], basic_offsets=False))
    end = data.index(b"\xfe\xff\xdd\xe0")  # the sequence delimiter becomes no item at all
    seeded.files[-1] = data[:end] + b"\xfe\xff\x00\xe1" + data[end + 4 :]
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()
    assert FrameIndex.objects.get(instance=instance).problem

    response = get_frames(reader, instance, "1")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "object_unreadable"
    assert "fragment item" in response.json()["error"]["message"]
    assert counting.requests == [] and not AccessEvent.objects.exists()


# --- negotiation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "part_type"),
    [
        (None, "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"),
        ("*/*", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"),
        ("multipart/related", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"),
        (
            'multipart/related; type="image/jpeg"',
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
        (
            "multipart/related; type=image/*; transfer-syntax=*",
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
        (STORED, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
        (UNCOMPRESSED, "application/octet-stream"),
        ("multipart/related; type=application/octet-stream", "application/octet-stream"),
        (f"{UNCOMPRESSED}; transfer-syntax={EXPLICIT_LE}", "application/octet-stream"),
        # The preferred acceptable range wins.
        (
            f"{UNCOMPRESSED}; q=0.5, {STORED}",
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
    ],
)
def test_what_each_accept_header_gets_for_jpeg_frames(org, reader, accept, part_type):
    instance, ds = ingest_testdata(org, "examples_ybr_color.dcm")

    media_type, [(headers, content)] = parts_of(get_frames(reader, instance, "2", accept))

    assert headers["content-type"] == part_type
    assert media_type == part_type.split(";")[0]
    if part_type == "application/octet-stream":
        assert content == ds.pixel_array[1].tobytes()
    else:
        assert content == pydicom_frames_as_stored(ds)[1]


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom",
        "image/jpeg",
        'multipart/related; type="application/dicom"',
        'multipart/related; type="image/jp2"',
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
        f"{UNCOMPRESSED}; transfer-syntax=1.2.840.10008.1.2.4.90",
        f"{STORED}; q=0",
    ],
)
def test_what_cannot_be_sent_is_406_naming_what_was_asked_and_what_can_be(
    org, reader, accept, counting
):
    instance, _ = ingest_testdata(org, "examples_ybr_color.dcm")

    response = get_frames(reader, instance, "1", accept)

    assert response.status_code == 406
    error = response.json()["error"]
    assert error["code"] == "not_acceptable"
    assert repr(accept) in error["message"]
    assert 'type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50' in error["message"]
    assert 'type="application/octet-stream"; transfer-syntax=*' in error["message"]
    assert "decoded to Explicit VR Little Endian" in error["message"]
    assert counting.requests == [] and not AccessEvent.objects.exists()


def test_native_frames_are_sent_uncompressed_only(org, reader):
    instance, _ = ingest_testdata(org, "CT_small.dcm")

    refused = get_frames(reader, instance, "1", 'multipart/related; type="image/jpeg"')
    accepted = get_frames(reader, instance, "1", "multipart/related; type=application/octet-stream")

    assert refused.status_code == 406
    assert 'type="application/octet-stream"' in refused.json()["error"]["message"]
    assert accepted.status_code == 200


def test_a_syntax_that_cannot_be_decoded_is_406_naming_it_and_sent_as_stored(org, reader):
    instance, ds = ingest_testdata(org, "JPEG-lossy.dcm")  # 12-bit JPEG Extended

    refused = get_frames(reader, instance, "1", UNCOMPRESSED)
    stored = get_frames(reader, instance, "1", STORED)

    assert refused.status_code == 406
    error = refused.json()["error"]
    assert error["code"] == "not_decodable"
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in error["message"]
    # What was asked, and what can be sent.
    assert f"asked {UNCOMPRESSED!r}" in error["message"]
    assert "Can serve: the frames as stored" in error["message"]
    assert error["fields"]["Accept"] == ["transfer-syntax=*"]
    assert parts_of(stored)[1][0][1] == pydicom_frames_as_stored(ds)[0]
    assert AccessEvent.objects.count() == 1  # the refused request read nothing it recorded


def test_a_syntax_without_a_decoder_is_refused_before_reading(org, reader, counting):
    seeded = _seeded()
    _add(
        seeded,
        encapsulated(
            seeded, [[b"\x00\x00\x00\x0cJXL " + b"\x00" * 10]], syntax="1.2.840.10008.1.2.4.112"
        ),
    )
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()

    response = get_frames(reader, instance, "1", UNCOMPRESSED)

    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.112" in response.json()["error"]["message"]
    assert "not decoded" in response.json()["error"]["message"]
    assert counting.requests == []


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ("0", "start at 1"),
        ("1,0", "start at 1"),
        ("3,1,3", "listed more than once"),
        ("a", "not a frame number"),
        ("1,,2", "not a frame number"),
        ("-1", "not a frame number"),
        ("1.5", "not a frame number"),
        ("%201", "not a frame number"),
        ("1;2", "not a frame number"),
        ("\u0661", "not a frame number"),  # an Arabic-Indic digit: not a decimal digit here
        ("99999999999", "not a frame number"),
        (",".join(["1"] * 10_001), "at most 10000"),
    ],
)
def test_a_bad_frame_list_is_400_saying_why_and_reads_nothing(org, reader, frames, says, counting):
    instance, _ = ingest_testdata(org, "rtdose.dcm")  # 15 frames

    response = get_frames(reader, instance, frames)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_frame_list"
    assert says in response.json()["error"]["message"]
    assert counting.requests == [] and not AccessEvent.objects.exists()


@pytest.mark.parametrize("frames", ["16", "1,16", "4000000000"])
def test_a_frame_beyond_the_last_is_400_naming_the_count(org, reader, frames, counting):
    instance, _ = ingest_testdata(org, "rtdose.dcm")

    response = get_frames(reader, instance, frames)

    assert response.status_code == 400
    assert "has 15 frame(s)" in response.json()["error"]["message"]
    assert counting.requests == [] and not AccessEvent.objects.exists()


def test_parse_frame_list_keeps_the_order_asked():
    assert parse_frame_list("3,1,2") == [3, 1, 2]


@pytest.mark.parametrize("name", ["test-SR.dcm", "waveform_ecg.dcm"])
def test_an_instance_without_pixel_data_has_no_frames(org, reader, name, counting):
    instance, _ = ingest_testdata(org, name)

    response = get_frames(reader, instance, "1")

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "no_pixel_data" and "not an image" in error["message"]
    assert counting.requests == [] and not FrameIndex.objects.exists()


def test_the_archive_tier_answers_503_with_the_restore(org, reader, counting):
    instance, _ = ingest_testdata(org, "rtdose.dcm")
    to_tier(instance, "archive")

    response = get_frames(reader, instance, "2")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["error"]["code"] == "restore_required"
    assert body["restore"]["id"] == RestoreRequest.objects.for_org(org).get().pk
    assert counting.requests == [] and not AccessEvent.objects.exists()


def test_a_frame_beyond_the_last_of_an_archived_instance_starts_no_restore(org, reader):
    instance, _ = ingest_testdata(org, "rtdose.dcm")
    to_tier(instance, "archive")

    response = get_frames(reader, instance, "16")

    assert response.status_code == 400
    assert not RestoreRequest.objects.exists()


@pytest.mark.parametrize("theirs", ["unknown", "same-uids-of-their-own"])
def test_another_organizations_uids_are_404(org, other_org, token_client, theirs, counting):
    instance, _ = ingest_testdata(org, "CT_small.dcm")
    if theirs == "same-uids-of-their-own":
        ingest_testdata(other_org, "MR_small.dcm")
    other = token_client(other_org, ["dicom:read"])

    response = get_frames(other, instance, "1")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "study_not_found"
    assert counting.requests == [] and not AccessEvent.objects.exists()


def test_reading_frames_needs_dicom_read(org, token_client):
    instance, _ = ingest_testdata(org, "CT_small.dcm")

    response = get_frames(token_client(org, ["dicom:write"]), instance, "1")

    assert response.status_code == 403


# --- metering -----------------------------------------------------------------------------------


def test_a_request_records_access_and_egress_once_with_the_bytes_sent(org, reader):
    instance, ds = ingest_testdata(org, "examples_ybr_color.dcm")
    expected = pydicom_frames_as_stored(ds)

    _, parts = parts_of(get_frames(reader, instance, "1,2,30"))

    sent = sum(len(expected[k]) for k in (0, 1, 29))
    assert sum(len(content) for _, content in parts) == sent
    event = AccessEvent.objects.for_org(org).get()
    assert (event.kind, event.bytes, event.instances) == ("retrieve", sent, 1)
    assert event.series_id == instance.series_id
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == sent


def test_head_answers_headers_and_records_nothing(org, reader):
    instance, _ = ingest_testdata(org, "CT_small.dcm")

    response = reader.head(frames_path(instance, "1"), HTTP_ACCEPT=STORED)

    assert response.status_code == 200
    media_type, params = parse_header_parameters(response["Content-Type"])
    assert media_type == "multipart/related" and params["type"] == "application/octet-stream"
    assert not AccessEvent.objects.exists()


# --- bulk data of compressed pixel data, as viewers ask for it ---------------------------------


def test_bulk_data_of_compressed_pixel_data_comes_as_octet_stream_with_its_syntax(org, reader):
    instance, ds = ingest_testdata(org, "examples_ybr_color.dcm")
    path = frames_path(instance, "").replace("/frames/", "/bulkdata/7FE00010")

    media_type, parts = parts_of(reader.get(path, HTTP_ACCEPT=STORED))

    assert media_type == "application/octet-stream"
    assert [content for _, content in parts] == pydicom_frames_as_stored(ds)
    assert {h["content-type"] for h, _ in parts} == {
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    }
    refused = reader.get(path, HTTP_ACCEPT=UNCOMPRESSED)
    assert refused.status_code == 406
    assert "transfer-syntax=*" in refused.json()["error"]["message"]


# --- the look-up of a frame request -------------------------------------------------------------


def _values(row: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f.attname: getattr(row, f.attname)
        for f in type(row)._meta.concrete_fields
        if f.name not in skip
    }


@pytest.mark.parametrize("indexed", [True, False])
def test_instance_by_uids_loads_what_the_orm_loads(org, other_org, indexed):
    instance, _ = ingest_testdata(org, "examples_ybr_color.dcm")
    Instance.objects.filter(pk=instance.pk).update(last_accessed_at=timezone.now())
    if not indexed:
        FrameIndex.objects.all().delete()
    expected = Instance.objects.select_related("study", "series", "location").get(pk=instance.pk)
    uids = {
        "study_uid": expected.study.study_uid,
        "series_uid": expected.series.series_uid,
        "sop_uid": expected.sop_instance_uid,
    }

    found = instance_by_uids(org=org, **uids)

    assert found is not None
    assert _values(found) == _values(expected)
    assert _values(found.study, ("metadata",)) == _values(expected.study, ("metadata",))
    assert _values(found.series, ("metadata",)) == _values(expected.series, ("metadata",))
    assert _values(found.location) == _values(expected.location)
    assert isinstance(found.metadata, dict) and found.metadata == expected.metadata
    if indexed:
        index = FrameIndex.objects.get(instance=instance)
        assert _values(found.frame_index, ("boundaries",)) == _values(index, ("boundaries",))
    else:
        with pytest.raises(FrameIndex.DoesNotExist):
            found.frame_index  # noqa: B018 - cached as absent, not looked up again
    assert instance_by_uids(org=other_org, **uids) is None
    assert instance_by_uids(org=org, **{**uids, "series_uid": "1.2.3"}) is None
    Study.objects.filter(pk=expected.study_id).update(trashed_at=timezone.now())
    assert instance_by_uids(org=org, **uids) is None
