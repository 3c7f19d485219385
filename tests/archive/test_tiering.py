"""Tier moves on the filesystem backend: the state machine, crashes at every step, claims by two
workers, store failures, the ledger and metering across a move, dispatching and the tasks."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from archive.ingest.pipeline import instances_ingest, spool_chunks
from archive.locations.selectors import location_primary
from archive.models import ArchiveSettings, Instance, Series, StorageLocation, Study, TierMove
from archive.storage import StorageUnavailable, store_for
from archive.storage.filesystem import FilesystemStore
from archive.tiering import moves as tier_moves
from billing.models import Rollup, StorageDelta, UsageEvent
from billing.rollups import rollup_run
from tenants.errors import Conflict, ValidationFailed
from tenants.models import Organization
from tests.archive.reconcile_helpers import assert_reconciled

State = TierMove.State


class Crash(Exception):
    """A worker killed between two steps (not a store error: nothing catches it)."""


# --- helpers (also used by the S3 tests) ------------------------------------------------------


def ingest(
    org: Organization, files: Iterable[bytes], location: StorageLocation | None = None
) -> list[Instance]:
    location = location or location_primary(org)
    store = store_for(location)
    results = instances_ingest(
        org=org, batch=[spool_chunks(store, [f]) for f in files], location=location
    )
    assert all(r.status == "stored" for r in results), results
    return list(
        Instance.objects.for_org(org)
        .filter(pk__in=[r.instance_id for r in results])
        .select_related("location")
        .order_by("pk")
    )


def plan(
    org: Organization,
    instances: Iterable[Instance],
    to_tier: str,
    to_location: StorageLocation | None = None,
) -> list[TierMove]:
    return [
        tier_moves.move_request(org=org, instance=i, to_tier=to_tier, to_location=to_location)
        for i in instances
    ]


def ids(moves: Iterable[TierMove]) -> list[int]:
    return [m.pk for m in moves]


def expire_leases() -> None:
    TierMove.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))


def ledger(org: Organization) -> list[tuple[str, int, str]]:
    """The ledger deltas of tier moves (one per tier and sign per switched group)."""
    return sorted(
        StorageDelta.objects.for_org(org)
        .filter(idempotency_key__startswith="moves:")
        .values_list("tier", "delta_bytes", "idempotency_key")
    )


def moved_bytes(org: Organization) -> dict[str, int]:
    """Bytes the moves' ledger deltas took out of ("hot:out") and put into ("cold:in") tiers."""
    out: dict[str, int] = {}
    for tier, delta, key in ledger(org):
        name = f"{tier}:{key.rsplit(':', 1)[1]}"
        out[name] = out.get(name, 0) + delta
    return out


def transitions(org: Organization) -> int:
    events = UsageEvent.objects.for_org(org).filter(meter="tier.transitions")
    return sum(events.values_list("quantity", flat=True))


def tier_totals(org: Organization) -> dict[str, int]:
    rows = StorageDelta.objects.for_org(org).values_list("tier", "delta_bytes")
    out: dict[str, int] = {}
    for tier, delta in rows:
        out[tier] = out.get(tier, 0) + delta
    return {t: b for t, b in out.items() if b}


def fs_path(instance: Instance, tier: str) -> Path:
    from django.conf import settings

    return Path(settings.ARCHIVE_ROOT) / tier / instance.object_key


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: Any) -> None:
    monkeypatch.setattr(tier_moves, "BACKOFF_SECONDS", 0)


@pytest.fixture
def instances(org: Organization, ct_study: list[bytes]) -> list[Instance]:
    return ingest(org, ct_study)


# --- the happy path ----------------------------------------------------------------------------


