"""Platform staff's archive admin: the index and jobs read-only, storage locations through the
services (validation, the encrypted secret, the audit event with the staff member)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from archive.ingest import jobs, pipeline
from archive.models import IngestJob, StorageLocation
from archive.storage.credentials import decrypt
from tenants.context import Actor
from tenants.models import AuditEvent, Organization
from tests.archive.test_portal_studies import ingest_study
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    user: Any = UserFactory(
        email="ops@strata.example", username="ops@strata.example", is_staff=True, is_superuser=True
    )
    client.force_login(user)
    return client


def form(org: Organization, **overrides: Any) -> dict[str, Any]:
    return {
        "organization": org.pk,
        "name": "Hospital bucket",
        "role": "replica",
        "endpoint_url": "",
        "region": "eu-central-1",
        "bucket": "stmary-admin",
        "prefix": "",
        "access_key_id": "AKIAADMIN",
        "secret_access_key": "admin-secret",
        "encryption_mode": "sse-s3",
        "kms_key_id": "",
        "storage_class_hot": "STANDARD",
        "storage_class_warm": "STANDARD_IA",
        "storage_class_cold": "GLACIER_IR",
        "storage_class_archive": "DEEP_ARCHIVE",
        **overrides,
    }


@pytest.mark.parametrize("model", ["study", "series", "instance", "ingestjob", "accessevent"])
def test_index_jobs_and_accesses_are_read_only(
    staff: Client, org: Organization, model: str
) -> None:
    ingest_study(org, n=1)
    assert staff.get(f"/admin/archive/{model}/").status_code == 200
    assert staff.get(f"/admin/archive/{model}/add/").status_code == 403


def test_job_admin_hides_the_import_secret(staff: Client, org: Organization) -> None:
    job = jobs.import_job_create(
        org=org,
        data=jobs.ImportInput(
            bucket="hospital-export", access_key_id="AKIA", secret_access_key="s3cr3t-value"
        ),
        actor=Actor.system("tests"),
    )
    page = staff.get(f"/admin/archive/ingestjob/{job.pk}/change/").content.decode()
    assert "hospital-export" in page
    assert IngestJob.objects.get().params["secret"] not in page and "s3cr3t-value" not in page


def test_staff_add_a_primary_bucket_through_the_service(staff: Client, org: Organization) -> None:
    pipeline.location_primary(org)  # the platform default exists
    response = staff.post("/admin/archive/storagelocation/add/", form(org, role="primary"))
    assert response.status_code == 302, response.content.decode()[:3000]
    location = StorageLocation.objects.get(kind="s3")
    assert location.role == "primary" and location.encryption == "AES256"
    assert decrypt(location.secret_access_key_encrypted) == "admin-secret"
    assert not StorageLocation.objects.filter(kind="platform").exists()
    event = AuditEvent.objects.get(action="storage_location.created")
    assert event.actor_label == "ops@strata.example"


def test_staff_changes_are_validated_and_keep_the_secret(staff: Client, org: Organization) -> None:
    staff.post("/admin/archive/storagelocation/add/", form(org))
    location = StorageLocation.objects.get(kind="s3")
    token = location.secret_access_key_encrypted
    page = staff.get(f"/admin/archive/storagelocation/{location.pk}/change/").content.decode()
    assert "admin-secret" not in page and token not in page
    bad = staff.post(
        f"/admin/archive/storagelocation/{location.pk}/change/",
        form(org, bucket="NOT VALID", secret_access_key=""),
    )
    assert bad.status_code == 200 and "bucket name" in bad.content.decode()
    ok = staff.post(
        f"/admin/archive/storagelocation/{location.pk}/change/",
        form(org, name="Renamed", secret_access_key=""),
    )
    assert ok.status_code == 302
    location.refresh_from_db()
    assert location.name == "Renamed" and location.secret_access_key_encrypted == token


def test_staff_cannot_make_a_primary_once_images_exist(staff: Client, org: Organization) -> None:
    ingest_study(org, n=1)
    response = staff.post("/admin/archive/storagelocation/add/", form(org, role="primary"))
    assert response.status_code == 200
    assert "primary can only change before the first image" in response.content.decode()
    assert not StorageLocation.objects.filter(kind="s3").exists()


def test_platform_and_used_locations_cannot_be_changed_or_deleted(
    staff: Client, org: Organization
) -> None:
    ingest_study(org, n=1)
    platform = StorageLocation.objects.get(kind="platform")
    assert (
        staff.post(
            f"/admin/archive/storagelocation/{platform.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    staff.post(f"/admin/archive/storagelocation/{platform.pk}/change/", form(org, name="Hacked"))
    platform.refresh_from_db()
    assert platform.name == "Platform storage"
