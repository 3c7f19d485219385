"""WADO-RS retrieve, Accept negotiation (PS3.18 8.7): single-part ``application/dicom`` for an
instance, q-values and several ranges, transfer syntaxes per instance, whole instances
transcoded to Explicit (or Implicit) VR Little Endian as pydicom decodes them, the memory cap,
syntaxes that cannot be decoded, 406s that name what was asked and what can be served, metering
of the bytes sent, and tenant isolation on the new paths."""

from __future__ import annotations

import datetime as dt
import io
import warnings

import numpy as np
import pydicom
import pytest
from django.test import RequestFactory
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive.dicomweb.transcode import NotTranscodable, decoded_bytes
from archive.dicomweb.wado import InstanceRange, instance_ranges
from archive.models import AccessEvent, Instance
from billing.models import UsageEvent
from tests.archive import test_dicomweb_frames
from tests.archive.test_dicomweb_bulkdata import _add, _seeded, encapsulated
from tests.archive.test_dicomweb_frames import ingest_bytes, pydicom_file
from tests.archive.test_dicomweb_support import (
    SeededStudy,
    ingest_study,
    split_multipart,
    stored_bytes,
    study,
)

pytestmark = pytest.mark.django_db

# Every request made of the filesystem store (``counting.requests``).
counting = test_dicomweb_frames.counting

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DICOM = 'multipart/related; type="application/dicom"'
AS_EXPLICIT = f"{DICOM}; transfer-syntax={EXPLICIT}"
# pydicom's test files, one per stored syntax transcoding starts from.
COMPRESSED = {
    "examples_ybr_color.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline, 30 YBR frames
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
}
NATIVE = {
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "rtdose_expb.dcm": "1.2.840.10008.1.2.2",  # big endian, 32 bits, 15 frames
    "MR_small_implicit.dcm": IMPLICIT,
}


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


@pytest.fixture
def seeded(org) -> SeededStudy:
    """Two series (CT, MR) of two native instances each (Explicit VR Little Endian)."""
    return ingest_study(
        org,
        study(
            patient_id="PAT-ACC",
            patient_name="Noether^Emmy",
            study_date=dt.date(2026, 5, 4),
            modalities=("CT", "MR"),
        ),
    )


def instance_path(instance: Instance) -> str:
    return (
        f"/dicomweb/studies/{instance.study.study_uid}/series/{instance.series.series_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )


def seeded_path(seeded: SeededStudy, level: str, index: int = 0) -> str:
    path = f"/dicomweb/studies/{seeded.uid}"
    if level in ("series", "instance"):
        path += f"/series/{seeded.series_uids[index // 2]}"
    if level == "instance":
        path += f"/instances/{seeded.sop_uids[index]}"
    return path


def body_of(response) -> bytes:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    body = b"".join(response.streaming_content)
    if response.has_header("Content-Length"):
        assert int(response["Content-Length"]) == len(body)
    return body


def parts_of(response) -> list[tuple[dict[str, str], bytes]]:
    return split_multipart(response["Content-Type"], body_of(response))


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def original(name: str) -> Dataset:
    return read(pydicom_file(name).read_bytes())


def ingest_testdata(org, name: str, **changes: object) -> Instance:
    """One of pydicom's test files stored through the ingest pipeline, with ``changes`` to its
    attributes (UIDs, instance number) written in its own transfer syntax."""
    data = pydicom_file(name).read_bytes()
    if changes:
        ds = read(data)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        data = out.getvalue()
    return ingest_bytes(org, data)


def error_of(response) -> dict:
    assert response.status_code == 406, getattr(response, "content", b"")[:500]
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


def assert_same_instance_transcoded(data: bytes, source: Dataset, syntax: str = EXPLICIT) -> None:
    """``data`` is ``source`` in ``syntax``: same SOP Instance UID, the pixels pydicom decodes
    from the original."""
    ds = read(data)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == source.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = source.pixel_array
    assert np.array_equal(ds.pixel_array, expected)
    assert "PixelData" in ds and not ds["PixelData"].is_undefined_length


# --- parsing the header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "ranges"),
    [
        ("", [InstanceRange(True, None)]),
        ("*/*", [InstanceRange(True, None)]),
        ("multipart/*", [InstanceRange(True, None)]),
        ("application/dicom", [InstanceRange(False, None)]),
        ("application/*; transfer-syntax=*", [InstanceRange(False, None)]),
        (f"application/dicom; transfer-syntax={EXPLICIT}", [InstanceRange(False, EXPLICIT)]),
        ("multipart/related", [InstanceRange(True, None)]),
        ("multipart/related; type=application/dicom", [InstanceRange(True, None)]),
        (f'{DICOM}; transfer-syntax="{EXPLICIT}"', [InstanceRange(True, EXPLICIT)]),
        (
            f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT}",
            [InstanceRange(True, EXPLICIT)],
        ),
        ('multipart/related; type="application/octet-stream"', []),
        ("application/dicom+json, image/jpeg", []),
        # By q, then in the order written; q=0 is "not acceptable".
        (
            f"application/dicom; q=0.5, {DICOM}; transfer-syntax=*, application/dicom; q=0",
            [InstanceRange(True, None), InstanceRange(False, None)],
        ),
        (
            f"{DICOM}; q=0.9, application/dicom; transfer-syntax={IMPLICIT}; q=0.9, */*; q=0.1",
            [InstanceRange(True, None), InstanceRange(False, IMPLICIT), InstanceRange(True, None)],
        ),
    ],
)
def test_the_accept_header_is_read_into_instance_ranges_most_preferred_first(accept, ranges):
    request = RequestFactory().get("/", HTTP_ACCEPT=accept) if accept else RequestFactory().get("/")

    assert instance_ranges(request) == ranges


