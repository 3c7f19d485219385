"""WADO-RS retrieve and metadata through the Django stack: exact bytes, Accept, access metering,
the archive tier, storage failures and tenant isolation on every DICOMweb endpoint."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import RequestFactory
from django.test.client import ClientHandler

from archive.models import AccessEvent, Instance, Series, Study
from archive.storage.filesystem import FilesystemStore
from billing.models import UsageEvent
from tenants.models import AuditEvent
from tests.archive.test_dicomweb_support import (
    STOW_TYPE,
    SeededStudy,
    ingest_study,
    multipart,
    split_multipart,
    study,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(org) -> SeededStudy:
    """Two series (CT, MR) of two instances each."""
    return ingest_study(
        org,
        study(
            patient_id="PAT001",
            patient_name="Curie^Marie",
            study_date=dt.date(2026, 3, 1),
            modalities=("CT", "MR"),
        ),
    )


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def parts_of(response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, getattr(response, "content", b"")
    body = body_of(response)
    assert int(response["Content-Length"]) == len(body)
    return split_multipart(response["Content-Type"], body)


def test_retrieve_instance_sends_the_stored_bytes_exactly(reader, seeded):
    sop = seeded.sop_uids[1]
    url = f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}/instances/{sop}"

    ((headers, content),) = parts_of(reader.get(url))

    assert content == seeded.files[1]
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert headers["content-location"] == f"http://testserver{url}"


def test_retrieve_study_sends_every_instance_in_series_order(reader, seeded):
    parts = parts_of(reader.get(f"/dicomweb/studies/{seeded.uid}"))

    assert [content for _, content in parts] == seeded.files


def test_retrieve_series_sends_that_series_only(reader, seeded):
    parts = parts_of(reader.get(f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[1]}"))

    assert [content for _, content in parts] == seeded.files[2:]


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "multipart/related",
        'multipart/related; type="application/dicom"',
        "multipart/related; type=application/dicom; transfer-syntax=*",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        'application/dicom+json, multipart/related; type="application/dicom"; q=0.5',
    ],
)
def test_acceptable_media_types(reader, seeded, accept):
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    response = reader.get(f"/dicomweb/studies/{seeded.uid}", **headers)

    assert len(parts_of(response)) == 4


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom+json",
        "application/dicom",
        "image/jpeg",
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        'multipart/related; type="application/dicom"; q=0',
    ],
)
def test_other_media_types_are_406_with_a_json_error(reader, seeded, accept):
    response = reader.get(f"/dicomweb/studies/{seeded.uid}", HTTP_ACCEPT=accept)

    assert response.status_code == 406
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_acceptable"
    assert not AccessEvent.objects.exists()


def test_retrieve_records_access_egress_and_audit_once(org, reader, seeded):
    total = sum(map(len, seeded.files))

    body_of(reader.get(f"/dicomweb/studies/{seeded.uid}"))

    event = AccessEvent.objects.for_org(org).get()
    assert (event.kind, event.bytes, event.instances, event.series_id) == (
        "retrieve",
        total,
        4,
        None,
    )
    assert event.actor_label.startswith("token:")
    egress = UsageEvent.objects.for_org(org).get(meter="egress.bytes")
    assert egress.quantity == total
    audit = AuditEvent.objects.get(organization=org, action="study.retrieve")
    assert audit.details["bytes"] == total
    study_row = Study.objects.for_org(org).get()
    assert study_row.last_accessed_at is not None
    assert Instance.objects.for_org(org).filter(last_accessed_at__isnull=True).count() == 0


def test_series_and_instance_retrieves_record_the_series(org, reader, seeded):
    series = Series.objects.for_org(org).get(series_uid=seeded.series_uids[1])
    base = f"/dicomweb/studies/{seeded.uid}/series/{series.series_uid}"

    body_of(reader.get(base))
    body_of(reader.get(f"{base}/instances/{seeded.sop_uids[3]}"))

    events = list(AccessEvent.objects.for_org(org).order_by("id"))
    assert [(e.series_id, e.instances, e.bytes) for e in events] == [
        (series.pk, 2, len(seeded.files[2]) + len(seeded.files[3])),
        (series.pk, 1, len(seeded.files[3])),
    ]


def test_an_aborted_download_records_the_bytes_actually_sent(org, make_token, seeded):
    _, secret = make_token(org, ["dicom:read"])
    handler = ClientHandler()
    handler.load_middleware()
    request = RequestFactory().get(
        f"/dicomweb/studies/{seeded.uid}", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    # The handler's response as a WSGI server gets it: iterate a little, then close.
    response = handler.get_response(request)
    stream = iter(response)
    next(stream)  # the first part's headers
    first_chunk = next(stream)
    request_finished.disconnect(close_old_connections)  # keep the test's database connection
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)

    event = AccessEvent.objects.for_org(org).get()
    assert event.bytes == len(first_chunk) and event.instances == 0


def test_head_sends_headers_and_no_bytes_and_records_nothing(reader, seeded):
    url = f"/dicomweb/studies/{seeded.uid}"
    length = len(body_of(reader.get(url)))
    AccessEvent.objects.all().delete()

    response = reader.head(url)

    assert response.status_code == 200
    assert int(response["Content-Length"]) == length
    assert response["Content-Type"].startswith("multipart/related")
    assert not response.content
    assert not AccessEvent.objects.exists()


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_metadata_comes_from_the_index_without_reading_storage(
    org, reader, seeded, monkeypatch, level
):
    def no_storage(*args, **kwargs):
        raise AssertionError("metadata must not read object storage")

    monkeypatch.setattr(FilesystemStore, "iter_bytes", no_storage)
    url = {
        "study": f"/dicomweb/studies/{seeded.uid}/metadata",
        "series": f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}/metadata",
        "instance": f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}"
        f"/instances/{seeded.sop_uids[0]}/metadata",
    }[level]

    response = reader.get(url)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    items = json.loads(body_of(response))
    expected = {"study": seeded.sop_uids, "series": seeded.sop_uids[:2]}.get(
        level, seeded.sop_uids[:1]
    )
    assert [i["00080018"]["Value"][0] for i in items] == expected
    stored = Instance.objects.for_org(org).get(sop_instance_uid=expected[0])
    # The stored JSON, and the pixel data by reference (tests/archive/test_dicomweb_bulkdata.py).
    pixel_data = items[0].pop("7FE00010")
    assert items[0] == stored.metadata
    assert set(pixel_data) == {"vr", "BulkDataURI"}
    event = AccessEvent.objects.for_org(org).get()
    assert (event.kind, event.bytes, event.instances) == ("metadata", 0, len(expected))
    assert not UsageEvent.objects.for_org(org).filter(meter="egress.bytes").exists()


def test_archive_tier_answers_503_restore_required_with_retry_after(org, reader, seeded):
    Instance.objects.for_org(org).filter(sop_instance_uid=seeded.sop_uids[2]).update(tier="archive")

    response = reader.get(f"/dicomweb/studies/{seeded.uid}")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "restore_required"
    assert "1 of 4" in error["message"]
    assert error["fields"]["archived_instances"] == [seeded.sop_uids[2]]
    assert not AccessEvent.objects.exists()
    # The other series is readable, and metadata never needs a restore.
    assert (
        reader.get(f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}").status_code
        == 200
    )
    assert reader.get(f"/dicomweb/studies/{seeded.uid}/metadata").status_code == 200
    availability = reader.get(f"/dicomweb/studies?StudyInstanceUID={seeded.uid}").json()
    assert availability[0]["00080056"]["Value"] == ["ONLINE"]  # study aggregates unchanged


def test_a_missing_object_is_a_clear_503_not_a_broken_stream(org, reader, seeded, archive_root):
    instance = Instance.objects.for_org(org).get(sop_instance_uid=seeded.sop_uids[0])
    (archive_root / "hot" / instance.object_key).unlink()

    response = reader.get(
        f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}"
        f"/instances/{seeded.sop_uids[0]}"
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"


def test_reading_needs_dicom_read(org, token_client, seeded):
    response = token_client(org, ["dicom:write"]).get(f"/dicomweb/studies/{seeded.uid}")

    assert response.status_code == 403
    error = response.json()["error"]
    assert "dicom:read" in error["message"] and error["fields"]["permission"] == ["images.read"]


def _paths(seeded: SeededStudy) -> dict[str, str]:
    study_path = f"/dicomweb/studies/{seeded.uid}"
    series_path = f"{study_path}/series/{seeded.series_uids[0]}"
    instance_path = f"{series_path}/instances/{seeded.sop_uids[0]}"
    return {
        "retrieve-study": study_path,
        "retrieve-series": series_path,
        "retrieve-instance": instance_path,
        "study-metadata": f"{study_path}/metadata",
        "series-metadata": f"{series_path}/metadata",
        "instance-metadata": f"{instance_path}/metadata",
        "search-study-series": f"{study_path}/series",
        "search-study-instances": f"{study_path}/instances",
        "search-series-instances": f"{series_path}/instances",
    }


ENDPOINTS = [
    "retrieve-study",
    "retrieve-series",
    "retrieve-instance",
    "study-metadata",
    "series-metadata",
    "instance-metadata",
    "search-study-series",
    "search-study-instances",
    "search-series-instances",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_another_tenants_uids_are_404_on_every_endpoint(other_org, token_client, seeded, endpoint):
    other = token_client(other_org, ["dicom:read"])

    response = other.get(_paths(seeded)[endpoint])

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"].endswith("not_found")
    assert not AccessEvent.objects.exists()


@pytest.mark.parametrize(
    "query",
    [
        "studies?StudyInstanceUID={study}",
        "series?SeriesInstanceUID={series}",
        "instances?SOPInstanceUID={sop}",
    ],
)
def test_another_tenants_uids_match_nothing_in_searches(other_org, token_client, seeded, query):
    other = token_client(other_org, ["dicom:read"])
    url = "/dicomweb/" + query.format(
        study=seeded.uid, series=seeded.series_uids[0], sop=seeded.sop_uids[0]
    )

    response = other.get(url)

    assert response.status_code == 200 and response.json() == []


def test_a_series_of_another_study_is_404(org, reader, seeded):
    other = ingest_study(
        org, study(patient_id="PAT9", patient_name="X^Y", study_date=dt.date(2026, 1, 1))
    )

    response = reader.get(f"/dicomweb/studies/{other.uid}/series/{seeded.series_uids[0]}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "series_not_found"


def test_storing_a_foreign_study_uid_makes_an_own_study(other_org, token_client, seeded):
    response = token_client(other_org).post(
        f"/dicomweb/studies/{seeded.uid}", data=multipart(seeded.files[:1]), content_type=STOW_TYPE
    )

    assert response.status_code == 200
    assert Study.objects.filter(study_uid=seeded.uid).count() == 2
    assert Study.objects.for_org(other_org).get().instance_count == 1
