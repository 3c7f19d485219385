"""The disaster-recovery replica: sync, copy and verify (filesystem -> filesystem with two roots),
billing, retries and failures, two workers on one row, lag, drills and the dr_drill command."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from pydicom.uid import generate_uid

from archive.ingest import pipeline
from archive.models import Instance, InstanceReplica, ReplicaCheck, StorageLocation
from archive.reconcile import services as reconcile_services
from archive.replicas import selectors, services
from archive.replicas.drill import DRILL_MAX_SAMPLE, replica_drill
from archive.replicas.tasks import replica_tick
from archive.storage import StorageUnavailable, store_for
from archive.storage.filesystem import FilesystemStore
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import StorageDelta
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import AuditEvent, Organization
from tests.archive.reconcile_helpers import assert_reconciled

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")


def ingest_instances(org: Organization, count: int = 3) -> list[Instance]:
    location = pipeline.location_primary(org)
    store = store_for(location)
    spec = study_spec("CT")
    series = generate_uid()
    ids: list[int] = []
    for number in range(count):
        data = to_bytes(
            make_instance(spec, series_uid=series, instance_number=number + 1, rows=32, columns=32)
        )
        result = pipeline.instance_ingest(
            org=org, spooled=pipeline.spool_file(store, io.BytesIO(data))
        )
        assert result.status == "stored" and result.instance_id is not None, result.reason
        ids.append(result.instance_id)
    return list(Instance.objects.filter(pk__in=ids).order_by("pk"))


@pytest.fixture
def replica_root(tmp_path: Path) -> Path:
    return tmp_path / "replica"


@pytest.fixture
def fs_replica(
    org: Organization, replica_root: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageLocation:
    """A replica location whose store is a second filesystem root (the platform default is the
    first): the replica code sees two independent stores, as with two regions."""
    location = StorageLocation.objects.create(
        organization=org,
        name="DR copy",
        kind=StorageLocation.Kind.S3,
        role=StorageLocation.Role.REPLICA,
        bucket="dr-copy",
        replica_tier="cold",
    )
    original = services._store

    def store(loc: StorageLocation) -> Any:
        if loc.role == StorageLocation.Role.REPLICA:
            return FilesystemStore(replica_root)
        return original(loc)

    monkeypatch.setattr(services, "_store", store)
    # The consistency check lists the same two stores.
    monkeypatch.setattr(reconcile_services, "store_for", store)
    return location


def replica_path(root: Path, instance: Instance, tier: str = "cold") -> Path:
    return root / tier / instance.object_key


def ledger(org: Organization, prefix: str = "replica:") -> list[StorageDelta]:
    return list(
        StorageDelta.objects.for_org(org).filter(idempotency_key__startswith=prefix).order_by("pk")
    )


def sync_and_copy(org: Organization) -> services.CopyOutcome:
    services.replicas_sync(org=org)
    ids = list(InstanceReplica.objects.for_org(org).values_list("pk", flat=True))
    return services.replica_copy(org=org, replica_ids=ids)


# --- sync ---------------------------------------------------------------------------------------


def test_sync_inserts_one_pending_row_per_instance_and_nothing_when_run_again(
    org: Organization, fs_replica: StorageLocation
) -> None:
    instances = ingest_instances(org, 3)
    assert services.replicas_sync(org=org) == 3
    assert services.replicas_sync(org=org) == 0
    rows = InstanceReplica.objects.for_org(org)
    assert sorted(rows.values_list("instance_id", flat=True)) == [i.pk for i in instances]
    assert set(rows.values_list("state", "tier", "location_id")) == {
        ("pending", "cold", fs_replica.pk)
    }


def test_sync_is_bounded_by_its_limit(org: Organization, fs_replica: StorageLocation) -> None:
    ingest_instances(org, 3)
    assert services.replicas_sync(org=org, limit=2) == 2
    assert services.replicas_sync(org=org, limit=2) == 1
    assert InstanceReplica.objects.for_org(org).count() == 3


def test_sync_without_a_replica_location_does_nothing(org: Organization) -> None:
    ingest_instances(org, 1)
    assert services.replicas_sync(org=org) == 0
    assert not InstanceReplica.objects.exists()


def test_sync_only_sees_its_own_organization(
    org: Organization, other_org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(other_org, 2)
    assert services.replicas_sync(org=org) == 0


# --- copy and verify ------------------------------------------------------------------------------


def test_copy_stores_verified_bytes_in_the_replica_tier_and_bills_them(
    org: Organization, fs_replica: StorageLocation, replica_root: Path, archive_root: Path
) -> None:
    instances = ingest_instances(org, 2)
    outcome = sync_and_copy(org)
    assert len(outcome.done) == 2 and not outcome.failed
    for instance in instances:
        primary = (archive_root / "hot" / instance.object_key).read_bytes()
        assert replica_path(replica_root, instance).read_bytes() == primary
        row = InstanceReplica.objects.get(instance=instance)
        assert row.state == "done" and row.attempts == 1 and row.error == ""
        assert row.replicated_at is not None and row.verified_at is not None
        assert row.claimed_until is None
    deltas = ledger(org)
    assert [(d.tier, d.delta_bytes) for d in deltas] == [("cold", i.size_bytes) for i in instances]
    assert {d.idempotency_key for d in deltas} == {
        f"replica:{r.pk}" for r in InstanceReplica.objects.for_org(org)
    }
    # The primary is untouched.
    assert all((archive_root / "hot" / i.object_key).exists() for i in instances)
    assert_reconciled(org)


def test_copy_twice_copies_once_and_bills_once(
    org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(org, 1)
    first = sync_and_copy(org)
    second = sync_and_copy(org)
    assert len(first.done) == 1 and second.skipped == first.done
    # Even a row sent back to pending (as a drill does) is billed once when copied again.
    InstanceReplica.objects.for_org(org).update(state="pending")
    third = sync_and_copy(org)
    assert third.done == first.done
    assert len(ledger(org)) == 1


def test_two_workers_on_one_row_only_the_lease_holder_finishes(
    org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(org, 1)
    services.replicas_sync(org=org)
    row = InstanceReplica.objects.for_org(org).get()
    # Worker A claims the row and is slow.
    lease_a = services._claim(org, row.pk, None)
    assert lease_a is not None
    # Worker B gets nothing while A's lease runs.
    assert services.replica_copy(org=org, replica_ids=[row.pk]).skipped == [row.pk]
    # A's lease runs out: B takes the row over and finishes it.
    InstanceReplica.objects.filter(pk=row.pk).update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )
    assert services.replica_copy(org=org, replica_ids=[row.pk]).done == [row.pk]
    # A wakes up and tries to finish: its lease is gone, nothing is written.
    row.refresh_from_db()
    assert services._finish(org, row, lease_a, 123) is False
    assert len(ledger(org)) == 1
    assert ledger(org)[0].delta_bytes == row.instance.size_bytes


def test_dispatch_reserves_rows_and_only_the_batch_token_claims_them(
    org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(org, 3)
    services.replicas_sync(org=org)
    token, batches = services.replicas_dispatch(org=org)
    assert sum(len(b) for b in batches) == 3
    # Dispatching again hands out nothing: the rows are reserved for the queued task.
    assert services.replicas_dispatch(org=org)[1] == []
    ids = batches[0]
    assert services.replica_copy(org=org, replica_ids=ids).skipped == ids
    assert services.replica_copy(org=org, replica_ids=ids, reserved_until=token).done == ids


def test_beat_tick_syncs_and_replicates(org: Organization, fs_replica: StorageLocation) -> None:
    ingest_instances(org, 3)
    result = replica_tick()  # the copy tasks run eagerly in the tests
    assert result == {"synced": 3, "dispatched": 3}
    assert set(InstanceReplica.objects.for_org(org).values_list("state", flat=True)) == {"done"}
    assert replica_tick() == {"synced": 0, "dispatched": 0}


@pytest.mark.parametrize("task", ["replica_copy", "replica_tick"])
def test_replica_tasks_keep_their_names_route_and_beat_entry(task: str) -> None:
    """Queued messages, the task routes and the beat schedule name the tasks as they were named
    before the package existed; the worker registers them through ``archive.tasks``."""
    import archive.tasks  # noqa: F401  (what the worker's autodiscovery imports)
    from archive.replicas import tasks
    from saas.celery import app

    name = f"archive.tasks.{task}"
    assert getattr(tasks, task).name == name
    assert app.tasks[name] is getattr(tasks, task)._get_current_object()
    assert app.amqp.router.route({}, name)["queue"].name == "tiering"
    if task == "replica_tick":
        assert any(e["task"] == name for e in app.conf.beat_schedule.values())


# --- failures -------------------------------------------------------------------------------------


def test_a_failing_replica_store_is_retried_then_failed_with_the_reason(
    org: Organization,
    fs_replica: StorageLocation,
    monkeypatch: pytest.MonkeyPatch,
    archive_root: Path,
) -> None:
    (instance,) = ingest_instances(org, 1)

    def broken_put(self: FilesystemStore, **kwargs: Any) -> Any:
        raise StorageUnavailable("Could not store the object: the bucket answered 500.")

    monkeypatch.setattr(FilesystemStore, "put_file", broken_put)
    services.replicas_sync(org=org)
    row = InstanceReplica.objects.for_org(org).get()
    for attempt in range(1, services.MAX_ATTEMPTS + 1):
        outcome = services.replica_copy(org=org, replica_ids=[row.pk])
        row.refresh_from_db()
        assert row.attempts == attempt
        assert "answered 500" in row.error
        expected = "failed" if attempt == services.MAX_ATTEMPTS else "pending"
        assert row.state == expected
        assert (outcome.failed if expected == "failed" else outcome.retried) == [row.pk]
    assert ledger(org) == []
    # The primary is still readable; nothing is left in the replica spool.
    assert (archive_root / "hot" / instance.object_key).exists()
    assert list(Path(services._store(fs_replica).spool_dir()).iterdir()) == []
    # A failed row is no longer picked up; retrying sends it back.
    assert services.replica_copy(org=org, replica_ids=[row.pk]).skipped == [row.pk]
    monkeypatch.undo()
    assert services.replicas_retry_failed(org=org, actor=ACTOR) == 1
    assert AuditEvent.objects.for_org(org).filter(action="replica.retried").exists()


def test_a_primary_that_does_not_match_the_index_is_not_replicated(
    org: Organization, fs_replica: StorageLocation, archive_root: Path, replica_root: Path
) -> None:
    (instance,) = ingest_instances(org, 1)
    path = archive_root / "hot" / instance.object_key
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    outcome = sync_and_copy(org)
    assert len(outcome.retried) == 1
    row = InstanceReplica.objects.for_org(org).get()
    assert row.state == "pending" and "the index says" in row.error
    assert not replica_path(replica_root, instance).exists()


def test_an_archived_primary_without_restore_fails_at_once_with_that_reason(
    org: Organization, fs_replica: StorageLocation, archive_root: Path, settings: Any
) -> None:
    settings.ARCHIVE_FS_RESTORE_SECONDS = 3600
    (instance,) = ingest_instances(org, 1)
    target = archive_root / "archive" / instance.object_key
    target.parent.mkdir(parents=True)
    (archive_root / "hot" / instance.object_key).rename(target)
    Instance.objects.filter(pk=instance.pk).update(tier="archive")
    outcome = sync_and_copy(org)
    row = InstanceReplica.objects.for_org(org).get()
    assert outcome.failed == [row.pk]
    assert row.state == "failed" and row.attempts == 1
    assert row.error == services.PRIMARY_ARCHIVED


def test_an_archived_primary_that_is_restored_is_replicated(
    org: Organization, fs_replica: StorageLocation, archive_root: Path, settings: Any
) -> None:
    settings.ARCHIVE_FS_RESTORE_SECONDS = 0
    (instance,) = ingest_instances(org, 1)
    target = archive_root / "archive" / instance.object_key
    target.parent.mkdir(parents=True)
    (archive_root / "hot" / instance.object_key).rename(target)
    Instance.objects.filter(pk=instance.pk).update(tier="archive")
    store_for(instance.location).restore_start(key=instance.object_key, tier="archive", days=1)
    assert len(sync_and_copy(org).done) == 1


# --- status and lag ----------------------------------------------------------------------------


def test_replication_status_counts_and_lag(org: Organization, fs_replica: StorageLocation) -> None:
    instances = ingest_instances(org, 4)
    now = timezone.now()
    for hours, instance in zip((4, 3, 2, 1), instances, strict=True):
        Instance.objects.filter(pk=instance.pk).update(received_at=now - timedelta(hours=hours))
    services.replicas_sync(org=org, limit=2)  # two rows; two instances not even synced yet
    rows = list(InstanceReplica.objects.for_org(org).order_by("instance_id"))
    services.replica_copy(org=org, replica_ids=[rows[0].pk])
    InstanceReplica.objects.filter(pk=rows[1].pk).update(state="failed", error="boom")

    status = selectors.replication_status(org=org)
    sizes = [i.size_bytes for i in instances]
    assert status.enabled and status.location == fs_replica
    assert (status.instances, status.bytes) == (4, sum(sizes))
    assert (status.replicated, status.replicated_bytes) == (1, sizes[0])
    assert (status.failed, status.failed_bytes) == (1, sizes[1])
    assert (status.pending, status.pending_bytes) == (2, sizes[2] + sizes[3])
    # The oldest instance without a verified replica is the failed one, 3 hours old.
    assert status.oldest_unreplicated_at == now - timedelta(hours=3)
    assert 3 * 3600 <= status.lag_seconds <= 3 * 3600 + 30


def test_status_counts_an_instance_without_a_row_below_the_synced_ones(
    org: Organization, fs_replica: StorageLocation
) -> None:
    """Rows are usually missing only for the newest instances; when an older one has none (its
    row removed), the status still finds it, with its size and its wait."""
    instances = ingest_instances(org, 3)
    now = timezone.now()
    for hours, instance in zip((3, 2, 1), instances, strict=True):
        Instance.objects.filter(pk=instance.pk).update(received_at=now - timedelta(hours=hours))
    sync_and_copy(org)
    InstanceReplica.objects.filter(instance=instances[1]).delete()

    status = selectors.replication_status(org=org)
    sizes = [i.size_bytes for i in instances]
    assert (status.replicated, status.replicated_bytes) == (2, sizes[0] + sizes[2])
    assert (status.pending, status.pending_bytes, status.failed) == (1, sizes[1], 0)
    assert status.oldest_unreplicated_at == now - timedelta(hours=2)


def test_status_when_everything_is_replicated_has_no_lag(
    org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(org, 2)
    sync_and_copy(org)
    status = selectors.replication_status(org=org)
    assert (status.replicated, status.pending, status.failed, status.lag_seconds) == (2, 0, 0, 0)
    assert status.oldest_unreplicated_at is None


def test_status_without_a_replica(org: Organization) -> None:
    ingest_instances(org, 1)
    status = selectors.replication_status(org=org)
    assert not status.enabled and status.instances == 1 and status.lag_seconds == 0


# --- drills ----------------------------------------------------------------------------------------


def test_drill_verifies_a_sample_and_records_it(
    org: Organization, fs_replica: StorageLocation
) -> None:
    instances = ingest_instances(org, 3)
    sync_and_copy(org)
    check = replica_drill(org=org, sample=2, actor=ACTOR)
    assert (check.sampled, check.verified, check.missing, check.mismatched) == (2, 2, 0, 0)
    sizes = {i.size_bytes for i in instances}
    assert check.bytes_read in {a + b for a in sizes for b in sizes}
    assert check.problems == [] and check.finished_at is not None
    event = AuditEvent.objects.for_org(org).get(action="replica.drill")
    assert event.details["verified"] == 2


def test_drill_finds_a_damaged_and_a_deleted_replica(
    org: Organization, fs_replica: StorageLocation, replica_root: Path
) -> None:
    damaged, deleted, fine = ingest_instances(org, 3)
    sync_and_copy(org)
    path = replica_path(replica_root, damaged)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    replica_path(replica_root, deleted).unlink()

    check = replica_drill(org=org, sample=10, actor=ACTOR)
    assert (check.sampled, check.verified, check.missing, check.mismatched) == (3, 1, 1, 1)
    problems = {p["sop_instance_uid"]: p["problem"] for p in check.problems}
    assert problems == {damaged.sop_instance_uid: "mismatched", deleted.sop_instance_uid: "missing"}
    # Both go back to the queue; copying repairs them without billing them again.
    states = dict(InstanceReplica.objects.for_org(org).values_list("instance_id", "state"))
    assert states == {damaged.pk: "pending", deleted.pk: "pending", fine.pk: "done"}
    sync_and_copy(org)
    assert replica_drill(org=org, sample=10, actor=ACTOR).verified == 3
    assert len(ledger(org)) == 3


@pytest.mark.parametrize("sample", [0, -1, DRILL_MAX_SAMPLE + 1])
def test_drill_refuses_a_sample_out_of_bounds(
    org: Organization, fs_replica: StorageLocation, sample: int
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        replica_drill(org=org, sample=sample, actor=ACTOR)
    assert "sample" in exc.value.fields
    assert not ReplicaCheck.objects.exists()


def test_drill_without_a_replica_is_a_conflict(org: Organization) -> None:
    with pytest.raises(Conflict):
        replica_drill(org=org, sample=5, actor=ACTOR)


def test_dr_drill_command_reports_and_exits_zero_when_all_verify(
    org: Organization, fs_replica: StorageLocation
) -> None:
    ingest_instances(org, 2)
    sync_and_copy(org)
    out = io.StringIO()
    call_command("dr_drill", "--org", org.slug, "--sample", "5", stdout=out)
    text = out.getvalue()
    assert "sampled:    2" in text and "verified:   2" in text
    assert "All 2 sampled replicas verified." in text
    assert ReplicaCheck.objects.for_org(org).count() == 1


def test_dr_drill_command_fails_when_a_replica_is_missing(
    org: Organization, fs_replica: StorageLocation, replica_root: Path
) -> None:
    (instance,) = ingest_instances(org, 1)
    sync_and_copy(org)
    replica_path(replica_root, instance).unlink()
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 sampled replicas are missing or damaged"):
        call_command("dr_drill", "--org", org.slug, stdout=out)
    assert "MISSING" in out.getvalue() and instance.sop_instance_uid in out.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "nowhere"], "No organization"),
        (["--org", "st-mary", "--sample", "0"], "sample size from 1"),
    ],
)
def test_dr_drill_command_bad_input(
    org: Organization, fs_replica: StorageLocation, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("dr_drill", *args, stdout=io.StringIO())


# --- instances leaving the archive -------------------------------------------------------------


def test_purged_instances_release_their_replicas(
    org: Organization, fs_replica: StorageLocation, replica_root: Path
) -> None:
    instances = ingest_instances(org, 2)
    sync_and_copy(org)
    ids = [instances[0].pk]
    services.replica_objects_delete(org=org, instance_ids=ids)
    assert not replica_path(replica_root, instances[0]).exists()
    assert services.replicas_forget_locked(org=org, instance_ids=ids, at=timezone.now()) == 1
    assert services.replicas_forget_locked(org=org, instance_ids=ids, at=timezone.now()) == 0
    out = ledger(org, "replica:")
    assert sum(d.delta_bytes for d in out) == instances[1].size_bytes


@pytest.mark.django_db(transaction=True)
def test_two_worker_threads_on_the_same_rows_copy_each_once(
    postgres: None, org: Organization, fs_replica: StorageLocation
) -> None:
    import threading

    from django.db import connection

    ingest_instances(org, 4)
    services.replicas_sync(org=org)
    ids = list(InstanceReplica.objects.for_org(org).values_list("pk", flat=True))
    outcomes: list[services.CopyOutcome] = []
    barrier = threading.Barrier(2)

    def work() -> None:
        try:
            barrier.wait()
            outcomes.append(services.replica_copy(org=org, replica_ids=ids))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = sorted(i for o in outcomes for i in o.done)
    assert done == sorted(ids)
    assert sorted(i for o in outcomes for i in o.skipped) == sorted(ids)
    assert len(ledger(org)) == 4
