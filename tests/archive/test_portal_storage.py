"""The Storage page: hospital buckets (add, edit, test over real HTTP, remove), bytes per tier and
the quota."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from archive.models import ArchiveSettings, StorageLocation, Study
from archive.storage.credentials import decrypt
from tenants.models import AuditEvent, Membership, Organization

pytestmark = pytest.mark.django_db
# The S3 fixtures: moto's server, a bucket per test, failing endpoints.
pytest_plugins = ["tests.archive.conftest_s3"]

# Any credentials work against moto (see tests/archive/conftest_s3.py).
ACCESS_KEY = "AKIASTRATATEST0000"
SECRET_KEY = "strata-test-secret-key"
REGION = "us-east-1"


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def form_data(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Radiology bucket",
        "role": "replica",
        "endpoint_url": "",
        "region": "eu-central-1",
        "bucket": "stmary-radiology",
        "prefix": "strata/",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "encryption": "sse-s3",
        "kms_key_id": "",
        "storage_class_hot": "STANDARD",
        "storage_class_warm": "STANDARD_IA",
        "storage_class_cold": "GLACIER_IR",
        "storage_class_archive": "DEEP_ARCHIVE",
        **overrides,
    }


def test_storage_page_lists_the_platform_default_and_bytes_per_tier(
    client: Client, org: Organization
) -> None:
    Study.objects.create(
        organization=org, study_uid="1.2.3", bytes_hot=3 * 2**30, bytes_cold=512 * 2**20
    )
    response = client.get(url("portal-storage", org))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Platform storage" in content and "Managed by Strata" in content
    tiers = {t["tier"]: t["bytes"] for t in response.context["tiers"]}
    assert tiers == {"hot": "3 GiB", "warm": "0 B", "cold": "512 MiB", "archive": "0 B"}
    assert "no images yet" in content  # the primary can still change


def test_adding_a_bucket_encrypts_the_secret_and_never_shows_it(
    client: Client, org: Organization
) -> None:
    response = client.post(url("portal-location-create", org), form_data())
    assert response.status_code == 302
    location = StorageLocation.objects.get(kind="s3")
    assert decrypt(location.secret_access_key_encrypted) == SECRET_KEY
    assert (location.bucket, location.prefix, location.encryption) == (
        "stmary-radiology",
        "strata/",
        "AES256",
    )
    for page in (url("portal-storage", org), url("portal-location-edit", org, location.pk)):
        content = client.get(page).content.decode()
        assert SECRET_KEY not in content
        assert location.secret_access_key_encrypted not in content
    assert "secret set" in client.get(url("portal-storage", org)).content.decode()
    assert AuditEvent.objects.filter(action="storage_location.created").count() == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bucket": "Bad Bucket!"}, "bucket"),
        ({"endpoint_url": "http://"}, "endpoint_url"),
        ({"secret_access_key": ""}, "secret_access_key"),
        ({"encryption": "sse-kms"}, "kms_key_id"),
        ({"storage_class_hot": "DEEP_ARCHIVE"}, None),
        ({"region": "Frankfurt am Main"}, "region"),
    ],
)
def test_bad_bucket_settings_show_field_errors_and_save_nothing(
    client: Client, org: Organization, overrides, field
) -> None:
    response = client.post(url("portal-location-create", org), form_data(**overrides))
    assert response.status_code == 400
    form = response.context["form"]
    if field:
        assert field in form.errors, form.errors
    else:
        assert form.errors
    assert not StorageLocation.objects.filter(kind="s3").exists()
    assert SECRET_KEY not in response.content.decode()


def test_editing_without_a_secret_keeps_it(client: Client, org: Organization) -> None:
    client.post(url("portal-location-create", org), form_data())
    location = StorageLocation.objects.get(kind="s3")
    token = location.secret_access_key_encrypted
    page = client.get(url("portal-location-edit", org, location.pk)).content.decode()
    assert "Leave empty to keep it" in page
    response = client.post(
        url("portal-location-edit", org, location.pk),
        form_data(secret_access_key="", name="Renamed", storage_class_warm="ONEZONE_IA"),
    )
    assert response.status_code == 302
    location.refresh_from_db()
    assert location.name == "Renamed" and location.secret_access_key_encrypted == token
    assert location.storage_class("warm") == "ONEZONE_IA"


def test_the_platform_location_has_no_edit_page(client: Client, org: Organization) -> None:
    client.get(url("portal-storage", org))
    platform = StorageLocation.objects.get(kind="platform")
    response = client.get(url("portal-location-edit", org, platform.pk))
    assert response.status_code == 302 and response["Location"] == url("portal-storage", org)


def test_making_a_bucket_primary_is_explained_once_images_exist(
    client: Client, org: Organization
) -> None:
    from tests.archive.test_portal_studies import ingest_study

    ingest_study(org, n=1)
    response = client.post(url("portal-location-create", org), form_data(role="primary"))
    assert response.status_code == 409
    content = response.content.decode()
    assert "the primary can only be chosen before the first image arrives" in content
    assert not StorageLocation.objects.filter(kind="s3").exists()
    assert "so its primary is fixed" in client.get(url("portal-storage", org)).content.decode()


def test_test_connection_against_s3_and_clearing_the_result(
    client: Client, org: Organization, s3_bucket: Any
) -> None:
    client.post(
        url("portal-location-create", org),
        form_data(endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name, region=REGION),
    )
    location = StorageLocation.objects.get(kind="s3")
    response = client.post(url("portal-location-test", org, location.pk), follow=True)
    content = response.content.decode()
    assert "connection works" in content
    location.refresh_from_db()
    assert location.last_test_ok is True
    assert "Works" in content and "Clear result" in content

    response = client.post(url("portal-location-test-clear", org, location.pk), follow=True)
    location.refresh_from_db()
    assert location.last_test_at is None
    assert "Not tested" in response.content.decode()


def test_a_failing_connection_test_shows_why(
    client: Client, org: Organization, closed_port: str
) -> None:
    client.post(url("portal-location-create", org), form_data(endpoint_url=closed_port))
    location = StorageLocation.objects.get(kind="s3")
    content = client.post(
        url("portal-location-test", org, location.pk), follow=True
    ).content.decode()
    assert "the connection test failed" in content
    location.refresh_from_db()
    assert location.last_test_ok is False and "connect" in location.last_test_message.lower()


def test_removing_a_location(client: Client, org: Organization) -> None:
    client.post(url("portal-location-create", org), form_data())
    location = StorageLocation.objects.get(kind="s3")
    page = client.get(url("portal-location-delete", org, location.pk)).content.decode()
    assert "Nothing in the bucket itself is deleted" in page
    response = client.post(url("portal-location-delete", org, location.pk))
    assert response.status_code == 302
    assert not StorageLocation.objects.filter(kind="s3").exists()
    assert AuditEvent.objects.filter(action="storage_location.deleted").count() == 1


def test_quota_is_set_shown_and_removed(client: Client, org: Organization) -> None:
    response = client.post(url("portal-storage-quota", org), {"quota_gib": "250"}, follow=True)
    assert "Storage quota set to 250 GiB." in response.content.decode()
    assert ArchiveSettings.objects.get(organization=org).storage_quota_bytes == 250 * 2**30
    assert "Using 0 B of 250 GiB" in client.get(url("portal-storage", org)).content.decode()
    response = client.post(url("portal-storage-quota", org), {"quota_gib": ""}, follow=True)
    assert "Storage quota removed." in response.content.decode()
    assert ArchiveSettings.objects.get(organization=org).storage_quota_bytes is None


@pytest.mark.parametrize("value", ["-5", "abc", "0"])
def test_bad_quota_is_a_field_error(client: Client, org: Organization, value: str) -> None:
    response = client.post(url("portal-storage-quota", org), {"quota_gib": value})
    assert response.status_code == 400
    assert "quota_gib" in response.context["quota_form"].errors
    assert not ArchiveSettings.objects.exists()
