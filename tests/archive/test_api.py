"""What the archive API answers: the index with filters and pagination, job progress and
failures, storage locations (secrets never out, PATCH semantics, the test over real HTTP), the
quota and AE titles, with field errors for bad input."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from archive.models import DicomAE, IngestJob, Instance, StorageLocation
from archive.storage.credentials import decrypt
from tenants.models import ApiToken, Organization
from tests.archive.test_jobs import dicoms, zipped
from tests.archive.test_portal_studies import archive_instance, ingest_study

pytestmark = pytest.mark.django_db
# The S3 fixtures: moto's server, a bucket per test, failing endpoints.
pytest_plugins = ["tests.archive.conftest_s3"]

# Any credentials work against moto (see tests/archive/conftest_s3.py).
ACCESS_KEY = "AKIASTRATATEST0000"
SECRET_KEY = "strata-test-secret-key"
REGION = "us-east-1"


@pytest.fixture
def api(org: Organization, make_token: Callable[..., tuple[ApiToken, str]]) -> APIClient:
    _, secret = make_token(org, ["dicom:read", "dicom:write", "admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def fields(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    return dict(response.json()["error"]["fields"])


# --- the index -------------------------------------------------------------------------------


def test_studies_filter_and_page(
    api: APIClient, org: Organization, other_org: Organization
) -> None:
    today = dt.date.today()
    curie, _ = ingest_study(org, "CT", name="Curie^Marie", patient_id="PAT1", study_date=today)
    ingest_study(org, "MR", name="Bohr^Niels", study_date=today - dt.timedelta(days=30))
    ingest_study(other_org, "CT", name="Curie^Pierre")

    listing = api.get("/api/v1/studies/", {"page_size": 1})
    assert listing.status_code == 200
    body = listing.json()
    assert len(body["results"]) == 1 and body["next"]
    second = api.get(body["next"]).json()
    assert len(second["results"]) == 1 and not second["next"]

    found = api.get("/api/v1/studies/", {"patient": "curie", "modality": "CT"}).json()["results"]
    assert [s["id"] for s in found] == [curie.pk]
    study = found[0]
    assert study["study_instance_uid"] == curie.study_uid
    assert study["modalities"] == ["CT"] and study["instance_count"] == 2
    assert study["bytes_by_tier"]["hot"] == study["total_bytes"]
    since = api.get("/api/v1/studies/", {"date_from": str(today - dt.timedelta(days=7))})
    assert [s["id"] for s in since.json()["results"]] == [curie.pk]
    bad = api.get("/api/v1/studies/", {"date_from": "2024-02-01", "date_to": "2024-01-01"})
    assert "date_to" in fields(bad)
    assert "date_from" in fields(api.get("/api/v1/studies/", {"date_from": "yesterday"}))


def test_study_series_and_instances(api: APIClient, org: Organization) -> None:
    study, files = ingest_study(org, "CT", n=2, series=2)
    archive_instance(Instance.objects.for_org(org).latest("id"))
    assert api.get(f"/api/v1/studies/{study.pk}/").json()["series_count"] == 2
    series = api.get(f"/api/v1/studies/{study.pk}/series/").json()["results"]
    assert [s["series_number"] for s in series] == [1, 2]
    assert series[1]["tiers"] == ["hot", "archive"]
    one = api.get(f"/api/v1/series/{series[1]['id']}/").json()
    assert one["instance_count"] == 2 and one["study"] == study.pk
    instances = api.get(f"/api/v1/series/{series[1]['id']}/instances/").json()["results"]
    assert [i["instance_number"] for i in instances] == [1, 2]
    assert [i["readable"] for i in instances] == [True, False]
    assert instances[1]["tier"] == "archive"
    detail = api.get(f"/api/v1/instances/{instances[0]['id']}/").json()
    assert detail["size_bytes"] in map(len, files) and len(detail["sha256"]) == 64


def test_unknown_ids_are_404(api: APIClient) -> None:
    for path in ("studies/999/", "series/999/", "instances/999/", "ingest-jobs/999/"):
        response = api.get(f"/api/v1/{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- ingest jobs -----------------------------------------------------------------------------


def test_import_job_from_s3_shows_progress_and_failures(
    api: APIClient, org: Organization, s3_bucket: Any, django_capture_on_commit_callbacks
) -> None:
    files = dicoms(3)
    s3_bucket.put("in/a.dcm", files[0])
    s3_bucket.put("in/b.zip", zipped({"b1": files[1], "b2": files[2]}))
    s3_bucket.put("in/c.txt", b"hello")
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(
            "/api/v1/ingest-jobs/",
            {
                "bucket": s3_bucket.name,
                "prefix": "in/",
                "endpoint_url": s3_bucket.endpoint_url,
                "region": REGION,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            },
            format="json",
        )
    assert created.status_code == 201, created.content
    assert "secret_access_key" not in created.json()
    job = api.get(f"/api/v1/ingest-jobs/{created.json()['id']}/").json()
    assert job["kind"] == "import" and job["state"] == "done" and job["phase"] == "done"
    assert (job["received"], job["stored"], job["duplicate"], job["failed"]) == (4, 3, 0, 1)
    assert job["total_files"] == 4 and job["percent"] == 100
    assert job["source"] == f"s3://{s3_bucket.name}/in/"
    failures = api.get(f"/api/v1/ingest-jobs/{job['id']}/failures/").json()["results"]
    assert len(failures) == 1
    assert failures[0]["source"].endswith("in/c.txt")
    assert failures[0]["reason_code_hex"].startswith("0x") and failures[0]["reason"]
    listed = api.get("/api/v1/ingest-jobs/", {"kind": "import", "state": "done"}).json()
    assert [j["id"] for j in listed["results"]] == [job["id"]]
    assert "kind" in fields(api.get("/api/v1/ingest-jobs/", {"kind": "fax"}))


def test_import_job_with_unreachable_bucket_fails_not_500(
    api: APIClient, closed_port: str, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(
            "/api/v1/ingest-jobs/",
            {
                "bucket": "hospital-export",
                "endpoint_url": closed_port,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            },
            format="json",
        )
    assert created.status_code == 201
    job = api.get(f"/api/v1/ingest-jobs/{created.json()['id']}/").json()
    assert job["state"] == "failed" and "Could not list s3://hospital-export/" in job["error"]


def test_bad_import_input_is_400_with_fields_and_no_job(api: APIClient) -> None:
    response = api.post(
        "/api/v1/ingest-jobs/",
        {"bucket": "UPPER", "endpoint_url": "ftp://x", "access_key_id": ""},
        format="json",
    )
    errors = fields(response)
    assert {"access_key_id", "secret_access_key"} <= set(errors)
    response = api.post(
        "/api/v1/ingest-jobs/",
        {
            "bucket": "UPPER",
            "endpoint_url": "ftp://x",
            "access_key_id": "A",
            "secret_access_key": "s",
        },
        format="json",
    )
    assert {"bucket", "endpoint_url"} <= set(fields(response))
    assert not IngestJob.objects.exists()


# --- storage locations -----------------------------------------------------------------------


def test_locations_never_return_the_secret_and_patch_keeps_omitted_fields(
    api: APIClient, org: Organization
) -> None:
    listing = api.get("/api/v1/storage-locations/").json()["results"]
    assert [loc["kind"] for loc in listing] == ["platform"]
    created = api.post(
        "/api/v1/storage-locations/",
        {
            "name": "DR replica",
            "bucket": "stmary-dr",
            "region": "eu-west-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "encryption": "sse-kms",
            "kms_key_id": "arn:aws:kms:eu-west-1:1:key/k",
            "storage_classes": {"warm": "ONEZONE_IA", "archive": "NONE"},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert SECRET_KEY not in created.content.decode()
    assert body["secret_access_key_set"] is True and body["role"] == "replica"
    assert body["encryption"] == "sse-kms"
    # NONE: this store has no class for the archive tier, which it then cannot serve.
    assert body["storage_classes"] == {
        "hot": "STANDARD",
        "warm": "ONEZONE_IA",
        "cold": "GLACIER_IR",
        "archive": "NONE",
    }
    patched = api.patch(
        f"/api/v1/storage-locations/{body['id']}/", {"name": "Renamed"}, format="json"
    ).json()
    assert patched["name"] == "Renamed" and patched["bucket"] == "stmary-dr"
    assert patched["storage_classes"]["warm"] == "ONEZONE_IA"
    assert patched["storage_classes"]["archive"] == "NONE"
    location = StorageLocation.objects.get(pk=body["id"])
    assert decrypt(location.secret_access_key_encrypted) == SECRET_KEY
    api.patch(
        f"/api/v1/storage-locations/{body['id']}/", {"secret_access_key": "new"}, format="json"
    )
    location.refresh_from_db()
    assert decrypt(location.secret_access_key_encrypted) == "new"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bucket": "x"}, "bucket"),
        ({"encryption": "sse-kms"}, "kms_key_id"),
        ({"storage_classes": {"hot": "GLACIER"}}, "storage_classes"),
        ({"storage_classes": {"hot": "PAPER"}}, "storage_classes.hot"),
        ({"storage_classes": {"hot": "NONE"}}, "storage_classes"),
        ({"endpoint_url": "https://s3.example.com/path"}, "endpoint_url"),
        ({"secret_access_key": ""}, "secret_access_key"),
    ],
)
def test_bad_location_input_is_400_and_nothing_saved(api: APIClient, body, field) -> None:
    payload = {
        "name": "Bucket",
        "bucket": "stmary-radiology",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **body,
    }
    assert field in fields(api.post("/api/v1/storage-locations/", payload, format="json"))
    assert not StorageLocation.objects.filter(kind="s3").exists()


def test_location_test_endpoint_over_real_http(api: APIClient, s3_bucket: Any) -> None:
    created = api.post(
        "/api/v1/storage-locations/",
        {
            "name": "Primary bucket",
            "role": "primary",
            "bucket": s3_bucket.name,
            "endpoint_url": s3_bucket.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        format="json",
    ).json()
    tested = api.post(f"/api/v1/storage-locations/{created['id']}/test/")
    assert tested.status_code == 200
    assert tested.json()["last_test_ok"] is True and tested.json()["last_test_at"]
    # The platform default was replaced.
    kinds = [loc["kind"] for loc in api.get("/api/v1/storage-locations/").json()["results"]]
    assert kinds == ["s3"]


def test_location_holding_images_cannot_be_deleted(api: APIClient, org: Organization) -> None:
    ingest_study(org, n=1)
    platform = StorageLocation.objects.get(organization=org)
    response = api.delete(f"/api/v1/storage-locations/{platform.pk}/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    primary = api.post(
        "/api/v1/storage-locations/",
        {
            "name": "New primary",
            "role": "primary",
            "bucket": "stmary-new",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        format="json",
    )
    assert primary.status_code == 409
    assert "role" in primary.json()["error"]["fields"]


def test_archive_settings_quota(api: APIClient, org: Organization) -> None:
    ingest_study(org, n=1)
    body = api.get("/api/v1/archive-settings/").json()
    assert body["storage_quota_bytes"] is None and body["stored_bytes"] > 0
    assert set(body["bytes_by_tier"]) == {"hot", "warm", "cold", "archive"}
    updated = api.patch(
        "/api/v1/archive-settings/", {"storage_quota_bytes": 5 * 2**40}, format="json"
    ).json()
    assert updated["storage_quota_bytes"] == 5 * 2**40
    assert "storage_quota_bytes" in fields(
        api.patch("/api/v1/archive-settings/", {"storage_quota_bytes": 0}, format="json")
    )
    cleared = api.patch("/api/v1/archive-settings/", {"storage_quota_bytes": None}, format="json")
    assert cleared.json()["storage_quota_bytes"] is None


# --- AE titles -------------------------------------------------------------------------------


def test_ae_titles_crud(api: APIClient, org: Organization) -> None:
    created = api.post(
        "/api/v1/dicom-aes/",
        {"ae_title": "STMARY_MR", "allowed_networks": ["198.51.100.0/24"]},
        format="json",
    )
    assert created.status_code == 201
    ae_id = created.json()["id"]
    assert created.json()["allowed_calling_ae_titles"] == []
    patched = api.patch(
        f"/api/v1/dicom-aes/{ae_id}/", {"allowed_calling_ae_titles": ["MR1"]}, format="json"
    ).json()
    assert patched["allowed_calling_ae_titles"] == ["MR1"]
    assert patched["allowed_networks"] == ["198.51.100.0/24"]  # omitted: kept
    renamed = api.patch(f"/api/v1/dicom-aes/{ae_id}/", {"ae_title": "OTHER"}, format="json")
    assert "ae_title" in fields(renamed)
    assert api.get("/api/v1/dicom-aes/").json()["results"][0]["ae_title"] == "STMARY_MR"
    assert api.delete(f"/api/v1/dicom-aes/{ae_id}/").status_code == 204
    assert not DicomAE.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ae_title": "WITH\\SLASH"}, "ae_title"),
        ({"ae_title": ""}, "ae_title"),
        ({"ae_title": "OK", "allowed_networks": ["300.1.1.1"]}, "allowed_networks"),
        ({"ae_title": "OK", "allowed_networks": ["10.0.0.0/40"]}, "allowed_networks"),
        ({"ae_title": "OK", "allowed_calling_ae_titles": ["x" * 17]}, "allowed_calling_ae_titles"),
    ],
)
def test_bad_ae_input_is_400_with_fields_and_nothing_saved(api: APIClient, body, field) -> None:
    assert field in fields(api.post("/api/v1/dicom-aes/", body, format="json"))
    assert not DicomAE.objects.exists()
