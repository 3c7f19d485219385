"""Replication from the platform filesystem to a hospital bucket on moto's S3 server over HTTP:
the copy carries its SHA-256 (checked by S3 on upload, kept in the metadata), lands in the
replica tier's storage class, and a drill detects an object overwritten or deleted in the bucket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from archive.models import InstanceReplica
from archive.replicas import services
from archive.replicas.drill import replica_drill
from billing.models import StorageDelta
from tenants.context import Actor
from tenants.models import Organization
from tests.archive.test_replicas import ingest_instances, sync_and_copy

if TYPE_CHECKING:
    from tests.archive.conftest_s3 import Bucket

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.archive.conftest_s3"]

ACTOR = Actor.system("tests")


@pytest.fixture
def s3_replica(org: Organization, s3_bucket: Bucket, make_bucket_location: Any) -> Bucket:
    make_bucket_location(
        org,
        endpoint_url=s3_bucket.endpoint_url,
        bucket=s3_bucket.name,
        role="replica",
        prefix="dr/",
        name="DR bucket",
        encryption="none",
    )
    return s3_bucket


def test_filesystem_to_s3_replica_is_verified_and_kept_in_the_replica_storage_class(
    org: Organization, s3_replica: Bucket
) -> None:
    instances = ingest_instances(org, 2)
    outcome = sync_and_copy(org)
    assert len(outcome.done) == 2, InstanceReplica.objects.values_list("error", flat=True)
    for instance in instances:
        head = s3_replica.head(f"dr/{instance.object_key}")
        assert head["ContentLength"] == instance.size_bytes
        assert head["Metadata"]["sha256"] == instance.sha256
        assert head["StorageClass"] == "GLACIER_IR"  # the cold tier of the location
    deltas = StorageDelta.objects.for_org(org).filter(idempotency_key__startswith="replica:")
    assert sorted(d.delta_bytes for d in deltas) == sorted(i.size_bytes for i in instances)
    check = replica_drill(org=org, sample=10, actor=ACTOR)
    assert (check.sampled, check.verified) == (2, 2)
    assert check.bytes_read == sum(i.size_bytes for i in instances)


def test_drill_on_s3_detects_an_overwritten_and_a_deleted_object(
    org: Organization, s3_replica: Bucket
) -> None:
    damaged, deleted = ingest_instances(org, 2)
    sync_and_copy(org)
    # Overwritten outside Strata (no sha256 metadata any more): the bytes read back differ.
    body = s3_replica.client.get_object(Bucket=s3_replica.name, Key=f"dr/{damaged.object_key}")[
        "Body"
    ].read()
    s3_replica.put(f"dr/{damaged.object_key}", body[:-1] + bytes([body[-1] ^ 1]))
    s3_replica.client.delete_object(Bucket=s3_replica.name, Key=f"dr/{deleted.object_key}")
    check = replica_drill(org=org, sample=10, actor=ACTOR)
    assert (check.verified, check.missing, check.mismatched) == (0, 1, 1)
    problems = {p["sop_instance_uid"]: p["problem"] for p in check.problems}
    assert problems == {damaged.sop_instance_uid: "mismatched", deleted.sop_instance_uid: "missing"}
    # Replication repairs both.
    assert len(sync_and_copy(org).done) == 2
    assert replica_drill(org=org, sample=10, actor=ACTOR).verified == 2


def test_an_unreachable_replica_bucket_is_retried_then_failed(
    org: Organization, failing_s3: str, make_bucket_location: Any
) -> None:
    make_bucket_location(
        org, endpoint_url=failing_s3, bucket="dr-bucket", role="replica", encryption="none"
    )
    ingest_instances(org, 1)
    services.replicas_sync(org=org)
    row = InstanceReplica.objects.for_org(org).get()
    for _ in range(services.MAX_ATTEMPTS):
        services.replica_copy(org=org, replica_ids=[row.pk])
    row.refresh_from_db()
    assert row.state == "failed" and row.attempts == services.MAX_ATTEMPTS
    assert "InternalError" in row.error or "500" in row.error
    assert not StorageDelta.objects.filter(idempotency_key__startswith="replica:").exists()
