"""The consistency check on a hospital's S3 bucket (moto's server over HTTP): storage classes
as tiers, a stray object, an object whose class the index does not know, a bucket that cannot
be listed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from archive.models import Instance, Reconciliation, StorageLocation
from archive.reconcile.services import Kind, reconcile_run
from archive.storage import store_for
from tenants.models import Organization
from tests.archive.conftest_s3 import Bucket
from tests.archive.reconcile_helpers import assert_reconciled
from tests.archive.test_tiering import ingest

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.archive.conftest_s3"]


@pytest.fixture
def bucket_location(
    org: Organization, s3_bucket: Bucket, make_bucket_location: Callable[..., StorageLocation]
) -> StorageLocation:
    return make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)


def test_a_study_in_a_hospital_bucket_reconciles(
    org: Organization, bucket_location: StorageLocation, ct_study: list[bytes]
) -> None:
    instances = ingest(org, ct_study, bucket_location)
    run = assert_reconciled(org)
    hot = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage", "hot"))
    assert hot["store_bytes"] == sum(i.size_bytes for i in instances)


def test_a_stray_object_and_a_changed_storage_class_are_reported(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
) -> None:
    instances = ingest(org, ct_study, bucket_location)
    s3_bucket.put(f"org-{org.pk}/stray.dcm", b"left behind")
    # Someone changed the class in the bucket, not through a tier move.
    store_for(bucket_location).change_tier(
        key=instances[0].object_key, from_tier="hot", to_tier="cold"
    )
    run = reconcile_run(org=org)
    found = {(d["kind"], d["key"]) for d in run.differences}
    assert found == {
        (Kind.UNINDEXED, f"org-{org.pk}/stray.dcm"),
        (Kind.TIER, instances[0].object_key),
    }
    tier = next(d for d in run.differences if d["kind"] == Kind.TIER)
    assert (tier["tier"], tier["store_tier"]) == ("hot", "cold")


def test_a_bucket_that_cannot_be_listed_fails_the_run(
    org: Organization,
    make_bucket_location: Callable[..., StorageLocation],
    s3_bucket: Bucket,
    closed_port: str,
    ct_study: list[bytes],
) -> None:
    location = make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    ingest(org, ct_study[:1], location)
    StorageLocation.objects.filter(pk=location.pk).update(endpoint_url=closed_port)
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.FAILED
    assert s3_bucket.name in run.error
    assert Instance.objects.for_org(org).count() == 1
