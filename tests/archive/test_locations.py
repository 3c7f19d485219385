"""Storage location services: validation, the one primary, the connection test and ingest into a
hospital's own bucket on moto's S3 server over real HTTP, the quota."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.locations import services as location_services
from archive.locations.services import LocationInput
from archive.models import TIERS, ArchiveSettings, Instance, StorageLocation
from archive.storage import store_for
from archive.storage.credentials import decrypt
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import AuditEvent, Organization

pytestmark = pytest.mark.django_db
# The S3 fixtures: moto's server, a bucket per test, failing endpoints.
pytest_plugins = ["tests.archive.conftest_s3"]

# Any credentials work against moto (see tests/archive/conftest_s3.py).
ACCESS_KEY = "AKIASTRATATEST0000"
SECRET_KEY = "strata-test-secret-key"
REGION = "us-east-1"

ACTOR = Actor.system("tests")


def one_dicom() -> bytes:
    return to_bytes(make_instance(study_spec("CT"), series_uid=generate_uid(), rows=16, columns=16))


def ingest_bytes(org: Organization, data: bytes) -> pipeline.IngestResult:
    location = pipeline.location_primary(org)
    spooled = pipeline.spool_file(store_for(location), io.BytesIO(data))
    return pipeline.instance_ingest(org=org, spooled=spooled)


def valid(**overrides: Any) -> LocationInput:
    values: dict[str, Any] = {
        "name": "Radiology bucket",
        "bucket": "stmary-radiology",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "region": "eu-central-1",
        **overrides,
    }
    return LocationInput(**values)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"bucket": "UPPER_case"}, "bucket"),
        ({"bucket": "192.168.1.1"}, "bucket"),
        ({"bucket": "a..b"}, "bucket"),
        ({"prefix": "../escape"}, "prefix"),
        ({"endpoint_url": "not a url"}, "endpoint_url"),
        ({"endpoint_url": "https://s3.example.com/bucket/path"}, "endpoint_url"),
        ({"region": "EU Central"}, "region"),
        ({"access_key_id": ""}, "access_key_id"),
        ({"secret_access_key": ""}, "secret_access_key"),
        ({"encryption": "rot13"}, "encryption"),
        ({"encryption": "sse-kms"}, "kms_key_id"),
        ({"encryption": "sse-s3", "kms_key_id": "arn:aws:kms:key/1"}, "kms_key_id"),
        ({"storage_classes": {"hot": "GLACIER"}}, "storage_classes"),
        ({"storage_classes": {"warm": "CHEAP"}}, "storage_classes"),
        ({"storage_classes": {"hot": "NONE"}}, "storage_classes"),
        ({"role": "mirror"}, "role"),
    ],
)
def test_bad_bucket_settings_are_refused_with_field_errors_and_nothing_saved(
    org, overrides, field
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        location_services.location_create(org=org, data=valid(**overrides), actor=ACTOR)
    assert field in caught.value.fields, caught.value.fields
    assert not StorageLocation.objects.filter(kind="s3").exists()
    assert not AuditEvent.objects.filter(action__startswith="storage_location").exists()


def test_the_secret_is_stored_encrypted_and_audited_without_it(org) -> None:
    location = location_services.location_create(
        org=org,
        data=valid(encryption="sse-kms", kms_key_id="arn:aws:kms:eu-central-1:1:key/abc"),
        actor=ACTOR,
    )
    assert location.secret_access_key_encrypted != SECRET_KEY
    assert decrypt(location.secret_access_key_encrypted) == SECRET_KEY
    assert location.encryption == "aws:kms"
    assert location.storage_classes == {
        "hot": "STANDARD",
        "warm": "STANDARD_IA",
        "cold": "GLACIER_IR",
        "archive": "DEEP_ARCHIVE",
    }
    event = AuditEvent.objects.get(action="storage_location.created")
    assert SECRET_KEY not in str(event.details)
    assert location.secret_access_key_encrypted not in str(event.details)


def test_an_update_without_a_secret_keeps_the_old_one(org) -> None:
    location = location_services.location_create(org=org, data=valid(), actor=ACTOR)
    token = location.secret_access_key_encrypted
    location_services.location_update(
        org=org, location=location, data=valid(secret_access_key="", name="Renamed"), actor=ACTOR
    )
    location.refresh_from_db()
    assert location.name == "Renamed" and location.secret_access_key_encrypted == token


def test_a_tier_the_store_lacks_is_marked_not_available_and_not_served(org) -> None:
    """An S3-compatible store without Deep Archive: the archive tier is "NONE", which the
    location keeps as no storage class, so tier rules and moves to it are refused."""
    from archive.storage.tiers import location_serves

    location = location_services.location_create(
        org=org, data=valid(storage_classes={"archive": "NONE"}), actor=ACTOR
    )
    assert location.storage_class("archive") == ""
    assert not location_serves(location, "archive")
    assert location_serves(location, "cold") and location.storage_class("cold") == "GLACIER_IR"
    # An update that leaves the storage classes alone keeps the tier unavailable.
    location_services.location_update(
        org=org,
        location=location,
        data=valid(
            secret_access_key="",
            name="Renamed",
            storage_classes={t: location.storage_class(t) or "NONE" for t in TIERS},
        ),
        actor=ACTOR,
    )
    location.refresh_from_db()
    assert not location_serves(location, "archive")


# --- the primary ------------------------------------------------------------------------------


def test_a_bucket_replaces_the_platform_primary_while_there_are_no_images(org) -> None:
    platform = pipeline.location_primary(org)
    bucket = location_services.location_create(org=org, data=valid(role="primary"), actor=ACTOR)
    assert not StorageLocation.objects.filter(pk=platform.pk).exists()
    assert pipeline.location_primary(org) == bucket
    # A second bucket as primary demotes the first to replica.
    second = location_services.location_create(
        org=org, data=valid(role="primary", bucket="stmary-second"), actor=ACTOR
    )
    bucket.refresh_from_db()
    assert bucket.role == "replica" and pipeline.location_primary(org) == second
    # Removing the primary bucket brings the platform default back.
    location_services.location_delete(org=org, location=second, actor=ACTOR)
    assert pipeline.location_primary(org).kind == StorageLocation.Kind.PLATFORM


def test_the_primary_cannot_change_once_images_are_stored(org) -> None:
    assert ingest_bytes(org, one_dicom()).status == "stored"
    with pytest.raises(Conflict) as caught:
        location_services.location_create(org=org, data=valid(role="primary"), actor=ACTOR)
    assert "role" in caught.value.fields
    replica = location_services.location_create(org=org, data=valid(role="replica"), actor=ACTOR)
    with pytest.raises(Conflict):
        location_services.location_update(
            org=org, location=replica, data=valid(role="primary"), actor=ACTOR
        )
    assert pipeline.location_primary(org).kind == StorageLocation.Kind.PLATFORM


def test_a_primary_cannot_be_demoted_directly(org) -> None:
    bucket = location_services.location_create(org=org, data=valid(role="primary"), actor=ACTOR)
    with pytest.raises(Conflict):
        location_services.location_update(
            org=org, location=bucket, data=valid(role="replica"), actor=ACTOR
        )


def test_the_platform_location_cannot_be_edited_tested_or_removed(org) -> None:
    platform = pipeline.location_primary(org)
    with pytest.raises(Conflict):
        location_services.location_update(org=org, location=platform, data=valid(), actor=ACTOR)
    with pytest.raises(Conflict):
        location_services.location_test(org=org, location=platform, actor=ACTOR)
    with pytest.raises(Conflict):
        location_services.location_delete(org=org, location=platform, actor=ACTOR)


def test_a_location_holding_images_keeps_its_bucket_and_cannot_be_removed(
    make_bucket_location, org, s3_bucket: Any
) -> None:
    location = make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    assert ingest_bytes(org, one_dicom()).status == "stored"
    with pytest.raises(Conflict):
        location_services.location_delete(org=org, location=location, actor=ACTOR)
    moved = valid(
        role="primary", bucket="another-bucket", endpoint_url=s3_bucket.endpoint_url, region=REGION
    )
    with pytest.raises(Conflict):
        location_services.location_update(org=org, location=location, data=moved, actor=ACTOR)
    # Rotating the credentials is fine.
    same = valid(
        role="primary",
        bucket=s3_bucket.name,
        endpoint_url=s3_bucket.endpoint_url,
        region=REGION,
        secret_access_key="rotated-secret",
    )
    location_services.location_update(org=org, location=location, data=same, actor=ACTOR)
    location.refresh_from_db()
    assert decrypt(location.secret_access_key_encrypted) == "rotated-secret"


# --- S3 over real HTTP ---------------------------------------------------------------------------


def test_test_connection_of_a_hospital_bucket_succeeds(
    make_bucket_location, org, s3_bucket: Any
) -> None:
    location = make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    result = location_services.location_test(org=org, location=location, actor=ACTOR)
    location.refresh_from_db()
    assert result.last_test_ok is True and location.last_test_ok is True
    assert s3_bucket.name in location.last_test_message
    assert location.last_test_at is not None
    assert s3_bucket.keys() == []  # the probe object is gone
    assert AuditEvent.objects.filter(action="storage_location.tested").count() == 1
    location_services.location_test_clear(org=org, location=location, actor=ACTOR)
    location.refresh_from_db()
    assert (location.last_test_at, location.last_test_ok, location.last_test_message) == (
        None,
        None,
        "",
    )


@pytest.mark.parametrize("endpoint", ["closed_port", "failing_s3"])
def test_test_connection_failure_is_kept_with_a_clear_message(
    make_bucket_location, org, endpoint, request
) -> None:
    url = request.getfixturevalue(endpoint)
    location = make_bucket_location(org, endpoint_url=url, bucket="radiology", role="replica")
    result = location_services.location_test(org=org, location=location, actor=ACTOR)
    assert result.last_test_ok is False
    message = result.last_test_message
    assert "connect" in message.lower() or "InternalError" in message


def test_wrong_credentials_fail_the_test(make_bucket_location, org, s3_bucket: Any) -> None:
    location = make_bucket_location(
        org, endpoint_url=s3_bucket.endpoint_url, bucket="bucket-that-does-not-exist"
    )
    result = location_services.location_test(org=org, location=location, actor=ACTOR)
    assert result.last_test_ok is False and "NoSuchBucket" in result.last_test_message


@pytest.mark.parametrize(("encryption", "expected"), [("sse-s3", "AES256"), ("sse-kms", "aws:kms")])
def test_ingest_into_a_hospital_bucket_uses_its_storage_class_and_encryption(
    make_bucket_location, org, s3_bucket: Any, encryption, expected
) -> None:
    kms = "arn:aws:kms:us-east-1:123456789012:key/strata-test" if encryption == "sse-kms" else ""
    make_bucket_location(
        org,
        endpoint_url=s3_bucket.endpoint_url,
        bucket=s3_bucket.name,
        prefix="strata/",
        encryption=encryption,
        kms_key_id=kms,
        storage_classes={"hot": "STANDARD_IA"},
    )
    data = one_dicom()
    result = ingest_bytes(org, data)
    assert result.status == "stored", result.reason
    assert result.instance_id is not None
    instance = Instance.objects.get(pk=result.instance_id)
    key = f"strata/{instance.object_key}"
    head = s3_bucket.head(key)
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == expected
    assert head["ContentLength"] == len(data)
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    assert body == data


def test_ingest_into_a_bucket_answering_500_fails_clearly_and_indexes_nothing(
    make_bucket_location, org, failing_s3: str
) -> None:
    make_bucket_location(org, endpoint_url=failing_s3, bucket="radiology")
    result = ingest_bytes(org, one_dicom())
    assert result.status == "failed"
    assert result.reason.startswith("The object store failed")
    assert not Instance.objects.exists()


def test_ingest_into_an_unreachable_bucket_fails_clearly_and_indexes_nothing(
    make_bucket_location, org, closed_port: str
) -> None:
    make_bucket_location(org, endpoint_url=closed_port, bucket="radiology")
    result = ingest_bytes(org, one_dicom())
    assert result.status == "failed"
    assert result.reason.startswith("The object store failed")
    assert not Instance.objects.exists()


# --- quota -----------------------------------------------------------------------------------


def test_quota_is_set_removed_and_audited(org) -> None:
    location_services.archive_settings_update(org=org, storage_quota_bytes=10 * 2**30, actor=ACTOR)
    assert ArchiveSettings.objects.get(organization=org).storage_quota_bytes == 10 * 2**30
    location_services.archive_settings_update(org=org, storage_quota_bytes=None, actor=ACTOR)
    assert ArchiveSettings.objects.get(organization=org).storage_quota_bytes is None
    assert AuditEvent.objects.filter(action="archive_settings.updated").count() == 2
    with pytest.raises(ValidationFailed):
        location_services.archive_settings_update(org=org, storage_quota_bytes=0, actor=ACTOR)
