"""WADO-RS thumbnails: a representative frame, small, rendered once and then served from the
derived object kept in the primary location (no decoding), metered as derived storage and never
as images, removed when its instance is purged or its study trashed; the reading rules of
WADO-RS (archive tier, another organization, one access record)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from django.utils import timezone
from PIL import Image
from pydicom.uid import generate_uid

from archive.dicomweb import rendered, thumbnails
from archive.dicomweb.tasks import derived_objects_sweep
from archive.models import (
    AccessEvent,
    DerivedObject,
    Instance,
    PendingObject,
    RestoreRequest,
    Series,
    StorageLocation,
    Study,
)
from archive.retention.services import study_purge, study_trash
from archive.storage import StorageUnavailable, store_for
from archive.storage.s3 import S3Store
from billing.models import StorageDelta, UsageEvent
from tenants.context import Actor
from tests.archive.test_dicomweb_rendered import (
    Stored,
    assert_close,
    ct,
    from_testdata,
    reference,
    sr_in,
)
from tests.archive.test_restores_support import to_tier
from tests.archive.wsi import tile_pool, write_slide

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[int, int]]:
    """Every frame decoded for a rendering: (instance id, frame number)."""
    calls: list[tuple[int, int]] = []
    original = rendered.frame_read

    def counting(instance, number):
        calls.append((instance.pk, number))
        return original(instance, number)

    monkeypatch.setattr(rendered, "frame_read", counting)
    monkeypatch.setattr(thumbnails, "frame_read", counting)
    return calls


def image_of(response) -> np.ndarray:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    assert int(response["Content-Length"]) == len(response.content)
    return np.asarray(Image.open(io.BytesIO(response.content)))


def series_of(count: int, *, study_uid: str | None = None, series_number: int = 1, **kwargs: Any):
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    datasets = []
    for number in range(1, count + 1):
        ds = ct(study_uid=study_uid, series_uid=series_uid, number=number, **kwargs)
        ds.SeriesNumber = series_number
        datasets.append(ds)
    return datasets


def instance_with(org, sop_uid: Any) -> Instance:
    return Instance.objects.for_org(org).get(sop_instance_uid=str(sop_uid))


# --- what is shown ----------------------------------------------------------------------------


def test_instance_thumbnail_is_the_rendering_fitted_into_128(org, reader):
    ds = ct(rows=256, columns=192)
    stored = Stored(org, [ds])

    response = reader.get(f"{stored.instance()}/thumbnail")

    assert response["Content-Type"] == "image/jpeg"
    image = image_of(response)
    assert image.shape == (128, 96)
    expected = Image.fromarray(reference(ds).astype(np.uint8)).resize(
        (96, 128), Image.Resampling.BILINEAR
    )
    assert_close(image, np.asarray(expected).astype(float), lossy=True)


def test_series_thumbnail_is_its_middle_instance_by_instance_number(org, reader, decodes):
    datasets = series_of(5)
    stored = Stored(org, list(reversed(datasets)))  # stored out of order

    image_of(reader.get(f"{stored.series()}/thumbnail"))

    middle = instance_with(org, datasets[2].SOPInstanceUID)
    assert decodes == [(middle.pk, 1)]
    assert DerivedObject.objects.for_org(org).get().instance == middle


def test_study_thumbnail_is_its_first_image_series(org, reader, decodes):
    study_uid = generate_uid()
    report = sr_in(study_uid)
    report.SeriesNumber = 1
    second = series_of(3, study_uid=study_uid, series_number=3)
    first = series_of(1, study_uid=study_uid, series_number=2)
    stored = Stored(org, [report, *second, *first])

    image_of(reader.get(f"{stored.study()}/thumbnail"))

    assert decodes == [(instance_with(org, first[0].SOPInstanceUID).pk, 1)]


def test_a_multiframe_instance_shows_its_middle_frame_and_a_frame_its_own(org, reader, decodes):
    ds = ct(frames=5, window=None)
    stored = Stored(org, [ds])
    instance = Instance.objects.for_org(org).get()

    image_of(reader.get(f"{stored.instance()}/thumbnail"))
    image_of(reader.get(f"{stored.instance()}/frames/2/thumbnail"))

    assert decodes == [(instance.pk, 3), (instance.pk, 2)]


def test_slide_label_images_are_never_the_thumbnail(org, reader, decodes):
    datasets = series_of(3)
    for ds, image_type in zip(datasets, ("LABEL", "VOLUME", "OVERVIEW"), strict=True):
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "NONE"]
    stored = Stored(org, datasets)

    image_of(reader.get(f"{stored.series()}/thumbnail"))

    assert decodes == [(instance_with(org, datasets[1].SOPInstanceUID).pk, 1)]


def test_when_the_middle_instance_cannot_be_shown_its_neighbour_is(org, reader, decodes):
    datasets = series_of(3)
    datasets[1].ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    stored = Stored(org, datasets)

    image_of(reader.get(f"{stored.series()}/thumbnail"))

    assert decodes == [(instance_with(org, datasets[0].SOPInstanceUID).pk, 1)]


def sm_instance(study_uid: str, series_uid: str, number: int, frames: int, image_type: str):
    ds = ct(study_uid=study_uid, series_uid=series_uid, number=number, frames=frames)
    ds.Modality = "SM"
    ds.ImageType = ["DERIVED", "PRIMARY", image_type, "RESAMPLED"]
    return ds


@pytest.mark.parametrize("with_thumbnail_image", [True, False])
def test_a_slide_series_shows_its_thumbnail_image_else_its_lowest_level(
    org, reader, decodes, with_thumbnail_image
):
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [
        sm_instance(study_uid, series_uid, 1, 16, "VOLUME"),
        sm_instance(study_uid, series_uid, 2, 4, "VOLUME"),
        sm_instance(study_uid, series_uid, 3, 1, "LABEL"),
    ]
    if with_thumbnail_image:
        datasets.append(sm_instance(study_uid, series_uid, 4, 1, "THUMBNAIL"))
    stored = Stored(org, datasets)

    image_of(reader.get(f"{stored.series()}/thumbnail"))

    expected = datasets[3] if with_thumbnail_image else datasets[1]
    (instance_id, _), *_ = decodes
    assert instance_id == instance_with(org, expected.SOPInstanceUID).pk


def test_a_small_tiled_slide_is_shown_whole(org, reader, decodes, tmp_path):
    pool = tile_pool(64, count=4)
    average = sum(map(len, pool)) / len(pool) + 16
    slide = write_slide(tmp_path / "slide.dcm", megabytes=9 * average / 1e6, tile=64, pool=pool)
    assert slide.frames == 9
    ds = pydicom.dcmread(slide.path)
    stored = Stored(org, [ds])

    image = image_of(
        reader.get(f"{stored.instance()}/thumbnail?viewport=96,96", HTTP_ACCEPT="image/png")
    )

    assert len(decodes) == 9
    tiles = ds.pixel_array  # (9, 64, 64, 3), RGB
    whole = np.vstack([np.hstack(list(tiles[row * 3 : row * 3 + 3])) for row in range(3)])
    expected = np.asarray(Image.fromarray(whole).resize((96, 96), Image.Resampling.BILINEAR))
    assert image.shape == (96, 96, 3)
    assert np.abs(image.astype(float) - expected.astype(float)).mean() < 6
    assert DerivedObject.objects.for_org(org).get().variant == "f0-96x96-png"


def test_a_large_slide_on_s3_is_shown_by_its_middle_tile_read_by_range(
    org, reader, decodes, s3_bucket, make_bucket_location, monkeypatch, tmp_path
):
    make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    slide = write_slide(tmp_path / "slide.dcm", megabytes=3)
    assert slide.frames > thumbnails.MAX_SLIDE_TILES
    Stored(org, [pydicom.dcmread(slide.path)])
    instance = Instance.objects.for_org(org).select_related("location").get()
    consumed = [0]
    original = S3Store.iter_bytes

    def counting(self, **kwargs):
        for chunk in original(self, **kwargs):
            consumed[0] += len(chunk)
            yield chunk

    monkeypatch.setattr(S3Store, "iter_bytes", counting)
    url = (
        f"/dicomweb/studies/{slide.study_uid}/series/{slide.series_uid}"
        f"/instances/{slide.sop_instance_uid}/thumbnail"
    )

    image = image_of(reader.get(url))

    assert image.shape == (128, 128, 3)
    assert decodes == [(instance.pk, (slide.frames + 1) // 2)]
    # One ranged read of that tile (and the thumbnail kept in the same bucket: not a read).
    assert consumed[0] < 2 * slide.largest_tile


@pytest.mark.parametrize(
    ("query", "accept", "size", "media_type"),
    [
        ("viewport=64,64", "", (64, 32), "image/jpeg"),
        ("viewport=512,300", "image/png", (512, 256), "image/png"),
        ("", "image/gif", (128, 64), "image/gif"),
        ("accept=image/png", "application/dicom", (128, 64), "image/png"),
    ],
)
def test_viewport_and_media_type(org, reader, query, accept, size, media_type):
    stored = Stored(org, [ct(rows=100, columns=200)])
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    response = reader.get(f"{stored.instance()}/thumbnail?{query}", **headers)

    assert response["Content-Type"] == media_type
    assert Image.open(io.BytesIO(response.content)).size == size


def test_not_acceptable_names_what_can_be_served(org, reader):
    stored = Stored(org, [ct()])

    response = reader.get(f"{stored.instance()}/thumbnail", HTTP_ACCEPT="application/dicom")

    assert response.status_code == 406
    assert "image/jpeg, image/png, image/gif" in response.json()["error"]["message"]


# --- kept and metered -------------------------------------------------------------------------


def test_second_request_is_served_from_the_kept_object_without_decoding(org, reader, decodes):
    ds = ct(rows=128, columns=128)
    stored = Stored(org, [ds])
    instance = Instance.objects.for_org(org).get()
    study = Study.objects.for_org(org).get()
    images_before = (study.instance_count, study.total_bytes)

    first = reader.get(f"{stored.instance()}/thumbnail")
    second = reader.get(f"{stored.instance()}/thumbnail")

    assert second.content == first.content
    assert decodes == [(instance.pk, 1)]
    row = DerivedObject.objects.for_org(org).get()
    assert row.kind == "thumbnail" and row.tier == "hot" and row.size_bytes == len(first.content)
    assert row.object_key.startswith(f"org-{org.pk}/derived/thumbnails/")
    primary = StorageLocation.objects.for_org(org).get(role="primary")
    assert row.location == primary
    kept = b"".join(store_for(primary).iter_bytes(key=row.object_key, tier="hot"))
    assert kept == first.content
    # Metered as derived storage, once; the images' storage, instances and bytes unchanged.
    (delta,) = StorageDelta.objects.filter(organization=org, meter="storage.derived")
    assert (delta.tier, delta.delta_bytes) == ("hot", len(first.content))
    assert StorageDelta.objects.filter(organization=org, meter="storage").count() == 1
    assert Instance.objects.for_org(org).count() == 1
    study.refresh_from_db()
    assert (study.instance_count, study.total_bytes) == images_before
    assert not PendingObject.objects.exists()
    # Both reads are accesses, with the bytes sent: one line of the access log (one reader, one
    # series, one minute), each read metered as egress.
    (event,) = AccessEvent.objects.for_org(org)
    assert (event.kind, event.reads, event.bytes) == ("thumbnail", 2, 2 * len(first.content))
    egress = UsageEvent.objects.filter(organization=org, meter="egress.bytes")
    assert sorted(egress.values_list("quantity", flat=True)) == [len(first.content)] * 2


def test_a_thumbnail_marks_no_image_read(org, reader):
    # A list of studies with their thumbnails is no sign that the images are needed: tier
    # policies count days since the images were last read, and a thumbnail does not reset that.
    datasets = series_of(3)
    stored = Stored(org, datasets)

    reader.get(f"{stored.series()}/thumbnail")
    reader.get(f"{stored.study()}/thumbnail")

    assert not Instance.objects.for_org(org).filter(last_accessed_at__isnull=False).exists()
    assert not Series.objects.for_org(org).filter(last_accessed_at__isnull=False).exists()
    assert not Study.objects.for_org(org).filter(last_accessed_at__isnull=False).exists()
    assert AccessEvent.objects.for_org(org).get().reads == 2


def test_each_size_and_media_type_is_kept_apart(org, reader, decodes):
    stored = Stored(org, [ct()])
    url = f"{stored.instance()}/thumbnail"

    for _ in range(2):
        reader.get(url)
        reader.get(f"{url}?viewport=64,64")
        reader.get(url, HTTP_ACCEPT="image/png")

    assert len(decodes) == 3
    assert sorted(DerivedObject.objects.for_org(org).values_list("variant", flat=True)) == [
        "f1-128x128-jpg",
        "f1-128x128-png",
        "f1-64x64-jpg",
    ]


def test_a_series_thumbnail_follows_the_series_when_it_grows(org, reader, decodes):
    datasets = series_of(4)
    stored = Stored(org, datasets[:2])

    reader.get(f"{stored.series()}/thumbnail")
    Stored(org, datasets[2:])
    reader.get(f"{stored.series()}/thumbnail")

    assert [pk for pk, _ in decodes] == [
        instance_with(org, datasets[0].SOPInstanceUID).pk,
        instance_with(org, datasets[1].SOPInstanceUID).pk,
    ]


def test_a_kept_object_that_is_gone_is_replaced(org, reader, decodes, archive_root):
    stored = Stored(org, [ct()])
    reader.get(f"{stored.instance()}/thumbnail")
    row = DerivedObject.objects.for_org(org).get()
    (archive_root / "hot" / row.object_key).unlink()

    response = reader.get(f"{stored.instance()}/thumbnail")

    assert response.status_code == 200 and len(decodes) == 2
    new = DerivedObject.objects.for_org(org).get()
    assert new.pk != row.pk
    deltas = StorageDelta.objects.filter(organization=org, meter="storage.derived")
    assert sorted(d.delta_bytes for d in deltas) == sorted(
        [row.size_bytes, -row.size_bytes, new.size_bytes]
    )


def test_a_store_that_fails_still_answers_without_keeping(org, reader, monkeypatch):
    stored = Stored(org, [ct()])

    def failing(self, **kwargs):
        raise StorageUnavailable("disk full")

    monkeypatch.setattr(
        type(store_for(StorageLocation.objects.for_org(org).get())), "put_file", failing
    )

    response = reader.get(f"{stored.instance()}/thumbnail")

    assert response.status_code == 200
    assert not DerivedObject.objects.exists()
    assert not StorageDelta.objects.filter(meter="storage.derived").exists()
    assert not PendingObject.objects.exists()


def test_two_requests_keeping_the_same_thumbnail_keep_one(org, reader, monkeypatch):
    stored = Stored(org, [ct()])
    instance = Instance.objects.for_org(org).select_related("study").get()
    data = rendered.encode(Image.new("L", (8, 8)), "image/jpeg", 80)
    thumbnails.derived_store(
        org=org, instance=instance, variant="f1-128x128-jpg", data=data, media_type="image/jpeg"
    )

    second = thumbnails.derived_store(
        org=org, instance=instance, variant="f1-128x128-jpg", data=data, media_type="image/jpeg"
    )

    assert second is None
    assert DerivedObject.objects.count() == 1
    assert StorageDelta.objects.filter(meter="storage.derived").count() == 1
    assert not PendingObject.objects.exists()
    store = store_for(instance.location)
    assert len(list((store.root / "hot" / f"org-{org.pk}" / "derived").rglob("*.jpg"))) == 1
    assert reader.get(f"{stored.instance()}/thumbnail").content == data


# --- invalidated ------------------------------------------------------------------------------


def test_trashed_and_purged_studies_lose_their_thumbnails(org, reader, archive_root, settings):
    trashed = Stored(org, series_of(2))
    purged = Stored(org, series_of(1))
    kept = Stored(org, series_of(1))
    for stored in (trashed, purged, kept):
        assert reader.get(f"{stored.series()}/thumbnail").status_code == 200
    rows = {
        r.instance.study.study_uid: r
        for r in DerivedObject.objects.select_related("instance__study")
    }
    actor = Actor.system("tests")
    study_trash(
        org=org,
        study=Study.objects.for_org(org).get(study_uid=trashed.datasets[0].StudyInstanceUID),
        actor=actor,
        reason="wrong patient",
    )
    victim = Study.objects.for_org(org).get(study_uid=purged.datasets[0].StudyInstanceUID)
    study_trash(org=org, study=victim, actor=actor, reason="duplicate")
    Study.objects.filter(pk=victim.pk).update(purge_after=timezone.now())
    study_purge(org=org, study=Study.objects.get(pk=victim.pk), limit=100)
    assert DerivedObject.objects.filter(instance__isnull=True).count() == 1

    assert derived_objects_sweep() == 2
    assert derived_objects_sweep() == 0

    (left,) = DerivedObject.objects.all()
    assert left.pk == rows[kept.datasets[0].StudyInstanceUID].pk
    for uid, row in rows.items():
        on_disk = (archive_root / "hot" / row.object_key).exists()
        assert on_disk == (row.pk == left.pk), uid
    total = sum(
        StorageDelta.objects.filter(meter="storage.derived").values_list("delta_bytes", flat=True)
    )
    assert total == left.size_bytes
    # A trashed study is not found; its thumbnail is gone with it.
    assert reader.get(f"{trashed.series()}/thumbnail").status_code == 404


def test_the_sweep_is_on_the_beat_schedule():
    from saas.celery import app

    entries = [
        e for e in app.conf.beat_schedule.values() if e["task"] == derived_objects_sweep.name
    ]
    assert len(entries) == 1


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("window=40,400", "window"),
        ("quality=50", "quality"),
        ("annotation=patient", "annotation"),
        ("viewport=513,100", "viewport"),
        ("viewport=0,100", "viewport"),
        ("viewport=64,64,0,0,10,10", "viewport"),
        ("viewport=x,64", "viewport"),
    ],
)
def test_bad_parameters_are_400(org, reader, query, field):
    stored = Stored(org, [ct()])

    response = reader.get(f"{stored.instance()}/thumbnail?{query}")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]
    assert not DerivedObject.objects.exists()


@pytest.mark.parametrize("frames", ["0", "3", "1,2", "x"])
def test_bad_frames_are_400(org, reader, frames):
    stored = Stored(org, [ct(frames=2)])

    response = reader.get(f"{stored.instance()}/frames/{frames}/thumbnail")

    assert response.status_code == 400


def test_no_image_is_406_with_a_reason(org, reader):
    report = from_testdata("test-SR.dcm")
    stored = Stored(org, [report])

    for url in (
        f"{stored.instance()}/thumbnail",
        f"{stored.series()}/thumbnail",
        f"{stored.study()}/thumbnail",
    ):
        response = reader.get(url)
        assert response.status_code == 406, url
        assert response.json()["error"]["code"] == "not_renderable"


def test_archive_tier_is_503_unless_a_thumbnail_is_kept(org, reader):
    stored = Stored(org, series_of(2))
    url = f"{stored.instance(1)}/thumbnail"
    assert reader.get(f"{stored.instance(0)}/thumbnail").status_code == 200
    for instance in Instance.objects.for_org(org):
        to_tier(instance, "archive")

    response = reader.get(url)
    kept = reader.get(f"{stored.instance(0)}/thumbnail")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert response.json()["restore"]["id"] == RestoreRequest.objects.for_org(org).get().pk
    assert kept.status_code == 200  # hot, derived: no restore needed


def test_another_organizations_uids_are_404(org, other_org, token_client, reader):
    stored = Stored(org, [ct(frames=2)])
    assert reader.get(f"{stored.instance()}/thumbnail").status_code == 200
    outsider = token_client(other_org, ["dicom:read"])

    for url in (
        f"{stored.study()}/thumbnail",
        f"{stored.series()}/thumbnail",
        f"{stored.instance()}/thumbnail",
        f"{stored.instance()}/frames/1/thumbnail",
    ):
        assert outsider.get(url).status_code == 404, url
    assert AccessEvent.objects.for_org(other_org).count() == 0
    assert DerivedObject.objects.for_org(other_org).count() == 0