# --- single part --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom",
        "application/dicom; transfer-syntax=*",
        f'application/dicom; transfer-syntax="{EXPLICIT}"',
        "application/*",
        "application/dicom+json, application/dicom; q=0.5",
        f"{DICOM}; q=0.5, application/dicom",
    ],
)
def test_application_dicom_sends_the_instance_alone_byte_for_byte(org, reader, seeded, accept):
    response = reader.get(seeded_path(seeded, "instance", 1), HTTP_ACCEPT=accept)

    assert body_of(response) == seeded.files[1]
    assert response["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert int(response["Content-Length"]) == len(seeded.files[1])
    event = AccessEvent.objects.for_org(org).get()
    assert (event.kind, event.bytes, event.instances) == ("retrieve", len(seeded.files[1]), 1)
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == event.bytes


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        "multipart/*",
        f"application/dicom; q=0.4, {DICOM}",
        "application/dicom; q=0.4, multipart/related; type=application/dicom; q=0.6",
        "application/dicom; q=0, multipart/related",
    ],
)
def test_multipart_wins_when_preferred_for_an_instance(reader, seeded, accept):
    response = reader.get(seeded_path(seeded, "instance", 2), HTTP_ACCEPT=accept)

    ((headers, content),) = parts_of(response)
    assert content == seeded.files[2]
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"


@pytest.mark.parametrize("level", ["study", "series"])
@pytest.mark.parametrize("accept", ["application/dicom", "application/dicom; transfer-syntax=*"])
def test_application_dicom_of_a_study_or_series_is_406_naming_multipart(
    reader, seeded, level, accept
):
    error = error_of(reader.get(seeded_path(seeded, level), HTTP_ACCEPT=accept))

    assert error["code"] == "not_acceptable"
    message = error["message"]
    assert f"asked {accept!r}" in message
    assert f"can serve {DICOM}; transfer-syntax=* (as stored)" in message
    assert f"application/dicom (single part) for one instance only, and this is a {level}" in (
        message
    )
    assert f"{DICOM}; transfer-syntax=*" in error["fields"]["Accept"]
    assert not AccessEvent.objects.exists()


@pytest.mark.parametrize("level", ["study", "series"])
def test_a_study_or_series_takes_the_multipart_range_when_single_part_is_preferred(
    reader, seeded, level
):
    accept = "application/dicom, multipart/related; type=application/dicom; q=0.1"

    parts = parts_of(reader.get(seeded_path(seeded, level), HTTP_ACCEPT=accept))

    expected = seeded.files if level == "study" else seeded.files[:2]
    assert [content for _, content in parts] == expected


