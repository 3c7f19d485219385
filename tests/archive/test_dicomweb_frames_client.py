"""Frames and bulk data with a real DICOMweb client (dicomweb-client) against a live server over
HTTP: ``retrieve_instance_frames`` and ``retrieve_bulkdata`` round trips, as stored and
decoded."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from archive.models import AccessEvent
from tests.archive import test_dicomweb_bulkdata
from tests.archive.test_dicomweb_frames import ingest_testdata, pydicom_frames_as_stored

pytestmark = pytest.mark.django_db(transaction=True)

PIXEL_DATA = "7FE00010"
# dicomweb-client on the live server, with a dicom:read token of ``org``.
http_client = test_dicomweb_bulkdata.http_client


def _uids(instance) -> tuple[str, str, str]:
    return instance.study.study_uid, instance.series.series_uid, instance.sop_instance_uid


def test_retrieve_instance_frames_of_a_multi_frame_jpeg(org, http_client):
    instance, ds = ingest_testdata(org, "examples_ybr_color.dcm")
    stored = pydicom_frames_as_stored(ds)

    any_type = http_client.retrieve_instance_frames(*_uids(instance), frame_numbers=[3, 1])
    as_jpeg = http_client.retrieve_instance_frames(
        *_uids(instance), frame_numbers=[30], media_types=("image/jpeg",)
    )
    as_octets = http_client.retrieve_instance_frames(
        *_uids(instance),
        frame_numbers=[2],
        media_types=(("application/octet-stream", "*"),),
    )
    decoded = http_client.retrieve_instance_frames(
        *_uids(instance), frame_numbers=[5], media_types=("application/octet-stream",)
    )

    assert [bytes(frame) for frame in any_type] == [stored[2], stored[0]]
    assert [bytes(frame) for frame in as_jpeg] == [stored[29]]
    assert [bytes(frame) for frame in as_octets] == [stored[1]]
    assert [bytes(frame) for frame in decoded] == [ds.pixel_array[4].tobytes()]
    # Four frame requests of one series in a minute: one line of the access log.
    assert AccessEvent.objects.for_org(org).filter(kind="retrieve").get().reads == 4


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "rtdose_expb.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]
)
def test_retrieve_instance_frames_decoded_as_pydicom_decodes(org, http_client, name):
    instance, ds = ingest_testdata(org, name)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array if count > 1 else ds.pixel_array[np.newaxis]

    frames = http_client.retrieve_instance_frames(
        *_uids(instance),
        frame_numbers=list(range(1, count + 1)),
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )

    assert [bytes(frame) for frame in frames] == [
        np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")).tobytes() for p in pixels
    ]


def test_retrieve_bulkdata_of_compressed_and_native_pixel_data(org, http_client):
    jpeg, jpeg_ds = ingest_testdata(org, "examples_ybr_color.dcm")
    native, native_ds = ingest_testdata(org, "CT_small.dcm")

    jpeg_uri = http_client.retrieve_instance_metadata(*_uids(jpeg))[PIXEL_DATA]["BulkDataURI"]
    native_uri = http_client.retrieve_instance_metadata(*_uids(native))[PIXEL_DATA]["BulkDataURI"]

    as_stored = http_client.retrieve_bulkdata(
        jpeg_uri, media_types=(("application/octet-stream", "*"),)
    )
    assert [bytes(frame) for frame in as_stored] == list(
        generate_frames(jpeg_ds.PixelData, number_of_frames=30)
    )
    assert http_client.retrieve_bulkdata(native_uri) == [native_ds.PixelData]
    # pydicom resolves a BulkDataURI through the client, as a viewer would.
    resolved = pydicom.Dataset.from_json(
        http_client.retrieve_instance_metadata(*_uids(native)),
        bulk_data_uri_handler=lambda uri: bytes(http_client.retrieve_bulkdata(uri)[0]),
    )
    assert resolved.PixelData == native_ds.PixelData
