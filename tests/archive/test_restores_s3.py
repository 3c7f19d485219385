"""Restore on demand against the S3 test server over real HTTP: an object in DEEP_ARCHIVE
cannot be read; a WADO-RS read starts RestoreObject and answers 503 with Retry-After and the
restore's id; the poll sees the x-amz-restore header, the instance becomes readable, the
restore.ready webhook goes out, and WADO-RS returns the exact bytes. restore.bytes once."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from archive.models import InstanceReplica, RestoreRequest, StorageLocation
from archive.restores import selectors as restore_selectors
from archive.restores import services as restores
from archive.retention import services as retention
from archive.storage.tiers import TIER_CATALOG
from billing.models import StorageDelta, UsageEvent
from tenants.context import Actor
from tenants.services import webhook_endpoint_create
from tests.archive.test_dicomweb_support import split_multipart
from tests.archive.test_restores_support import archive_all, seed_study, study_row

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")


@pytest.fixture
def bucket_org(org, s3_bucket, make_bucket_location, settings):
    settings.ARCHIVE_BACKEND = "filesystem"
    make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    return org


def test_deep_archive_read_restores_through_wado(
    bucket_org, s3_bucket, token_client, receiver, django_capture_on_commit_callbacks
):
    org = bucket_org
    seeded = seed_study(org, n=2)
    instances = archive_all(org, seeded, s3_client=s3_bucket.client, bucket=s3_bucket.name)
    for instance in instances:
        head = s3_bucket.head(instance.object_key)
        assert head["StorageClass"] == "DEEP_ARCHIVE" and "Restore" not in head
    with pytest.raises(ClientError):  # not readable before a restore
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=instances[0].object_key)
    webhook_endpoint_create(org=org, url=receiver.url, actor=SYSTEM, event_types=["restore.ready"])
    reader = token_client(org, ["dicom:read"])
    url = f"/dicomweb/studies/{seeded.uid}"

    first = reader.get(url)

    assert first.status_code == 503
    typical = TIER_CATALOG["archive"].restore_hours * 3600
    assert typical <= int(first["Retry-After"]) <= typical + restore_selectors.POLL_SECONDS
    body = first.json()
    restore = RestoreRequest.objects.for_org(org).get()
    assert body["restore"]["id"] == restore.pk and body["restore"]["state"] == "in_progress"
    assert body["error"]["code"] == "restore_required"
    # RestoreObject reached the bucket for every object.
    for instance in instances:
        assert "Restore" in s3_bucket.head(instance.object_key)

    with django_capture_on_commit_callbacks(execute=True):
        restores.restores_poll()

    restore.refresh_from_db()
    assert restore.state == "ready" and restore.instances_ready == 2
    for instance in instances:
        instance.refresh_from_db()
        assert instance.restored_until is not None and instance.tier == "archive"
    assert len(receiver.requests) == 1
    event = json.loads(receiver.requests[0]["body"])
    payload = event.get("data", event.get("payload", event))
    assert payload["restore_id"] == restore.pk and payload["study_instance_uids"] == [seeded.uid]

    ok = reader.get(url)
    assert ok.status_code == 200
    parts = split_multipart(ok["Content-Type"], b"".join(ok.streaming_content))
    assert [content for _, content in parts] == seeded.files

    restores.restores_poll()
    metered = UsageEvent.objects.for_org(org).filter(meter="restore.bytes")
    assert sorted(metered.values_list("quantity", flat=True)) == sorted(map(len, seeded.files))


def test_bulk_restore_estimate_uses_the_catalog_time_on_s3(bucket_org, s3_bucket):
    org = bucket_org
    seeded = seed_study(org, n=1)
    archive_all(org, seeded, s3_client=s3_bucket.client, bucket=s3_bucket.name)
    estimate = restore_selectors.restore_estimate(org=org, study=study_row(org, seeded))
    wait = 12 * 3600 + restore_selectors.POLL_SECONDS  # the catalog time, then one poll
    assert estimate.instances == 1 and estimate.typical_seconds == wait


def test_purge_deletes_the_bucket_objects_and_their_replicas(
    bucket_org, s3_bucket, moto_server, make_bucket_location
):
    from django.utils import timezone

    from tests.archive.conftest_s3 import s3_client

    org = bucket_org
    seeded = seed_study(org, n=2)
    study = study_row(org, seeded)
    client = s3_client(moto_server)
    replica_bucket = f"{s3_bucket.name}-dr"
    client.create_bucket(Bucket=replica_bucket)
    replica = make_bucket_location(
        org,
        endpoint_url=moto_server,
        bucket=replica_bucket,
        role=StorageLocation.Role.REPLICA,
        name="DR bucket",
    )
    sizes = [i.size_bytes for i in study.instances.all()]
    for instance in study.instances.all():
        client.put_object(Bucket=replica_bucket, Key=instance.object_key, Body=b"copy")
        InstanceReplica.objects.create(
            organization=org,
            instance=instance,
            location=replica,
            tier="cold",
            state=InstanceReplica.State.DONE,
        )
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    study.purge_after = timezone.now()
    study.save(update_fields=["purge_after"])

    assert retention.trash_purge_due() == {"studies": 1, "instances": 2}

    assert s3_bucket.keys() == []
    assert client.list_objects_v2(Bucket=replica_bucket).get("KeyCount", 0) == 0
    assert not InstanceReplica.objects.exists()
    # The replica copies stop being billed in their tier, once each.
    out = StorageDelta.objects.for_org(org).filter(idempotency_key__endswith=":out")
    assert sorted(out.values_list("tier", "delta_bytes")) == sorted(
        ("cold", -size) for size in sizes
    )
