"""The frame index is computed when an object arrives, whatever the door: STOW-RS and C-STORE
here (uploads and bucket imports go through the same pipeline call the other frame tests use),
and the frames are then read by range."""

from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from archive.models import FrameIndex, Instance
from tests.archive import test_dimse
from tests.archive.test_dicomweb_bulkdata import _add, _seeded, encapsulated
from tests.archive.test_dicomweb_frames import STORED, get_frames, parts_of
from tests.archive.test_dicomweb_support import STOW_TYPE, multipart

pytestmark = pytest.mark.django_db(transaction=True)

# The C-STORE listener of the DIMSE tests, on a free port.
listener = test_dimse.listener


def test_stow_rs_indexes_the_frames(org, token_client):
    client = token_client(org, ["dicom:read", "dicom:write"])
    seeded = _seeded()
    frames = [[b"\x01" * 40], [b"\x02" * 60], [b"\x03" * 20]]
    data = _add(seeded, encapsulated(seeded, frames, syntax=RLELossless, basic_offsets=False))

    stored = client.post("/dicomweb/studies", multipart([data]), content_type=STOW_TYPE)

    assert stored.status_code == 200, stored.content
    instance = Instance.objects.select_related("study", "series").get()
    assert FrameIndex.objects.get(instance=instance).frames == 3
    _, parts = parts_of(get_frames(client, instance, "3,1"))
    assert [content for _, content in parts] == [frames[2][0], frames[0][0]]


def test_c_store_indexes_the_frames(org, token_client, listener, dicom_ae):
    ds = test_dimse.ct(rows=32, columns=32, frames=4)

    status = test_dimse.send_one(
        listener, ds, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])]
    )

    assert status.Status == 0x0000
    instance = Instance.objects.select_related("study", "series").get()
    index = FrameIndex.objects.get(instance=instance)
    assert (index.frames, index.length) == (4, 4 * 32 * 32 * 2)
    _, [(_, content)] = parts_of(
        get_frames(token_client(org, ["dicom:read"]), instance, "4", STORED)
    )
    assert content == ds.PixelData[3 * 2048 :]