def test_move_switches_index_aggregates_ledger_and_usage(
    org: Organization, instances: list[Instance]
) -> None:
    moves = plan(org, instances, "cold")
    size = sum(i.size_bytes for i in instances)
    result = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert (result.claimed, result.done, result.failed, result.finished) == (3, 3, 0, 3)
    assert result.bytes_moved == size
    for instance in instances:
        instance.refresh_from_db()
        assert instance.tier == "cold" and instance.tier_changed_at is not None
        assert fs_path(instance, "cold").exists() and not fs_path(instance, "hot").exists()
    for move in TierMove.objects.filter(pk__in=ids(moves)):
        assert move.state == State.DONE and move.finished_at and move.error == ""
        assert move.claimed_until is None and move.attempts == 1
    study = Study.objects.get(pk=instances[0].study_id)
    series = Series.objects.get(pk=instances[0].series_id)
    for row in (study, series):
        assert (row.bytes_hot, row.bytes_cold, row.total_bytes) == (0, size, size)
    assert tier_totals(org) == {"cold": size}
    # One group: one delta per tier and sign, one transitions event counting the three moves.
    first, last = min(ids(moves)), max(ids(moves))
    assert ledger(org) == [
        ("cold", size, f"moves:{first}-{last}:3:cold:in"),
        ("hot", -size, f"moves:{first}-{last}:3:hot:out"),
    ]
    events = UsageEvent.objects.for_org(org).filter(meter="tier.transitions")
    assert list(events.values_list("quantity", "dimensions")) == [(3, {"tier": "cold"})]
    # Hot has no minimum storage duration: nothing owed.
    assert not UsageEvent.objects.for_org(org).filter(meter="early_deletion").exists()
    assert_reconciled(org)


def test_running_a_finished_batch_again_changes_nothing(
    org: Organization, instances: list[Instance]
) -> None:
    moves = plan(org, instances, "warm")
    tier_moves.moves_execute(org=org, move_ids=ids(moves))
    before = (ledger(org), UsageEvent.objects.count())
    expire_leases()
    again = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert again.claimed == 0
    assert (ledger(org), UsageEvent.objects.count()) == before


def test_leaving_a_tier_early_is_metered_as_early_deletion(
    org: Organization, instances: list[Instance]
) -> None:
    tier_moves.moves_execute(org=org, move_ids=ids(plan(org, instances[:1], "cold")))
    instance = Instance.objects.get(pk=instances[0].pk)
    # 10 days in cold (minimum 90): 80 days are owed when it leaves for the archive tier.
    Instance.objects.filter(pk=instance.pk).update(
        tier_changed_at=timezone.now() - timedelta(days=10)
    )
    (move,) = plan(org, [instance], "archive")
    tier_moves.moves_execute(org=org, move_ids=[move.pk])
    event = UsageEvent.objects.for_org(org).get(meter="early_deletion")
    assert event.quantity == instance.size_bytes * 80
    assert event.dimensions == {"tier": "cold"}
    assert event.idempotency_key == f"moves:{move.pk}-{move.pk}:1:cold:early"


