"""The portal shows the images: thumbnails in the study list and on the study page, the series
viewer page and its slices (rendered by the DICOMweb functions under the portal's session), a
series' ZIP download; who may see them, another organization's ids (404), the archive tier (the
restore's cost shown, nothing read), and each image request recorded once (access, egress,
audit)."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import re
import zipfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.models import (
    AccessEvent,
    DerivedObject,
    Instance,
    RestoreRequest,
    Series,
    Study,
)
from archive.retention.services import study_trash
from archive.storage import store_for
from archive.studies.zipnames import patient_folder, series_folder, study_folder
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import PlanPrice, PricePlan, Subscription, UsageEvent
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Role
from tests.archive.test_dicomweb_rendered import sr_in
from tests.archive.test_restores_support import to_tier

pytestmark = pytest.mark.django_db

GIB = 2**30


# --- a CT series that looks like one -----------------------------------------------------------


def phantom_ct(
    spec: Any,
    *,
    series_uid: str,
    number: int,
    slices: int,
    size: int = 128,
    series_number: int = 1,
) -> Dataset:
    """One axial slice of a chest phantom in Hounsfield units (air, soft tissue, lungs, spine,
    and a nodule whose size changes from slice to slice), stored with Rescale Intercept -1024
    and its own soft-tissue window."""
    ds = make_instance(
        spec,
        series_uid=series_uid,
        series_number=series_number,
        instance_number=number,
        rows=size,
        columns=size,
    )
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.45) ** 2 + (y / 0.33) ** 2 <= 1] = 40  # body
    for side in (-1, 1):
        hu[((x - side * 0.18) / 0.14) ** 2 + (y / 0.22) ** 2 <= 1] = -820  # lungs
    hu[(x**2 + (y - 0.22) ** 2) <= 0.05**2] = 700  # spine
    radius = 0.02 + 0.1 * number / max(slices, 1)
    hu[((x - 0.18) ** 2 + (y + 0.02) ** 2) <= radius**2] = 60  # a nodule growing with the slice
    rng = np.random.default_rng(number)
    hu += rng.normal(0, 8, size=hu.shape)
    ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.SeriesDescription = "AX CHEST 5mm"
    return ds


def store(org: Organization, datasets: list[Dataset]) -> None:
    location_store = store_for(pipeline.location_primary(org))
    for ds in datasets:
        result = pipeline.instance_ingest(
            org=org, spooled=pipeline.spool_file(location_store, io.BytesIO(to_bytes(ds)))
        )
        assert result.status == "stored", result.reason


def seed_ct(
    org: Organization,
    *,
    slices: int = 4,
    series: int = 1,
    name: str = "Lovelace^Ada",
    patient_id: str = "PAT-4711",
) -> Study:
    """A CT study of ``series`` series of ``slices`` phantom slices each, stored."""
    spec = study_spec("CT", rng=random.Random(7))
    spec.patient_name, spec.patient_id = name, patient_id
    spec.description = "CT CHEST"
    datasets = []
    for number in range(1, series + 1):
        uid = generate_uid()
        datasets += [
            phantom_ct(spec, series_uid=uid, number=n, slices=slices, series_number=number)
            for n in range(1, slices + 1)
        ]
    store(org, datasets)
    return Study.objects.for_org(org).get(study_uid=spec.study_uid)


def series_of(study: Study, number: int = 1) -> Series:
    return Series.objects.get(study=study, series_number=number)


def instances_of(series: Series) -> list[Instance]:
    return list(
        Instance.objects.filter(series=series)
        .select_related("location")
        .order_by("instance_number")
    )


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def client_for(membership: Membership) -> Client:
    c = Client()
    c.force_login(membership.user)
    return c


def portal(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def image_of(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "image/jpeg"
    assert int(response["Content-Length"]) == len(response.content)
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=np.int16)


def viewer_data(response: Any) -> dict[str, Any]:
    match = re.search(
        r'<script id="viewer-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the page has no viewer"
    return json.loads(match.group(1))


# --- every URL of this part, for the access rules ----------------------------------------------


def urls(org: Organization, study: Study) -> dict[str, str]:
    series = series_of(study)
    instance = instances_of(series)[0]
    ids = (study.pk, series.pk)
    return {
        "viewer": portal("portal-series-view", org, *ids),
        "rendered": portal("portal-instance-rendered", org, *ids, instance.pk),
        "frame": portal("portal-frame-rendered", org, *ids, instance.pk, 1),
        "instance-thumbnail": portal("portal-instance-thumbnail", org, *ids, instance.pk),
        "series-thumbnail": portal("portal-series-thumbnail", org, *ids),
        "study-thumbnail": portal("portal-study-thumbnail", org, study.pk),
        "series-download": portal("portal-series-download", org, *ids),
    }


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.OWNER, True),
        (Role.ADMIN, True),
        (Role.MEMBER, True),
        (Role.BILLING, False),
        (Role.AUDITOR, False),
    ],
)
def test_roles_without_images_read_see_no_image(
    org: Organization, make_member: Callable[..., Membership], role: str, allowed: bool
) -> None:
    study = seed_ct(org, slices=2)
    c = client_for(make_member(org, role))
    for name, address in urls(org, study).items():
        response = c.get(address)
        if allowed:
            assert response.status_code == 200, (name, response.content[:300])
        else:
            assert response.status_code == 403, name
            assert "images.read" in response.content.decode()
    if not allowed:
        assert not AccessEvent.objects.exists()
        before = AuditEvent.objects.count()
        assert c.post(urls(org, study)["series-download"]).status_code == 403
        assert AuditEvent.objects.count() == before


def test_another_organizations_ids_are_404(
    client: Client, org: Organization, other_org: Organization
) -> None:
    mine = seed_ct(org, slices=2)
    theirs = seed_ct(other_org, slices=2, name="Other^Patient")
    for name, address in urls(org, theirs).items():
        response = client.get(address)
        assert response.status_code == 404, name
        assert "Other^Patient" not in response.content.decode()
        assert "Other, Patient" not in response.content.decode()
    # Their ids under my organization's slug, mixed with mine: 404 as well.
    theirs_series = series_of(theirs)
    theirs_instance = instances_of(theirs_series)[0]
    my_series = series_of(mine)
    mixed = [
        portal("portal-series-view", org, mine.pk, theirs_series.pk),
        portal("portal-instance-rendered", org, mine.pk, my_series.pk, theirs_instance.pk),
        portal("portal-series-thumbnail", org, mine.pk, theirs_series.pk),
        portal("portal-series-download", org, mine.pk, theirs_series.pk),
    ]
    for address in mixed:
        assert client.get(address).status_code == 404, address
    assert (
        client.post(portal("portal-series-download", org, mine.pk, theirs_series.pk)).status_code
        == 404
    )
    # My ids under their slug: I am no member there.
    for address in urls(other_org, mine).values():
        assert client.get(address).status_code == 404
    assert not AccessEvent.objects.exists()


def test_a_series_of_another_study_or_an_instance_of_another_series_is_404(
    client: Client, org: Organization
) -> None:
    first = seed_ct(org, slices=2, series=2)
    second = seed_ct(org, slices=2)
    one, two = series_of(first, 1), series_of(first, 2)
    instance_of_two = instances_of(two)[0]
    assert client.get(portal("portal-series-view", org, second.pk, one.pk)).status_code == 404
    assert (
        client.get(
            portal("portal-instance-rendered", org, first.pk, one.pk, instance_of_two.pk)
        ).status_code
        == 404
    )
    assert not AccessEvent.objects.exists()


def test_a_trashed_study_shows_no_image(client: Client, org: Organization, owner) -> None:
    study = seed_ct(org, slices=2)
    study_trash(org=org, study=study, actor=Actor.system("tests"), reason="duplicate")
    for name, address in urls(org, study).items():
        assert client.get(address).status_code == 404, name
    detail = client.get(portal("portal-study", org, study.pk)).content.decode()
    assert portal("portal-series-view", org, study.pk, series_of(study).pk) not in detail


# --- thumbnails ---------------------------------------------------------------------------------


def test_the_study_list_shows_lazy_thumbnails_without_patient_data(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=3, name="Curie^Marie", patient_id="PAT-777")
    page = client.get(portal("portal-studies", org)).content.decode()
    [img] = re.findall(r"<img [^>]*>", page)
    src = portal("portal-study-thumbnail", org, study.pk)
    assert f'src="{src}"' in img
    assert 'loading="lazy"' in img and 'width="56"' in img and 'height="56"' in img
    alt = re.search(r'alt="([^"]*)"', img)
    assert alt and alt.group(1) == "CT image"
    assert "Curie" not in img and "PAT-777" not in img
    # Listing reads no image: only the thumbnail's own request does.
    assert not AccessEvent.objects.exists()

    response = client.get(src)
    thumb = image_of(response)
    assert max(thumb.shape) == 128
    assert response["Cache-Control"] == "private, max-age=300"
    event = AccessEvent.objects.get()
    middle = instances_of(series_of(study))[1]
    assert (event.kind, event.bytes, event.instances) == ("thumbnail", len(response.content), 1)
    assert event.series_id == middle.series_id
    assert DerivedObject.objects.filter(instance=middle).count() == 1  # kept for the next time
    egress = UsageEvent.objects.get(organization=org, meter="egress.bytes")
    assert egress.quantity == len(response.content)


def test_the_study_page_shows_each_series_thumbnail_and_its_viewer_and_download(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=2, series=2)
    page = client.get(portal("portal-study", org, study.pk)).content.decode()
    for series in (series_of(study, 1), series_of(study, 2)):
        ids = (study.pk, series.pk)
        assert f'src="{portal("portal-series-thumbnail", org, *ids)}"' in page
        assert f'href="{portal("portal-series-view", org, *ids)}"' in page
        assert f'href="{portal("portal-series-download", org, *ids)}"' in page
        assert f'alt="Series {series.series_number} image"' in page
    assert "Download series" in page and "Download ZIP" in page

    one = image_of(client.get(portal("portal-series-thumbnail", org, *ids)))
    assert one.shape == (128, 128)


def test_an_archived_study_shows_a_marker_and_starts_no_restore(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=3)
    for instance in instances_of(series_of(study)):
        to_tier(instance, "archive")
    for address in (
        portal("portal-study-thumbnail", org, study.pk),
        portal("portal-series-thumbnail", org, study.pk, series_of(study).pk),
    ):
        response = client.get(address)
        assert response.status_code == 200
        assert response["Content-Type"] == "image/svg+xml"
        assert b"Archived" in response.content and b"Lovelace" not in response.content
    assert not RestoreRequest.objects.exists()
    assert not AccessEvent.objects.exists()


def test_an_archived_study_whose_thumbnail_is_kept_shows_it(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=3)
    address = portal("portal-study-thumbnail", org, study.pk)
    first = client.get(address)
    assert first["Content-Type"] == "image/jpeg"
    for instance in instances_of(series_of(study)):
        to_tier(instance, "archive")
    again = client.get(address)
    assert again["Content-Type"] == "image/jpeg" and again.content == first.content
    assert not RestoreRequest.objects.exists()


def test_a_study_without_images_shows_no_image_marker(client: Client, org: Organization) -> None:
    store(org, [sr_in(generate_uid())])
    study = Study.objects.for_org(org).get()
    response = client.get(portal("portal-study-thumbnail", org, study.pk))
    assert response["Content-Type"] == "image/svg+xml" and b"No image" in response.content
    viewer = client.get(portal("portal-series-view", org, study.pk, Series.objects.get().pk))
    assert viewer.status_code == 200
    assert "No image to show" in viewer.content.decode()
    assert "no pixel data" in viewer.content.decode()


# --- the viewer ----------------------------------------------------------------------------------


def test_the_viewer_lists_the_slices_in_order_and_reads_nothing_itself(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=5, name="Lovelace^Ada", patient_id="PAT-4711")
    series = series_of(study)
    response = client.get(portal("portal-series-view", org, study.pk, series.pk))
    assert response.status_code == 200
    data = viewer_data(response)
    expected = [
        portal("portal-instance-rendered", org, study.pk, series.pk, i.pk)
        for i in instances_of(series)
    ]
    assert [s["u"] for s in data["slices"]] == expected
    assert [s["n"] for s in data["slices"]] == [1, 2, 3, 4, 5]
    assert (data["slices"][0]["wc"], data["slices"][0]["ww"]) == (40, 400)
    presets = {p["key"]: (p.get("c"), p.get("w")) for p in data["presets"]}
    assert presets == {
        "own": (None, None),
        "soft": (40, 400),
        "lung": (-600, 1500),
        "bone": (400, 1800),
        "brain": (40, 80),
    }
    assert data["overlay"]["patient"] == "Lovelace, Ada"
    assert data["overlay"]["patientId"] == "PAT-4711"
    assert data["overlay"]["series"] == "Se 1 · CT · AX CHEST 5mm"
    page = response.content.decode()
    assert "archive/viewer.js" in page and "cdn" not in page.lower()
    # Opening the page is no read: each image is, when the viewer asks it.
    assert not AccessEvent.objects.exists()
    assert not UsageEvent.objects.filter(meter="egress.bytes").exists()


def test_presets_are_offered_for_ct_only(client: Client, org: Organization) -> None:
    spec = study_spec("MR")
    uid = generate_uid()
    store(
        org,
        [
            make_instance(spec, series_uid=uid, instance_number=n, rows=32, columns=32)
            for n in (1, 2)
        ],
    )
    study = Study.objects.for_org(org).get()
    data = viewer_data(
        client.get(portal("portal-series-view", org, study.pk, Series.objects.get().pk))
    )
    assert [p["key"] for p in data["presets"]] == ["own"]


def test_each_slice_is_one_access_metered_and_audited(
    client: Client, org: Organization, owner: Membership
) -> None:
    study = seed_ct(org, slices=3)
    series = series_of(study)
    middle = instances_of(series)[1]
    response = client.get(portal("portal-instance-rendered", org, study.pk, series.pk, middle.pk))
    pixels = image_of(response)
    assert pixels.shape == (128, 128)
    assert response["Cache-Control"] == "private, max-age=300"
    assert "Accept" in response["Vary"]
    event = AccessEvent.objects.get()
    assert (event.kind, event.bytes, event.instances) == ("retrieve", len(response.content), 1)
    assert event.series_id == series.pk and event.actor_label == owner.user.email
    egress = UsageEvent.objects.get(organization=org, meter="egress.bytes")
    assert egress.quantity == len(response.content)
    audit = AuditEvent.objects.get(action="study.retrieve")
    assert audit.details["bytes"] == len(response.content)
    assert audit.details["series"] == series.series_uid
    # Only the instance shown is marked read.
    read = set(Instance.objects.filter(last_accessed_at__isnull=False).values_list("pk", flat=True))
    assert read == {middle.pk}


def test_window_presets_change_the_rendering(client: Client, org: Organization) -> None:
    study = seed_ct(org, slices=2)
    series = series_of(study)
    address = portal(
        "portal-instance-rendered", org, study.pk, series.pk, instances_of(series)[0].pk
    )
    own = image_of(client.get(address))
    soft = image_of(client.get(address, {"window": "40,400"}))
    lung = image_of(client.get(address, {"window": "-600,1500"}))
    bone = image_of(client.get(address, {"window": "400,1800"}))
    # The image's own window is soft tissue: the same rendering, within JPEG's loss.
    assert np.abs(own - soft).mean() < 2
    # Lungs: black in the soft-tissue window, grey in the lung window.
    lungs = (slice(56, 72), slice(30, 44))
    assert soft[lungs].mean() < 15 and 40 < lung[lungs].mean() < 120
    # The spine: white in soft tissue, grey in the bone window.
    spine = (slice(88, 94), slice(62, 66))
    assert soft[spine].mean() > 240 and 120 < bone[spine].mean() < 220
    # Four reads of one series by one reader in one minute: one line of the access log.
    (event,) = AccessEvent.objects.all()
    assert (event.kind, event.reads, event.instances) == ("retrieve", 4, 4)


def test_scrolling_shows_each_slice(client: Client, org: Organization) -> None:
    study = seed_ct(org, slices=4)
    series = series_of(study)
    images = [
        image_of(client.get(portal("portal-instance-rendered", org, study.pk, series.pk, i.pk)))
        for i in instances_of(series)
    ]
    # The nodule grows from slice to slice: each rendering differs from the one before.
    nodule = (slice(50, 80), slice(70, 110))
    bright = [int((image[nodule] > 140).sum()) for image in images]
    assert bright == sorted(bright) and bright[0] < bright[-1]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"window": "40,0"}, "window"),
        ({"window": "x"}, "window"),
        ({"viewport": "0,0"}, "viewport"),
        ({"quality": "101"}, "quality"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(
    client: Client, org: Organization, query: dict[str, str], parameter: str
) -> None:
    study = seed_ct(org, slices=1)
    series = series_of(study)
    address = portal(
        "portal-instance-rendered", org, study.pk, series.pk, instances_of(series)[0].pk
    )
    response = client.get(address, query)
    assert response.status_code == 400
    body = response.json()
    assert parameter in body["error"]["fields"]
    assert not AccessEvent.objects.exists()


def test_frames_of_a_multiframe_instance_are_slices(client: Client, org: Organization) -> None:
    spec = study_spec("MG")
    store(org, [make_instance(spec, series_uid=generate_uid(), frames=3, rows=32, columns=32)])
    study = Study.objects.for_org(org).get()
    series = Series.objects.get()
    instance = Instance.objects.get()
    data = viewer_data(client.get(portal("portal-series-view", org, study.pk, series.pk)))
    assert [(s["u"], s["f"]) for s in data["slices"]] == [
        (portal("portal-frame-rendered", org, study.pk, series.pk, instance.pk, n), n)
        for n in (1, 2, 3)
    ]
    image_of(client.get(data["slices"][2]["u"]))
    for frame in (0, 4):
        response = client.get(
            portal("portal-frame-rendered", org, study.pk, series.pk, instance.pk, frame)
        )
        assert response.status_code == 400 and response.json()["error"]["code"]
    assert AccessEvent.objects.count() == 1


def test_only_get_reads_an_image(client: Client, org: Organization) -> None:
    study = seed_ct(org, slices=1)
    for name, address in urls(org, study).items():
        if name in ("viewer", "series-download"):
            continue
        assert client.post(address).status_code == 405, name
        assert client.head(address).status_code == 405, name
    assert not AccessEvent.objects.exists()


# --- the archive tier --------------------------------------------------------------------------


@pytest.fixture
def restore_price(org: Organization) -> None:
    plan = PricePlan.objects.create(code="restore-test", name="Restores", currency="EUR")
    PlanPrice.objects.create(
        plan=plan, meter="restore.bytes", model="per_unit", unit_price=Decimal("0.02")
    )
    Subscription.objects.create(
        organization=org, plan=plan, starts_at=timezone.now() - dt.timedelta(days=1)
    )


def test_an_archived_series_shows_the_restore_cost_not_the_viewer(
    client: Client, org: Organization, restore_price: None, django_capture_on_commit_callbacks
) -> None:
    study = seed_ct(org, slices=3)
    series = series_of(study)
    archived = [to_tier(i, "archive") for i in instances_of(series)]
    address = portal("portal-series-view", org, study.pk, series.pk)

    response = client.get(address)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="viewer-data"' not in page and "viewer.js" not in page
    assert "must be restored before it can be viewed" in page
    need = response.context["need"]
    size = sum(i.size_bytes for i in archived)
    assert (need.instances, need.bytes, need.in_progress) == (3, size, 0)
    assert need.price.amount == Decimal(size) / GIB * Decimal("0.02")
    assert 'id="restore-cost"' in page and "Restores plan (0.02 EUR per GiB)" in page
    assert "Restore 3 images" in page
    # Looking at the cost reads nothing and starts nothing.
    assert not RestoreRequest.objects.exists() and not AccessEvent.objects.exists()
    # Neither does a slice asked behind the page's back... it answers what WADO-RS answers.

    with django_capture_on_commit_callbacks(execute=False):
        started = client.post(address)
    assert started.status_code == 302 and started["Location"] == address
    restore = RestoreRequest.objects.get()
    assert (restore.scope, restore.instances_total, restore.bytes_total) == ("instances", 3, size)
    assert restore.study_id == study.pk

    waiting = client.get(address).content.decode()
    assert f"Restore {restore.pk} is bringing 3 images back" in waiting
    assert "Restore 3 images" not in waiting and 'id="viewer-data"' not in waiting
    # Asking again does not open a second restore.
    with django_capture_on_commit_callbacks(execute=False):
        client.post(address)
    assert RestoreRequest.objects.count() == 1
    assert not AccessEvent.objects.exists()


def test_a_restored_series_opens_in_the_viewer(client: Client, org: Organization) -> None:
    study = seed_ct(org, slices=2)
    series = series_of(study)
    for instance in instances_of(series):
        to_tier(instance, "archive")
    Instance.objects.filter(series=series).update(
        restored_until=timezone.now() + dt.timedelta(days=3)
    )
    response = client.get(portal("portal-series-view", org, study.pk, series.pk))
    assert len(viewer_data(response)["slices"]) == 2


def test_a_slice_of_an_archived_instance_answers_503_with_the_restore(
    client: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    study = seed_ct(org, slices=2)
    series = series_of(study)
    instance = to_tier(instances_of(series)[0], "archive")
    with django_capture_on_commit_callbacks(execute=False):
        response = client.get(
            portal("portal-instance-rendered", org, study.pk, series.pk, instance.pk)
        )
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert response.json()["restore"]["id"] == RestoreRequest.objects.get().pk
    assert not AccessEvent.objects.exists()


# --- download series ---------------------------------------------------------------------------


def test_download_series_streams_its_instances_and_records_the_read(
    client: Client, org: Organization, owner: Membership
) -> None:
    study = seed_ct(org, slices=3, series=2)
    two = series_of(study, 2)
    wanted = instances_of(two)
    address = portal("portal-series-download", org, study.pk, two.pk)

    confirm = client.get(address)
    assert confirm.status_code == 200
    plan = confirm.context["plan"]
    assert (plan.instances, plan.bytes) == (3, sum(i.size_bytes for i in wanted))
    assert "Download the series as a ZIP" in confirm.content.decode()
    assert f'action="{address}"' in confirm.content.decode()
    assert not AccessEvent.objects.exists()

    response: Any = client.post(address)
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/zip"
    assert re.fullmatch(
        rf'attachment; filename="study-{study.pk}-\d{{8}}-series-002\.zip"',
        response["Content-Disposition"],
    )
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        for instance in wanted:
            [name] = [n for n in names if instance.sop_instance_uid in n]
            stored = b"".join(
                store_for(instance.location).iter_bytes(key=instance.object_key, tier="hot")
            )
            assert zf.read(name) == stored
            assert name.startswith(
                f"{patient_folder(study)}/{study_folder(study)}/{series_folder(two)}/"
            )
            assert series_folder(two).startswith("002 CT ")
    assert len(names) == 3
    total = sum(i.size_bytes for i in wanted)
    event = AccessEvent.objects.get()
    assert (event.kind, event.bytes, event.instances, event.series_id) == (
        "download",
        total,
        3,
        two.pk,
    )
    assert UsageEvent.objects.get(organization=org, meter="egress.bytes").quantity == total
    audit = AuditEvent.objects.get(action="study.download")
    assert audit.details["series"] == two.series_uid and audit.details["bytes"] == total
    # The other series was not read.
    assert not Instance.objects.filter(
        series=series_of(study, 1), last_accessed_at__isnull=False
    ).exists()


def test_download_series_leaves_out_archived_images_and_restores_them(
    client: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    study = seed_ct(org, slices=3, series=2)
    one = series_of(study, 1)
    archived = to_tier(instances_of(one)[0], "archive")
    to_tier(instances_of(series_of(study, 2))[0], "archive")  # another series': not restored here
    address = portal("portal-series-download", org, study.pk, one.pk)
    page = client.get(address).content.decode()
    assert "1 image" in page and "cannot be downloaded yet" in page
    assert portal("portal-series-view", org, study.pk, one.pk) in page
    with django_capture_on_commit_callbacks(execute=False):
        response: Any = client.post(address)
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert len(zf.namelist()) == 2
        assert not any(archived.sop_instance_uid in n for n in zf.namelist())
    restore = RestoreRequest.objects.get()
    assert restore.instances_total == 1
    assert list(restore.items.values_list("instance_id", flat=True)) == [archived.pk]
    assert AccessEvent.objects.get().instances == 2


def test_download_of_an_archived_series_is_the_restore(
    client: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    study = seed_ct(org, slices=2)
    series = series_of(study)
    for instance in instances_of(series):
        to_tier(instance, "archive")
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(portal("portal-series-download", org, study.pk, series.pk))
    assert response.status_code == 202
    assert "Nothing in this series can be downloaded right now." in response.content.decode()
    assert RestoreRequest.objects.count() == 1 and not AccessEvent.objects.exists()


def test_a_slide_series_is_shown_by_its_instances_thumbnails(
    client: Client, org: Organization
) -> None:
    spec = study_spec("SM")
    uid = generate_uid()
    store(
        org,
        [
            make_instance(spec, series_uid=uid, instance_number=n, rows=64, columns=64, frames=2)
            for n in (1, 2)
        ],
    )
    study = Study.objects.for_org(org).get()
    series = Series.objects.get()
    data = viewer_data(client.get(portal("portal-series-view", org, study.pk, series.pk)))
    expected = [
        portal("portal-instance-thumbnail", org, study.pk, series.pk, i.pk)
        for i in instances_of(series)
    ]
    assert [s["u"] for s in data["slices"]] == expected
    assert all(s["slide"] for s in data["slices"]) and data["slideViewport"] == 512
    assert [p["key"] for p in data["presets"]] == ["own"]
    shown = image_of(client.get(expected[0], {"viewport": "512,512"}))
    assert max(shown.shape) == 512  # fitted into the viewport
    assert AccessEvent.objects.count() == 1


def test_hostile_values_in_the_index_do_not_break_the_page(
    client: Client, org: Organization
) -> None:
    study = seed_ct(org, slices=2)
    series = series_of(study)
    first = instances_of(series)[0]
    metadata = dict(first.metadata)
    metadata["00281050"] = {"vr": "DS", "Value": ["NaN"]}
    metadata["00281051"] = {"vr": "DS", "Value": ["Infinity"]}
    metadata["00280010"] = {"vr": "US", "Value": ["1e999"]}
    Instance.objects.filter(pk=first.pk).update(metadata=metadata)
    Study.objects.filter(pk=study.pk).update(patient_name="</script><script>alert(1)</script>")
    response = client.get(portal("portal-series-view", org, study.pk, series.pk))
    assert response.status_code == 200
    page = response.content.decode()
    assert "<script>alert(1)" not in page
    match = re.search(
        r'<script id="viewer-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert match

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    data = json.loads(match.group(1), parse_constant=refuse)
    assert (data["slices"][0]["wc"], data["slices"][0]["ww"], data["slices"][0]["r"]) == (
        None,
        None,
        0,
    )
    assert data["overlay"]["patient"] == "</script><script>alert(1)</script>"
