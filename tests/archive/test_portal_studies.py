"""Studies in the portal: search, detail, the download's confirmation (egress cost) and the zip
itself (streamed, byte-exact, metered, recorded)."""

from __future__ import annotations

import datetime as dt
import io
import random
import zipfile
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pydicom.uid import generate_uid

from archive.index import selectors
from archive.ingest import pipeline
from archive.models import AccessEvent, Instance, Series, Study
from archive.storage import store_for
from archive.studies.views import ZipEntry, zip_stream
from archive.studies.zipnames import patient_folder, study_folder
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import PlanPrice, PricePlan, Rollup, Subscription, UsageEvent
from tenants.models import AuditEvent, Membership, Organization

pytestmark = pytest.mark.django_db

GIB = 2**30


def ingest_study(
    org: Organization,
    modality: str = "CT",
    *,
    n: int = 2,
    series: int = 1,
    study_date: dt.date | None = None,
    name: str | None = None,
    patient_id: str | None = None,
    accession: str | None = None,
) -> tuple[Study, list[bytes]]:
    spec = study_spec(modality, rng=random.Random(), study_date=study_date)
    if name:
        spec.patient_name = name
    if patient_id:
        spec.patient_id = patient_id
    if accession:
        spec.accession = accession
    files = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(n):
            ds = make_instance(
                spec,
                series_uid=series_uid,
                series_number=s + 1,
                instance_number=i + 1,
                rows=16,
                columns=16,
            )
            files.append(to_bytes(ds))
    location = pipeline.location_primary(org)
    for data in files:
        result = pipeline.instance_ingest(
            org=org, spooled=pipeline.spool_file(store_for(location), io.BytesIO(data))
        )
        assert result.status == "stored", result.reason
    return Study.objects.for_org(org).get(study_uid=spec.study_uid), files


def archive_instance(instance: Instance) -> None:
    """Pretend the tier policy moved one instance to the archive tier (index only)."""
    size = instance.size_bytes
    Instance.objects.filter(pk=instance.pk).update(tier="archive")
    for model, pk in ((Study, instance.study_id), (Series, instance.series_id)):
        model.objects.filter(pk=pk).update(
            bytes_hot=F("bytes_hot") - size, bytes_archive=F("bytes_archive") + size
        )


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


# --- search ------------------------------------------------------------------------------------


@pytest.fixture
def three_studies(org: Organization) -> dict[str, Study]:
    today = timezone.now().date()
    curie, _ = ingest_study(
        org, "CT", name="Curie^Marie", patient_id="PAT10001", accession="ACC1", study_date=today
    )
    turing, _ = ingest_study(
        org,
        "MR",
        name="Turing^Alan",
        patient_id="PAT20002",
        accession="ACC2",
        study_date=today - dt.timedelta(days=40),
    )
    hopper, _ = ingest_study(
        org,
        "CT",
        name="Hopper^Grace",
        patient_id="XYZ30003",
        accession="ACC3",
        study_date=today - dt.timedelta(days=400),
    )
    return {"curie": curie, "turing": turing, "hopper": hopper}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["curie", "turing", "hopper"]),
        ({"patient": "curie"}, ["curie"]),
        ({"patient": "PAT2"}, ["turing"]),
        ({"patient": "002"}, []),  # the ID matches from its start only
        ({"accession": "acc3"}, ["hopper"]),
        ({"modality": "CT"}, ["curie", "hopper"]),
        ({"modality": "MR"}, ["turing"]),
        ({"date_from": "{d60}"}, ["curie", "turing"]),
        ({"date_from": "{d60}", "date_to": "{d10}"}, ["turing"]),
    ],
)
def test_search_filters(
    client: Client, org: Organization, three_studies: dict[str, Study], query, expected
) -> None:
    today = timezone.now().date()
    dates = {
        "{d60}": str(today - dt.timedelta(days=60)),
        "{d10}": str(today - dt.timedelta(days=10)),
    }
    params = {k: dates.get(v, v) for k, v in query.items()}
    response = client.get(url("portal-studies", org), params)
    assert response.status_code == 200
    shown = [row["study"].pk for row in response.context["rows"]]
    assert shown == [three_studies[k].pk for k in expected]