def test_head_of_a_single_part_instance_answers_headers_only(reader, seeded):
    response = reader.head(seeded_path(seeded, "instance"), HTTP_ACCEPT="application/dicom")

    assert response.status_code == 200
    assert response["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert int(response["Content-Length"]) == len(seeded.files[0])
    assert not response.content
    assert not AccessEvent.objects.exists()


# --- every 406 names what was asked and what can be served ------------------------------------


@pytest.mark.parametrize(
    ("accept", "why"),
    [
        ("application/dicom+json", None),
        ("image/jpeg", None),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', None),
        (
            f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50",
            "never to JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)",
        ),
        (f"{DICOM}; q=0", None),
    ],
)
def test_what_cannot_be_sent_is_406_naming_what_was_asked_and_what_can_be(
    reader, seeded, accept, why
):
    error = error_of(reader.get(seeded_path(seeded, "study"), HTTP_ACCEPT=accept))

    message = error["message"]
    assert f"asked {accept!r}" in message
    assert (
        f"can serve {DICOM}; transfer-syntax=* (as stored) or Explicit VR Little Endian "
        f"({EXPLICIT}) or Implicit VR Little Endian ({IMPLICIT})"
    ) in message
    assert error["fields"]["Accept"] == [
        f"{DICOM}; transfer-syntax=*",
        f"{DICOM}; transfer-syntax={EXPLICIT}",
        f"{DICOM}; transfer-syntax={IMPLICIT}",
    ]
    if why:
        assert why in message
    assert not AccessEvent.objects.exists()


def test_a_406_offers_single_part_for_an_instance(reader, seeded):
    error = error_of(reader.get(seeded_path(seeded, "instance"), HTTP_ACCEPT="image/png"))

    assert "application/dicom with the same transfer syntaxes" in error["message"]
    assert f"application/dicom; transfer-syntax={EXPLICIT}" in error["fields"]["Accept"]


# --- transcoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*COMPRESSED, *NATIVE])
@pytest.mark.parametrize("single", [False, True], ids=["multipart", "single-part"])
def test_an_instance_is_transcoded_to_explicit_vr_little_endian_as_pydicom_decodes_it(
    org, reader, name, single
):
    instance = ingest_testdata(org, name)
    stored = {**COMPRESSED, **NATIVE}[name]
    assert instance.transfer_syntax_uid == stored
    accept = f"application/dicom; transfer-syntax={EXPLICIT}" if single else AS_EXPLICIT

    response = reader.get(instance_path(instance), HTTP_ACCEPT=accept)

    if single:
        content = body_of(response)
        content_type = response["Content-Type"]
    else:
        ((headers, content),) = parts_of(response)
        content_type = headers["content-type"]
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert_same_instance_transcoded(content, original(name))
    # The instance is built before the response starts: its length is known.
    assert response.has_header("Content-Length")
    # Egress is what was sent: the transcoded size, not the stored one.
    event = AccessEvent.objects.for_org(org).get()
    assert (event.bytes, event.instances) == (len(content), 1)
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == len(content)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"])
def test_an_instance_is_transcoded_to_implicit_vr_little_endian(org, reader, name):
    instance = ingest_testdata(org, name)

    ((headers, content),) = parts_of(
        reader.get(instance_path(instance), HTTP_ACCEPT=f"{DICOM}; transfer-syntax={IMPLICIT}")
    )

    assert headers["content-type"] == f"application/dicom; transfer-syntax={IMPLICIT}"
    assert_same_instance_transcoded(content, original(name), IMPLICIT)


def test_a_deflated_instance_is_inflated_to_explicit_vr_little_endian(org, reader):
    instance = ingest_testdata(org, "image_dfl.dcm")

    content = body_of(
        reader.get(
            instance_path(instance), HTTP_ACCEPT=f"application/dicom; transfer-syntax={EXPLICIT}"
        )
    )

    assert_same_instance_transcoded(content, original("image_dfl.dcm"))


def test_an_instance_stored_in_the_asked_syntax_is_sent_as_stored(org, reader, counting):
    instance = ingest_testdata(org, "CT_small.dcm")

    response = reader.get(instance_path(instance), HTTP_ACCEPT=AS_EXPLICIT)

    ((_, content),) = parts_of(response)
    assert content == pydicom_file("CT_small.dcm").read_bytes()


def _mixed_study(org) -> list[Instance]:
    """One study of one series: a JPEG Baseline instance, then a native one, then RLE."""
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        ingest_testdata(
            org,
            name,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SeriesNumber=1,
            InstanceNumber=number,
        )
        for number, name in enumerate(
            ["SC_rgb_jpeg_dcmtk.dcm", "CT_small.dcm", "MR_small_RLE.dcm"], start=1
        )
    ]