def test_worker_compute_time_is_metered(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    clock = iter([100.0, 101.2])
    monkeypatch.setattr(tier_moves.time, "process_time", lambda: next(clock))
    tier_moves.moves_execute(org=org, move_ids=ids(plan(org, instances, "warm")))
    event = UsageEvent.objects.for_org(org).get(meter="compute.seconds")
    assert event.quantity == 2  # 1.2 s, rounded up once per run


# --- crashes ----------------------------------------------------------------------------------

CRASH_POINTS = {
    # claimed (copying), nothing copied yet
    "after_claim": "_copy",
    # copied, state still copying
    "after_copy": "_advance",
    # verifying, not verified yet
    "before_verify": "_verify",
    # inside the switch transaction: rolled back
    "in_switch": "record_usage_bulk",
    # switched (done), the old copy not yet removed
    "after_switch": "_finishable",
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_killed_worker_is_resumed_without_loss_or_double_counting(
    org: Organization, instances: list[Instance], monkeypatch: Any, point: str
) -> None:
    moves = plan(org, instances, "cold")
    size = sum(i.size_bytes for i in instances)

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash(point)

    with monkeypatch.context() as patch:
        patch.setattr(tier_moves, CRASH_POINTS[point], crash)
        with pytest.raises(Crash):
            tier_moves.moves_execute(org=org, move_ids=ids(moves))
    for instance in instances:  # readable where the index says, whatever the crash point
        instance.refresh_from_db()
        assert fs_path(instance, instance.tier).read_bytes()
    # The lease holds off other workers until it runs out.
    assert tier_moves.moves_execute(org=org, move_ids=ids(moves)).claimed == 0
    expire_leases()
    result = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert result.claimed == 3
    for instance in instances:
        instance.refresh_from_db()
        assert instance.tier == "cold"
        assert fs_path(instance, "cold").exists() and not fs_path(instance, "hot").exists()
    for move in TierMove.objects.filter(pk__in=ids(moves)):
        assert move.state == State.DONE and move.finished_at is not None
    assert tier_totals(org) == {"cold": size}
    assert moved_bytes(org) == {"hot:out": -size, "cold:in": size}
    assert transitions(org) == 3
    assert Study.objects.get(pk=instances[0].study_id).bytes_cold == size


def test_a_move_interrupted_too_often_is_given_up_in_its_old_tier(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    (move,) = plan(org, instances[:1], "cold")

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(tier_moves, "_advance", crash)
        for _ in range(tier_moves.MAX_CLAIMS):
            with pytest.raises(Crash):
                tier_moves.moves_execute(org=org, move_ids=[move.pk])
            expire_leases()
    tier_moves.moves_execute(org=org, move_ids=[move.pk])
    move.refresh_from_db()
    assert move.state == State.FAILED and "interrupted 5 times" in move.error
    instance = Instance.objects.get(pk=instances[0].pk)
    assert instance.tier == "hot" and fs_path(instance, "hot").exists()
    assert not fs_path(instance, "cold").exists()  # the copy was undone
    assert ledger(org) == []


# --- two workers ------------------------------------------------------------------------------


def test_two_workers_picking_the_same_move_only_one_acts(
    org: Organization, instances: list[Instance]
) -> None:
    moves = plan(org, instances, "cold")
    first = tier_moves._claim(org, ids(moves), "worker-a#1", timezone.now())
    assert len(first) == 3
    second = tier_moves.moves_execute(org=org, move_ids=ids(moves), worker="worker-b")
    assert second.claimed == 0
    assert all(i.tier == "hot" for i in Instance.objects.filter(pk__in=[i.pk for i in instances]))
    assert set(TierMove.objects.values_list("claimed_by", flat=True)) == {"worker-a#1"}


def test_a_worker_that_lost_its_lease_cannot_switch(
    org: Organization, instances: list[Instance]
) -> None:
    moves = plan(org, instances, "cold")
    stale = tier_moves._claim(org, ids(moves), "worker-a#1", timezone.now())
    expire_leases()
    assert tier_moves.moves_execute(org=org, move_ids=ids(moves), worker="worker-b").done == 3
    for move in stale:
        move.state = State.VERIFYING
    switched, failed = tier_moves._switch(org, stale, "worker-a#1", timezone.now())
    assert switched == [] and failed == {}
    size = sum(i.size_bytes for i in instances)
    assert moved_bytes(org) == {"hot:out": -size, "cold:in": size}
    assert transitions(org) == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_move_each_instance_once(postgres: None, org: Organization) -> None:
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, to_bytes

    spec, series = study_spec("CT"), generate_uid()
    files = [
        to_bytes(make_instance(spec, series_uid=series, instance_number=n + 1, rows=8, columns=8))
        for n in range(24)
    ]
    instances = ingest(org, files)
    moves = plan(org, instances, "cold")
    results: list[tier_moves.MovesResult] = []

    def work(name: str) -> None:
        try:
            results.append(tier_moves.moves_execute(org=org, move_ids=ids(moves), worker=name))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.claimed for r in results) == 24
    assert sum(r.done for r in results) == 24
    size = sum(i.size_bytes for i in instances)
    assert moved_bytes(org) == {"hot:out": -size, "cold:in": size}
    assert transitions(org) == 24
    assert tier_totals(org) == {"cold": size}


# --- failures ---------------------------------------------------------------------------------


def test_store_failing_a_copy_is_retried_then_failed_with_the_reason(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    calls: list[str] = []

    def failing(self: FilesystemStore, *, key: str, from_tier: str, **kwargs: Any) -> None:
        calls.append(from_tier)
        if from_tier == "hot":
            raise StorageUnavailable("Could not move: disk I/O error")

    monkeypatch.setattr(FilesystemStore, "change_tier", failing)
    (move,) = plan(org, instances[:1], "cold")
    result = tier_moves.moves_execute(org=org, move_ids=[move.pk])
    assert (result.done, result.failed) == (0, 1)
    assert calls.count("hot") == tier_moves.ATTEMPTS
    move.refresh_from_db()
    assert move.state == State.FAILED and move.finished_at is not None
    assert "disk I/O error" in move.error and "gave up after 3 attempts" in move.error
    assert result.errors == {move.pk: move.error}
    instance = Instance.objects.get(pk=instances[0].pk)
    assert instance.tier == "hot"
    assert fs_path(instance, "hot").read_bytes()  # still readable in its old tier
    assert ledger(org) == []
    # A failed move no longer blocks a new one.
    monkeypatch.undo()
    (again,) = plan(org, [instance], "cold")
    assert tier_moves.moves_execute(org=org, move_ids=[again.pk]).done == 1


def test_a_transient_error_that_clears_is_retried_to_success(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    real = FilesystemStore.change_tier
    failures = iter([True, False])

    def flaky(self: FilesystemStore, **kwargs: Any) -> None:
        if next(failures, False):
            raise StorageUnavailable("timeout")
        real(self, **kwargs)

    monkeypatch.setattr(FilesystemStore, "change_tier", flaky)
    (move,) = plan(org, instances[:1], "warm")
    assert tier_moves.moves_execute(org=org, move_ids=[move.pk]).done == 1


def test_failed_verification_fails_the_move_and_undoes_the_copy(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    from archive.storage import VerificationFailed

    def wrong(self: FilesystemStore, **kwargs: Any) -> None:
        raise VerificationFailed("The object has 1 bytes, expected 2.")

    monkeypatch.setattr(FilesystemStore, "verify", wrong)
    (move,) = plan(org, instances[:1], "cold")
    assert tier_moves.moves_execute(org=org, move_ids=[move.pk]).failed == 1
    move.refresh_from_db()
    assert move.state == State.FAILED and "expected 2" in move.error
    instance = Instance.objects.get(pk=instances[0].pk)
    assert fs_path(instance, "hot").exists() and not fs_path(instance, "cold").exists()


def test_an_instance_moved_meanwhile_is_not_switched_twice(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    (move,) = plan(org, instances[:1], "cold")
    real = tier_moves._switch

    def moved_meanwhile(*args: Any) -> Any:
        Instance.objects.filter(pk=instances[0].pk).update(tier="warm")
        return real(*args)

    monkeypatch.setattr(tier_moves, "_switch", moved_meanwhile)
    assert tier_moves.moves_execute(org=org, move_ids=[move.pk]).failed == 1
    move.refresh_from_db()
    assert move.state == State.FAILED and "left the hot tier" in move.error
    assert ledger(org) == []


@pytest.mark.parametrize("local", [False, True], ids=["pool", "inline"])
def test_each_move_is_verified_after_its_verifying_state_and_switched_in_groups(
    org: Organization, instances: list[Instance], monkeypatch: Any, local: bool
) -> None:
    # pool (a remote store's path): one thread, nothing queued, groups of one: copy, advance,
    # verify, switch per move, in that order, while the other moves still wait for their copy.
    # inline (a local filesystem's path): the steps run in the calling thread, the batch is
    # advanced and switched as one group, still each move's steps in that order.
    for name, value in {"THREADS": 1, "QUEUED": 0, "ADVANCE_GROUP": 1, "SWITCH_GROUP": 1}.items():
        monkeypatch.setattr(tier_moves, name, value)
    monkeypatch.setattr(tier_moves._Stores, "local", lambda self, moves: local)
    moves = plan(org, instances, "cold")
    steps: list[tuple[str, int]] = []
    real_advance, real_verify, real_switch = (
        tier_moves._advance,
        tier_moves._verify,
        tier_moves._switch,
    )

    def advance(moves: list[TierMove], token: str, now: datetime) -> list[TierMove]:
        ours = real_advance(moves, token, now)  # written when it returns
        steps.extend(("advance", m.pk) for m in ours)
        return ours

    def verify(move: TierMove, stores: Any) -> None:
        steps.append(("verify", move.pk))
        real_verify(move, stores)

    def switch(*args: Any) -> Any:
        steps.extend(("switch", m.pk) for m in args[1])
        return real_switch(*args)

    monkeypatch.setattr(tier_moves, "_advance", advance)
    monkeypatch.setattr(tier_moves, "_verify", verify)
    monkeypatch.setattr(tier_moves, "_switch", switch)
    result = tier_moves.moves_execute(org=org, move_ids=ids(moves))
    assert (result.done, result.failed, result.finished) == (3, 0, 3)
    if local:
        expected = [(step, pk) for step in ("advance", "verify", "switch") for pk in ids(moves)]
    else:
        expected = [(step, pk) for pk in ids(moves) for step in ("advance", "verify", "switch")]
    assert steps == expected
    size = sum(i.size_bytes for i in instances)
    assert moved_bytes(org) == {"hot:out": -size, "cold:in": size}
    assert transitions(org) == 3
    assert tier_totals(org) == {"cold": size}


def test_moves_of_another_organization_are_not_touched(
    org: Organization, other_org: Organization, instances: list[Instance]
) -> None:
    moves = plan(org, instances, "cold")
    assert tier_moves.moves_execute(org=other_org, move_ids=ids(moves)).claimed == 0
    assert set(TierMove.objects.values_list("state", flat=True)) == {State.PLANNED}


# --- requests ---------------------------------------------------------------------------------


def test_move_request_refuses_what_cannot_be_done(
    org: Organization, instances: list[Instance]
) -> None:
    instance = instances[0]
    with pytest.raises(ValidationFailed) as caught:
        tier_moves.move_request(org=org, instance=instance, to_tier="hot")
    assert "already" in caught.value.fields["tier"][0]
    with pytest.raises(ValidationFailed):
        tier_moves.move_request(org=org, instance=instance, to_tier="glacier")
    tier_moves.move_request(org=org, instance=instance, to_tier="cold")
    with pytest.raises(Conflict, match="being moved already"):
        tier_moves.move_request(org=org, instance=instance, to_tier="warm")


def test_a_tier_the_location_cannot_serve_is_refused(
    org: Organization, instances: list[Instance]
) -> None:
    location = instances[0].location
    # Planned before the location lost its archive storage class (e.g. by the planner).
    (move,) = plan(org, instances[:1], "archive")
    location.kind = StorageLocation.Kind.S3
    location.storage_classes = {"archive": ""}
    location.save()
    with pytest.raises(ValidationFailed) as caught:
        tier_moves.move_request(
            org=org, instance=Instance.objects.get(pk=instances[1].pk), to_tier="archive"
        )
    assert "cannot hold objects in the archive tier" in caught.value.fields["tier"][0]
    result = tier_moves.moves_execute(org=org, move_ids=[move.pk])
    move.refresh_from_db()
    assert result.failed == 1 and move.state == State.FAILED
    assert "cannot hold objects in the archive tier" in move.error
    assert Instance.objects.get(pk=instances[0].pk).tier == "hot"


# --- metering exactness across a move -----------------------------------------------------------


def test_byte_hours_per_tier_before_and_after_the_switch(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    size = sum(i.size_bytes for i in instances)
    t0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    StorageDelta.objects.for_org(org).update(at=t0)
    Instance.objects.for_org(org).update(received_at=t0)
    switch_at = t0 + timedelta(hours=1, minutes=30)  # 11:30
    monkeypatch.setattr(tier_moves.timezone, "now", lambda: switch_at)
    moves = plan(org, instances, "warm")
    tier_moves.moves_execute(org=org, move_ids=ids(moves))
    monkeypatch.undo()
    at_switch = StorageDelta.objects.for_org(org).filter(at=switch_at)
    assert sorted(at_switch.values_list("tier", "delta_bytes")) == [("hot", -size), ("warm", size)]

    rollup_run(now=t0 + timedelta(hours=3))
    rows = {
        (r.dimension_key, r.hour.hour): (r.quantity, r.balance_bytes)
        for r in Rollup.objects.for_org(org).filter(meter="storage")
    }
    # byte-seconds per hour: hot until 11:30, warm from 11:30.
    assert rows[("tier=hot", 10)] == (size * 3600, size)
    assert rows[("tier=hot", 11)] == (size * 1800, 0)
    assert rows[("tier=warm", 11)] == (size * 1800, size)
    assert rows[("tier=warm", 12)] == (size * 3600, size)
    hot = sum(q for (dim, _), (q, _) in rows.items() if dim == "tier=hot")
    warm = sum(q for (dim, _), (q, _) in rows.items() if dim == "tier=warm")
    assert hot + warm == size * 3 * 3600  # not a byte-second lost or counted twice


# --- dispatching and tasks --------------------------------------------------------------------


def test_dispatch_hands_moves_at_the_organizations_rate(
    org: Organization,
    instances: list[Instance],
    monkeypatch: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from archive.tiering import tasks as tiering_tasks

    def dispatch(**kwargs: Any) -> dict[int, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return tier_moves.moves_dispatch(**kwargs)

    sent: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(
        tiering_tasks.tier_moves_execute, "delay", lambda o, m: sent.append((o, list(m)))
    )
    monkeypatch.setattr(tier_moves, "DISPATCH_BATCH", 2)
    ArchiveSettings.objects.create(organization=org, moves_per_minute=2)
    moves = plan(org, instances, "cold")
    assert dispatch() == {org.pk: 2}
    assert sent == [(org.pk, ids(moves)[:2])]
    dispatched = TierMove.objects.filter(dispatched_at__isnull=False)
    assert set(dispatched.values_list("pk", flat=True)) == set(ids(moves)[:2])
    sent.clear()
    assert dispatch() == {org.pk: 1}  # the next minute: the one left
    assert sent == [(org.pk, ids(moves)[2:])]
    sent.clear()
    assert dispatch() == {}  # all handed out, none lost yet
    # A handed-out move whose task was lost is handed out again after a lease.
    later = timezone.now() + timedelta(seconds=1000)
    assert dispatch(now=later) == {org.pk: 2}


def test_dispatch_hands_over_moves_of_dead_workers(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    from archive.tiering import tasks as tiering_tasks

    sent: list[list[int]] = []
    monkeypatch.setattr(tiering_tasks.tier_moves_execute, "delay", lambda o, m: sent.append(m))
    moves = plan(org, instances, "cold")
    tier_moves._claim(org, ids(moves), "dead#1", timezone.now())
    TierMove.objects.update(dispatched_at=timezone.now())
    assert tier_moves.moves_dispatch() == {}
    expire_leases()
    assert tier_moves.moves_dispatch() == {org.pk: 3}


def test_tasks_run_the_moves(org: Organization, instances: list[Instance], settings: Any) -> None:
    from archive.tiering.tasks import tier_moves_dispatch, tier_moves_execute

    settings.CELERY_TASK_ALWAYS_EAGER = True
    moves = plan(org, instances, "archive")
    assert tier_moves_execute.run(org.pk, ids(moves)) == {"claimed": 3, "done": 3, "failed": 0}
    assert tier_moves_execute.run(org.pk, ids(moves)) == {"claimed": 0, "done": 0, "failed": 0}
    assert tier_moves_execute.run(10**9, ids(moves)) == {}
    assert tier_moves_dispatch.run() == {}
    assert tier_moves_execute.name == "archive.tasks.tier_moves_execute"


def test_beat_dispatches_every_minute_on_the_tiering_queue() -> None:
    from celery.schedules import crontab

    from saas.celery import app

    entry = next(
        e
        for e in app.conf.beat_schedule.values()
        if e["task"] == "archive.tasks.tier_moves_dispatch"
    )
    assert entry["schedule"] == crontab(minute="*")
    assert app.conf.task_routes["archive.tasks.tier_*"] == {"queue": "tiering"}