def test_search_with_reversed_dates_is_a_field_error(client: Client, org: Organization) -> None:
    response = client.get(
        url("portal-studies", org), {"date_from": "2024-05-01", "date_to": "2024-04-01"}
    )
    assert response.status_code == 400
    assert "The end date is before the start date." in response.content.decode()


def test_search_is_tenant_scoped(
    client: Client, org: Organization, other_org: Organization
) -> None:
    ingest_study(other_org, name="Noether^Emmy")
    ingest_study(org, name="Meitner^Lise")
    content = client.get(url("portal-studies", org), {"patient": "e"}).content.decode()
    assert "Meitner" in content and "Noether" not in content


def test_study_list_pages(client: Client, org: Organization, monkeypatch) -> None:
    from archive.studies import views

    monkeypatch.setattr(views, "STUDIES_PAGE_SIZE", 2)
    for _ in range(3):
        ingest_study(org, n=1)
    first = client.get(url("portal-studies", org))
    second = client.get(url("portal-studies", org), {"page": 2})
    assert len(first.context["rows"]) == 2 and len(second.context["rows"]) == 1
    assert "Page 1 of 2" in first.content.decode()


def test_empty_archive_explains_how_images_arrive(client: Client, org: Organization) -> None:
    content = client.get(url("portal-studies", org)).content.decode()
    assert "No studies yet" in content and "STOW-RS" in content


# --- detail ------------------------------------------------------------------------------------


def test_detail_shows_series_sizes_tiers_and_access_history(
    client: Client, org: Organization
) -> None:
    study, files = ingest_study(org, "CT", n=2, series=2, name="Franklin^Rosalind")
    archive_instance(Instance.objects.for_org(org).filter(series__series_number=2).earliest("id"))
    client.post(url("portal-study-download", org, study.pk))  # one read for the history

    response = client.get(url("portal-study", org, study.pk))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Franklin, Rosalind" in content
    rows = response.context["series_rows"]
    assert [r["series"].series_number for r in rows] == [1, 2]
    assert [t["tier"] for t in rows[0]["tiers"]] == ["hot"]
    assert [t["tier"] for t in rows[1]["tiers"]] == ["hot", "archive"]
    assert "in the Archive tier" in content and "cannot be downloaded yet" in content
    assert "Portal download" in content  # the access history
    assert [a["event"].kind for a in response.context["accesses"]] == ["download"]


# --- download ----------------------------------------------------------------------------------


def test_confirmation_page_shows_size_and_expected_cost(client: Client, org: Organization) -> None:
    plan = PricePlan.objects.create(code="egress-test", name="Per GiB", currency="EUR")
    PlanPrice.objects.create(
        plan=plan, meter="egress.bytes", model="per_unit", unit_price=Decimal("0.09")
    )
    Subscription.objects.create(
        organization=org, plan=plan, starts_at=timezone.now() - dt.timedelta(days=1)
    )
    study, files = ingest_study(org, n=3)
    response = client.get(url("portal-study-download", org, study.pk))
    assert response.status_code == 200
    content = response.content.decode()
    total = sum(map(len, files))
    assert response.context["plan"].bytes == total and response.context["plan"].instances == 3
    expected = Decimal(total) / GIB * Decimal("0.09")
    assert response.context["estimate"].amount == expected
    assert "less than 0.01 EUR" in content  # a few KiB
    assert "Per GiB plan (0.09 EUR per GiB)" in content
    assert not AccessEvent.objects.exists()  # looking is not downloading


def test_egress_estimate_counts_this_months_egress_and_allowance(org: Organization) -> None:
    # The default plan: 100 GiB included, then 0.09 per GiB.
    Rollup.objects.create(
        organization=org,
        meter="egress.bytes",
        dimension_key="",
        hour=timezone.now().replace(minute=0, second=0, microsecond=0),
        quantity=99 * GIB,
    )
    estimate = selectors.egress_estimate(org=org, bytes_out=3 * GIB)
    assert estimate.plan_name == "Standard" and estimate.currency == "USD"
    assert estimate.amount == Decimal("0.18")  # 1 GiB left free, 2 GiB at 0.09
    assert estimate.rate == "from 0.09 USD per GiB"