def test_a_study_is_sent_per_instance_as_stored_or_transcoded(org, reader):
    jpeg, native, rle = _mixed_study(org)

    response = reader.get(f"/dicomweb/studies/{jpeg.study.study_uid}", HTTP_ACCEPT=AS_EXPLICIT)
    parts = parts_of(response)

    assert [h["content-type"] for h, _ in parts] == [
        f"application/dicom; transfer-syntax={EXPLICIT}"
    ] * 3
    assert_same_instance_transcoded(parts[0][1], original("SC_rgb_jpeg_dcmtk.dcm"))
    assert parts[1][1] == stored_bytes(native)
    assert_same_instance_transcoded(parts[2][1], original("MR_small_RLE.dcm"))
    # The third instance is transcoded as its part starts: the total is not known up front.
    assert not response.has_header("Content-Length")
    event = AccessEvent.objects.for_org(org).get()
    assert (event.bytes, event.instances) == (sum(len(c) for _, c in parts), 3)
    assert UsageEvent.objects.for_org(org).get(meter="egress.bytes").quantity == event.bytes


def test_each_instance_takes_the_most_preferred_syntax_it_can_be_sent_in(org, reader):
    jpeg, native, rle = _mixed_study(org)
    accept = (
        f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50, "
        f"multipart/related; type=application/dicom; transfer-syntax={IMPLICIT}; q=0.5"
    )

    parts = parts_of(reader.get(f"/dicomweb/studies/{jpeg.study.study_uid}", HTTP_ACCEPT=accept))

    assert [h["content-type"].split("=")[-1] for h, _ in parts] == [
        "1.2.840.10008.1.2.4.50",
        IMPLICIT,
        IMPLICIT,
    ]
    assert read(parts[0][1]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert_same_instance_transcoded(parts[1][1], original("CT_small.dcm"), IMPLICIT)
    assert_same_instance_transcoded(parts[2][1], original("MR_small_RLE.dcm"), IMPLICIT)


def test_a_stored_syntax_names_itself_in_a_406_of_a_study_stored_in_one_syntax(org, reader):
    instance = ingest_testdata(org, "MR_small_RLE.dcm")

    error = error_of(
        reader.get(f"/dicomweb/studies/{instance.study.study_uid}", HTTP_ACCEPT="image/jpeg")
    )

    assert f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.5" in error["fields"]["Accept"]
    assert "* (as stored) or RLE Lossless (1.2.840.10008.1.2.5) or Explicit" in error["message"]


def test_head_of_a_transcoded_instance_has_no_length_and_transcodes_nothing(org, reader, counting):
    instance = ingest_testdata(org, "MR_small_RLE.dcm")

    response = reader.head(instance_path(instance), HTTP_ACCEPT=AS_EXPLICIT)

    assert response.status_code == 200
    assert not response.has_header("Content-Length")
    assert counting.requests == [] and not AccessEvent.objects.exists()


# --- what cannot be transcoded ------------------------------------------------------------------


def test_decoded_bytes_come_from_the_index(org):
    instance = ingest_testdata(org, "examples_ybr_color.dcm")

    assert decoded_bytes(instance.metadata) == 30 * 240 * 320 * 3


@pytest.mark.parametrize("single", [False, True], ids=["multipart", "single-part"])
def test_an_instance_beyond_the_transcoding_cap_is_406_saying_why(
    org, reader, settings, counting, single
):
    settings.WADO_TRANSCODE_MAX_BYTES = 30 * 240 * 320 * 3 - 1
    instance = ingest_testdata(org, "examples_ybr_color.dcm")
    accept = f"application/dicom; transfer-syntax={EXPLICIT}" if single else AS_EXPLICIT

    error = error_of(reader.get(instance_path(instance), HTTP_ACCEPT=accept))

    assert error["code"] == "not_acceptable"
    message = error["message"]
    assert f"asked {accept!r}" in message
    assert f"instance {instance.sop_instance_uid}" in message
    assert "takes 6,912,000 bytes decoded, more than the 6,911,999 bytes" in message
    assert "WADO_TRANSCODE_MAX_BYTES" in message
    assert "transfer-syntax=* sends the stored bytes" in message
    assert "can serve " + DICOM + "; transfer-syntax=* (as stored) or JPEG Baseline" in message
    assert counting.requests == [] and not AccessEvent.objects.exists()


def test_beyond_the_cap_a_less_preferred_range_sends_it_as_stored(org, reader, settings):
    settings.WADO_TRANSCODE_MAX_BYTES = 1000
    instance = ingest_testdata(org, "MR_small_RLE.dcm")
    accept = f"{AS_EXPLICIT}, {DICOM}; transfer-syntax=*; q=0.2"

    ((headers, content),) = parts_of(reader.get(instance_path(instance), HTTP_ACCEPT=accept))

    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.5"
    assert content == pydicom_file("MR_small_RLE.dcm").read_bytes()


@pytest.mark.parametrize("single", [False, True], ids=["multipart", "single-part"])
def test_pixel_data_that_does_not_decode_is_406_naming_the_stored_syntax(org, reader, single):
    instance = ingest_testdata(org, "JPEG-lossy.dcm")  # 12-bit JPEG Extended: libjpeg refuses it
    accept = f"application/dicom; transfer-syntax={EXPLICIT}" if single else AS_EXPLICIT

    error = error_of(reader.get(instance_path(instance), HTTP_ACCEPT=accept))

    assert error["code"] == "not_decodable"
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in error["message"]
    assert "transfer-syntax=* sends the stored bytes" in error["message"]
    assert not AccessEvent.objects.exists()


def test_a_syntax_without_a_decoder_is_406_naming_it_before_reading(org, reader, counting):
    seeded = _seeded()
    jxl = encapsulated(
        seeded, [[b"\x00\x00\x00\x0cJXL " + b"\x00" * 10]], syntax="1.2.840.10008.1.2.4.112"
    )
    _add(seeded, jxl)
    ingest_study(org, seeded)
    instance = Instance.objects.select_related("study", "series").get()

    error = error_of(reader.get(instance_path(instance), HTTP_ACCEPT=AS_EXPLICIT))

    assert error["code"] == "not_acceptable"
    assert "(1.2.840.10008.1.2.4.112), which cannot be decoded here" in error["message"]
    assert f"asked {AS_EXPLICIT!r}" in error["message"]
    assert counting.requests == []


def test_a_later_instance_that_does_not_decode_cuts_the_response_short(org, reader):
    study_uid, series_uid = generate_uid(), generate_uid()
    common = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SeriesNumber": 1}
    first = ingest_testdata(org, "MR_small_RLE.dcm", InstanceNumber=1, **common)
    ingest_testdata(org, "JPEG-lossy.dcm", InstanceNumber=2, **common)

    response = reader.get(f"/dicomweb/studies/{study_uid}", HTTP_ACCEPT=AS_EXPLICIT)
    assert response.status_code == 200
    received = []
    with pytest.raises(NotTranscodable):
        # The test client closes the response when its iteration ends, as a server would.
        for chunk in response.streaming_content:
            received.append(chunk)

    body = b"".join(received)
    assert b"1.2.840.10008.1.2.4.51" not in body.split(b"\r\n\r\n", 1)[0]
    event = AccessEvent.objects.for_org(org).get()
    assert event.instances == 1
    # The first part whole, nothing of the second: the bytes of the transcoded RLE instance.
    first_part = body.split(b"\r\n\r\n", 1)[1]
    assert event.bytes == len(first_part) - 2
    assert read(first_part[:-2]).SOPInstanceUID == first.sop_instance_uid


# --- tenants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    ["application/dicom", AS_EXPLICIT, f"application/dicom; transfer-syntax={EXPLICIT}"],
)
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_another_organizations_uids_are_404_on_the_new_paths(
    org, other_org, token_client, seeded, counting, accept, level
):
    theirs = token_client(other_org, ["dicom:read"])

    response = theirs.get(seeded_path(seeded, level, 1), HTTP_ACCEPT=accept)

    assert response.status_code == 404
    assert counting.requests == [] and not AccessEvent.objects.exists()
