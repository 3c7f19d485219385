"""Instance retrieve media types with a real DICOMweb client (dicomweb-client) and plain HTTP
against a live server: as stored, transcoded to Explicit VR Little Endian, and single-part
``application/dicom``."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
import requests

from archive.models import AccessEvent
from billing.models import UsageEvent
from tests.archive import test_dicomweb_bulkdata
from tests.archive.test_dicomweb_frames import ingest_testdata, pydicom_file

pytestmark = pytest.mark.django_db(transaction=True)

EXPLICIT = "1.2.840.10008.1.2.1"
# dicomweb-client on the live server, with a dicom:read token of ``org``.
http_client = test_dicomweb_bulkdata.http_client


def _uids(instance) -> tuple[str, str, str]:
    return instance.study.study_uid, instance.series.series_uid, instance.sop_instance_uid


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "examples_ybr_color.dcm"])
def test_retrieve_instance_as_stored_and_transcoded(org, http_client, name):
    instance, original = ingest_testdata(org, name)

    as_stored = http_client.retrieve_instance(
        *_uids(instance), media_types=(("application/dicom", "*"),)
    )
    plain = http_client.retrieve_instance(*_uids(instance), media_types=("application/dicom",))
    decoded = http_client.retrieve_instance(
        *_uids(instance), media_types=(("application/dicom", EXPLICIT),)
    )

    stored_syntax = original.file_meta.TransferSyntaxUID
    assert as_stored.file_meta.TransferSyntaxUID == stored_syntax
    assert plain.file_meta.TransferSyntaxUID == stored_syntax
    assert as_stored.PixelData == original.PixelData
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(_pixels(decoded), _pixels(original))
    events = AccessEvent.objects.for_org(org).order_by("id")
    assert [e.instances for e in events] == [1, 1, 1]
    egress = UsageEvent.objects.for_org(org).filter(meter="egress.bytes").order_by("id")
    assert [u.quantity for u in egress] == [e.bytes for e in events]
    assert events[2].bytes > events[0].bytes  # the decoded instance is what was sent


def test_retrieve_study_transcoded_with_dicomweb_client(org, http_client):
    instance, original = ingest_testdata(org, "MR_small_RLE.dcm")

    (decoded,) = http_client.retrieve_study(
        instance.study.study_uid, media_types=(("application/dicom", EXPLICIT),)
    )

    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(_pixels(decoded), _pixels(original))


def test_single_part_application_dicom_over_http(org, live_server, make_token):
    instance, _ = ingest_testdata(org, "MR_small_RLE.dcm")
    _, secret = make_token(org, ["dicom:read"])
    study, series, sop = _uids(instance)
    url = f"{live_server.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"

    with requests.Session() as http:
        stored = http.get(
            url,
            headers={"Authorization": f"Bearer {secret}", "Accept": "application/dicom"},
            timeout=30,
        )
        decoded = http.get(
            url,
            headers={
                "Authorization": f"Bearer {secret}",
                "Accept": f"application/dicom; transfer-syntax={EXPLICIT}",
            },
            timeout=30,
        )

    assert stored.status_code == 200
    assert (
        stored.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.5"
    )
    assert stored.content == pydicom_file("MR_small_RLE.dcm").read_bytes()
    assert decoded.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert int(decoded.headers["Content-Length"]) == len(decoded.content)
    ds = pydicom.dcmread(io.BytesIO(decoded.content))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert [e.bytes for e in AccessEvent.objects.for_org(org).order_by("id")] == [
        len(stored.content),
        len(decoded.content),
    ]
