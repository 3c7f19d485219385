"""Whole-slide images: a multi-frame slide of JPEG tiles (tens of MB, a thousand frames) is stored
through the normal ingest, indexed, and its tiles served by ranged reads of the object -- one
request per tile, less than two tiles' worth of bytes -- in constant memory, on the filesystem
and on the S3 test server."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from archive.dicomweb.frames import STORE_BYTES_HEADER
from archive.ingest import pipeline
from archive.models import FrameIndex, Instance
from archive.storage import store_for
from archive.storage.filesystem import FilesystemStore
from tests.archive.test_dicomweb_frames import STORED, UNCOMPRESSED, get_frames, parts_of
from tests.archive.wsi import Slide, tile_pool, write_slide

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db

SLIDE_MB = 24


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return tile_pool(256)


@pytest.fixture
def slide(tmp_path, pool) -> Slide:
    return write_slide(tmp_path / "slide.dcm", megabytes=SLIDE_MB, pool=pool)


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


def ingest_slide(org, slide: Slide) -> Instance:
    store = store_for(pipeline.location_primary(org))
    with open(slide.path, "rb") as source:
        spooled = pipeline.spool_file(store, source)
    result = pipeline.instance_ingest(org=org, spooled=spooled)
    assert result.status == "stored", result.reason
    return Instance.objects.select_related("study", "series", "location").get(
        sop_instance_uid=slide.sop_instance_uid
    )


@pytest.fixture
def fs_requests(monkeypatch) -> list[tuple[int, int | None]]:
    requests: list[tuple[int, int | None]] = []
    original = FilesystemStore.iter_bytes

    def iter_bytes(store: FilesystemStore, **kwargs: Any) -> Iterator[bytes]:
        requests.append((kwargs.get("offset", 0), kwargs.get("length")))
        return original(store, **kwargs)

    monkeypatch.setattr(FilesystemStore, "iter_bytes", iter_bytes)
    return requests


def test_a_slide_is_ingested_and_indexed_in_constant_memory(org, slide):
    size = slide.path.stat().st_size
    assert size > 20e6 and slide.frames > 500
    ingest_slide(org, write_slide(slide.path.with_name("warm-up.dcm"), megabytes=0.1))

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        instance = ingest_slide(org, slide)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    index = FrameIndex.objects.get(instance=instance)
    assert index.frames == slide.frames and index.length is None and not index.problem
    assert len(bytes(index.boundaries)) == 8 * (slide.frames + 1)
    # The frame index is 8 bytes a frame; the rest is a header and a few chunks.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a {size / 1e6:.0f} MB slide"


def test_tiles_are_served_by_one_ranged_read_each(org, reader, slide, fs_requests):
    instance = ingest_slide(org, slide)
    fs_requests.clear()

    for number in (1, slide.frames // 2, slide.frames):
        response = get_frames(reader, instance, str(number))
        _, [(headers, content)] = parts_of(response)
        assert content == slide.tile_bytes(number)
        assert (
            headers["content-type"]
            == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
        )
        store_bytes = int(response[STORE_BYTES_HEADER])
        assert store_bytes == len(content) + 8 < 2 * len(content)
        assert fs_requests[-1][1] == store_bytes
    assert len(fs_requests) == 3


def test_a_tile_is_served_in_constant_memory(org, reader, slide):
    instance = ingest_slide(org, slide)
    get_frames(reader, instance, "1", UNCOMPRESSED)  # imports and caches of a first request

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for accept in (STORED, UNCOMPRESSED):
            response = get_frames(reader, instance, str(slide.frames - 3), accept)
            body = b"".join(response.streaming_content)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert response.status_code == 200
    decoded = 256 * 256 * 3
    assert len(body) > decoded
    # A tile, its decoded pixels and the decoder's working copies (YCbCr to RGB in floats:
    # about 2 MiB for a 256 x 256 tile), never the slide (24 MB).
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.2f} MiB"


def test_a_decoded_tile_is_the_tile_pillow_decodes(org, reader, slide):
    instance = ingest_slide(org, slide)

    _, [(_, content)] = parts_of(get_frames(reader, instance, "5", UNCOMPRESSED))

    pixels = np.frombuffer(content, np.uint8).reshape(256, 256, 3).astype(int)
    pillow = np.asarray(Image.open(io.BytesIO(slide.tile_bytes(5))).convert("RGB")).astype(int)
    assert np.abs(pixels - pillow).mean() < 2  # two JPEG decoders, the same image


@pytest.mark.parametrize("offset_table", ["none", "basic", "extended"])
def test_each_offset_table_gives_the_same_tiles(org, reader, tmp_path, pool, offset_table):
    small = write_slide(tmp_path / "small.dcm", megabytes=1, pool=pool, offset_table=offset_table)
    instance = ingest_slide(org, small)

    numbers = [small.frames, 1, small.frames // 2]
    _, parts = parts_of(get_frames(reader, instance, ",".join(map(str, numbers))))

    assert [content for _, content in parts] == [small.tile_bytes(n) for n in numbers]
    assert FrameIndex.objects.get(instance=instance).frames == small.frames


def test_a_slide_on_the_s3_test_server(org, reader, slide, s3_bucket, make_bucket_location):
    make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    instance = ingest_slide(org, slide)
    assert instance.location.kind == "s3"
    ranges: list[str | None] = []
    store_for(instance.location).client.meta.events.register(
        "before-call.s3.GetObject",
        lambda params, **kwargs: ranges.append(params["headers"].get("Range")),
    )
    index = FrameIndex.objects.get(instance=instance)
    boundaries = np.frombuffer(bytes(index.boundaries), "<u8")

    for number in (slide.frames, 2):
        response = get_frames(reader, instance, str(number))
        _, [(_, content)] = parts_of(response)
        assert content == slide.tile_bytes(number)
        assert int(response[STORE_BYTES_HEADER]) < 2 * len(content)
    FrameIndex.objects.all().delete()  # an instance stored before frame indexes: read once
    _, [(_, again)] = parts_of(get_frames(reader, instance, "7"))

    assert again == slide.tile_bytes(7)
    first, last = int(boundaries[slide.frames - 1]), int(boundaries[slide.frames])
    assert ranges[:2] == [
        f"bytes={first}-{last - 1}",
        f"bytes={int(boundaries[1])}-{int(boundaries[2]) - 1}",
    ]
    assert FrameIndex.objects.get(instance=instance).frames == slide.frames
