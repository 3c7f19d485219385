"""Tier moves against moto's S3 server over HTTP: in-place storage-class changes checked by HEAD,
moves between locations, a store failing the copy, and a bucket that cannot serve a tier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from django.conf import settings

from archive.models import Instance, StorageLocation, TierMove
from archive.storage import store_for
from archive.tiering import moves as tier_moves
from tenants.models import Organization
from tests.archive.conftest_s3 import Bucket
from tests.archive.reconcile_helpers import assert_reconciled
from tests.archive.test_tiering import (
    ids,
    ingest,
    ledger,
    moved_bytes,
    plan,
    tier_totals,
    transitions,
)

pytest_plugins = ["tests.archive.conftest_s3"]

State = TierMove.State


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: Any) -> None:
    monkeypatch.setattr(tier_moves, "BACKOFF_SECONDS", 0)


@pytest.fixture
def bucket_location(
    org: Organization, s3_bucket: Bucket, make_bucket_location: Callable[..., StorageLocation]
) -> StorageLocation:
    return make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)


@pytest.fixture
def s3_calls(monkeypatch: Any) -> list[str]:
    """Names of the S3 operations the tier-move code sends."""
    calls: list[str] = []
    real = tier_moves.store_for

    def recording(location: StorageLocation) -> Any:
        store = real(location)
        if hasattr(store, "client"):
            store.client.meta.events.register(
                "before-call.s3", lambda model, **kwargs: calls.append(model.name)
            )
        return store

    monkeypatch.setattr(tier_moves, "store_for", recording)
    return calls


def test_in_place_storage_class_change_verified_by_head(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
    s3_calls: list[str],
) -> None:
    instances = ingest(org, ct_study, bucket_location)
    moves = plan(org, instances, "cold")
    result = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert (result.done, result.failed, result.finished) == (3, 0, 3)
    for instance in instances:
        head = s3_bucket.head(instance.object_key)
        assert head["StorageClass"] == "GLACIER_IR"
        assert head["Metadata"]["sha256"] == instance.sha256
        assert head["ContentLength"] == instance.size_bytes
        assert Instance.objects.get(pk=instance.pk).tier == "cold"
    # Server-side: one copy and one HEAD per object, not a byte through the worker.
    assert sorted(set(s3_calls)) == ["CopyObject", "HeadObject"]
    assert s3_calls.count("CopyObject") == 3 and s3_calls.count("HeadObject") == 3
    assert tier_totals(org) == {"cold": sum(i.size_bytes for i in instances)}

    # And on to the archive tier.
    moves = plan(org, Instance.objects.filter(pk__in=[i.pk for i in instances]), "archive")
    assert tier_moves.moves_execute(org=org, move_ids=ids(moves)).done == 3
    assert {s3_bucket.head(i.object_key)["StorageClass"] for i in instances} == {"DEEP_ARCHIVE"}
    assert_reconciled(org)


def test_store_failing_the_copy_leaves_the_object_readable_in_its_old_tier(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
    monkeypatch: Any,
) -> None:
    instances = ingest(org, ct_study[:1], bucket_location)
    attempts: list[int] = []

    class Body:
        def stream(self, **kwargs: Any) -> Any:
            yield (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                b"<Message>We encountered an internal error.</Message></Error>"
            )

    def internal_error(request: Any, **kwargs: Any) -> AWSResponse:
        attempts.append(1)
        return AWSResponse(request.url, 500, {}, Body())

    real = tier_moves.store_for

    def failing(location: StorageLocation) -> Any:
        store: Any = real(location)
        store.client.meta.events.register("before-send.s3.CopyObject", internal_error)
        return store

    monkeypatch.setattr(tier_moves, "store_for", failing)
    (move,) = plan(org, instances, "archive")
    result = tier_moves.moves_execute(org=org, move_ids=[move.pk])
    assert result.failed == 1
    # Each of our attempts is itself retried by botocore on a 500.
    assert len(attempts) >= tier_moves.ATTEMPTS
    move.refresh_from_db()
    assert move.state == State.FAILED
    assert "InternalError" in move.error and "gave up after 3 attempts" in move.error
    instance = Instance.objects.get(pk=instances[0].pk)
    assert instance.tier == "hot"
    head = s3_bucket.head(instance.object_key)
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    data = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=instance.object_key)
    assert data["Body"].read()  # readable in its old tier
    assert ledger(org) == []


def test_a_tier_the_bucket_cannot_serve_fails_the_move(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
    s3_calls: list[str],
) -> None:
    instances = ingest(org, ct_study[:1], bucket_location)
    (move,) = plan(org, instances, "archive")
    # e.g. a MinIO bucket without DEEP_ARCHIVE, changed after the move was planned
    StorageLocation.objects.filter(pk=bucket_location.pk).update(storage_classes={"archive": ""})
    tier_moves.moves_execute(org=org, move_ids=[move.pk])
    move.refresh_from_db()
    assert move.state == State.FAILED
    assert "cannot hold objects in the archive tier" in move.error
    assert s3_calls == []  # refused before any request
    assert Instance.objects.get(pk=instances[0].pk).tier == "hot"


def test_move_between_locations_copies_verifies_switches_then_deletes(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
) -> None:
    instances = ingest(org, ct_study, bucket_location)
    other = StorageLocation.objects.create(
        organization=org,
        name="Platform",
        kind=StorageLocation.Kind.PLATFORM,
        role=StorageLocation.Role.REPLICA,
    )
    moves = plan(org, instances, "cold", to_location=other)
    result = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert (result.done, result.finished) == (3, 3)
    root = Path(settings.ARCHIVE_ROOT)
    for instance in instances:
        moved = Instance.objects.get(pk=instance.pk)
        assert (moved.tier, moved.location_id) == ("cold", other.pk)
        assert (root / "cold" / instance.object_key).stat().st_size == instance.size_bytes
    assert s3_bucket.keys() == []  # the old copies went after the switch
    size = sum(i.size_bytes for i in instances)
    assert moved_bytes(org) == {"hot:out": -size, "cold:in": size}


def test_cross_location_crash_after_the_switch_deletes_the_old_copy_on_rerun(
    org: Organization,
    bucket_location: StorageLocation,
    s3_bucket: Bucket,
    ct_study: list[bytes],
    monkeypatch: Any,
) -> None:
    instances = ingest(org, ct_study[:2], bucket_location)
    other = StorageLocation.objects.create(
        organization=org, name="Platform", role=StorageLocation.Role.REPLICA
    )
    moves = plan(org, instances, "warm", to_location=other)

    def crash(*args: Any) -> Any:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(tier_moves, "_finishable", crash)
        with pytest.raises(RuntimeError):
            tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert len(s3_bucket.keys()) == 2  # switched, the old copies still there
    assert set(TierMove.objects.values_list("state", flat=True)) == {State.DONE}
    TierMove.objects.update(claimed_until=None)
    assert tier_moves.moves_execute(org=org, move_ids=ids(moves)).finished == 2
    assert s3_bucket.keys() == []
    size = sum(i.size_bytes for i in instances)
    assert moved_bytes(org) == {"hot:out": -size, "warm:in": size}
    assert transitions(org) == 2


def test_old_copy_is_kept_when_a_later_move_brought_the_instance_back(
    org: Organization, bucket_location: StorageLocation, s3_bucket: Bucket, ct_study: list[bytes]
) -> None:
    (instance,) = ingest(org, ct_study[:1], bucket_location)
    (move,) = plan(
        org,
        [instance],
        "hot",
        to_location=StorageLocation.objects.create(
            organization=org, name="Platform", role=StorageLocation.Role.REPLICA
        ),
    )
    tier_moves._claim(org, [move.pk], "w#1", tier_moves.timezone.now())
    TierMove.objects.filter(pk=move.pk).update(state=State.DONE, claimed_until=None)
    # The index names the old tier at the old location (e.g. moved back meanwhile).
    tier_moves.moves_execute(org=org, move_ids=[move.pk])
    assert s3_bucket.keys() == [instance.object_key]
    assert store_for(bucket_location).head(key=instance.object_key, tier="hot") is not None