def test_download_streams_the_stored_bytes_and_records_the_read(
    client: Client, org: Organization, owner: Membership
) -> None:
    study, files = ingest_study(org, "CT", n=3, series=2)
    response: Any = client.post(url("portal-study-download", org, study.pk))

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    assert f"study-{study.pk}-" in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        contents = {zf.read(n) for n in names}
    folder = f"{patient_folder(study)}/{study_folder(study)}/"
    assert len(names) == 6 and all(n.startswith(folder) for n in names)
    assert contents == set(files)
    for instance in Instance.objects.for_org(org):
        name = next(n for n in names if instance.sop_instance_uid in n)
        stored = b"".join(
            store_for(instance.location).iter_bytes(key=instance.object_key, tier="hot")
        )
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.read(name) == stored

    total = sum(map(len, files))
    event = AccessEvent.objects.get()
    assert (event.kind, event.bytes, event.instances) == ("download", total, 6)
    assert event.actor_label == owner.user.email
    egress = UsageEvent.objects.get(organization=org, meter="egress.bytes")
    assert egress.quantity == total
    audit = AuditEvent.objects.get(action="study.download")
    assert audit.details["bytes"] == total and audit.target_label == study.study_uid
    study.refresh_from_db()
    assert study.last_accessed_at is not None


def test_archive_tier_instances_are_left_out_and_said_so(client: Client, org: Organization) -> None:
    study, files = ingest_study(org, n=3)
    archived = Instance.objects.for_org(org).earliest("instance_number")
    archive_instance(archived)

    page = client.get(url("portal-study-download", org, study.pk)).content.decode()
    assert "1 image" in page and "cannot be downloaded yet" in page and "left out" in page

    download: Any = client.post(url("portal-study-download", org, study.pk))
    body = b"".join(download.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert len(zf.namelist()) == 2
        assert not any(archived.sop_instance_uid in n for n in zf.namelist())
    assert AccessEvent.objects.get().instances == 2


def test_a_study_entirely_in_archive_cannot_be_downloaded(
    client: Client, org: Organization
) -> None:
    study, _ = ingest_study(org, n=2)
    for instance in Instance.objects.for_org(org):
        archive_instance(instance)
    response = client.post(url("portal-study-download", org, study.pk))
    # Nothing to zip: the answer is the restore the download started.
    assert response.status_code == 202
    assert "Nothing in this study can be downloaded right now." in response.content.decode()
    assert "Restore " in response.content.decode()
    assert (
        not AccessEvent.objects.exists()
        and not UsageEvent.objects.filter(meter="egress.bytes").exists()
    )
    detail = client.get(url("portal-study", org, study.pk)).content.decode()
    assert 'aria-disabled="true"' in detail


# --- the streaming zip writer -----------------------------------------------------------------


def test_zip_stream_uses_constant_memory_for_large_members() -> None:
    size = 48 * 1024 * 1024
    chunk = b"\x5a" * (1024 * 1024)
    entries = [
        ZipEntry(
            name="big.dcm",
            size=size,
            modified=timezone.now(),
            chunks=lambda: (chunk for _ in range(size // len(chunk))),
        )
    ]
    largest = 0
    total = 0
    for piece in zip_stream(entries):
        largest = max(largest, len(piece))
        total += len(piece)
    assert total > size
    assert largest <= 2 * 1024 * 1024  # a chunk plus the flush threshold, never the member


def test_zip_stream_writes_zip64_records_past_the_limit(monkeypatch) -> None:
    # Shrinking the limit makes a small member need ZIP64, as a 4 GiB one does.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)
    data = bytes(range(256)) * 40
    entries = [
        ZipEntry("a.dcm", len(data), timezone.now(), lambda: [data[:5000], data[5000:]]),
        ZipEntry("b.dcm", 3, dt.datetime(1970, 1, 1, tzinfo=dt.UTC), lambda: [b"abc"]),
    ]
    body = b"".join(zip_stream(entries))
    monkeypatch.undo()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("a.dcm") == data and zf.read("b.dcm") == b"abc"
        info = zf.getinfo("a.dcm")
        assert info.extra  # the ZIP64 extra field
        assert zf.getinfo("b.dcm").date_time[0] == 1980


def test_zip_stream_aborts_when_the_bytes_do_not_match_the_index() -> None:
    from archive.storage import StorageUnavailable

    entries = [ZipEntry("short.dcm", 10, timezone.now(), lambda: [b"12345"])]
    with pytest.raises(StorageUnavailable):
        b"".join(zip_stream(entries))
