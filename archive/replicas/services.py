"""Writes of the disaster-recovery replica (see ``archive.replicas`` for the steps and the rules
that must stay true): sync, dispatch, copy and verify, retry, and the hooks that the storage
locations and the trash purge call inside their own transactions."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from archive.models import Instance, InstanceReplica, ReplicaCheck, StorageLocation
from archive.replicas.selectors import replica_location, same_storage
from archive.storage import ObjectStore, StorageUnavailable, store_for
from archive.storage.tiers import tier_get
from billing.metering import storage_delta
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
SYNC_BATCH = 5000
# Rows handed to the workers per organization and minute, in tasks of COPY_BATCH rows.
DISPATCH_PER_MINUTE = 3000
COPY_BATCH = 20
# A dispatched row is reserved this long for the task that carries it; if the task is lost, the
# next dispatch after this time hands the row out again.
DISPATCH_HOLD = timedelta(minutes=10)

PRIMARY_ARCHIVED = (
    "The primary copy is in the archive tier and not restored, so it cannot be read; "
    "restore the study, then retry the replica."
)


class ReplicaError(Exception):
    """A copy that did not verify; ``permanent``: retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def _lease() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "ARCHIVE_MOVE_LEASE_SECONDS", 300)))


def _store(location: StorageLocation) -> ObjectStore:
    """The one way to a location's store, for copies, deletions and the drill alike (the tests
    put a second filesystem root behind it)."""
    return store_for(location)


# --- the replica location -------------------------------------------------------------------------


def replica_location_check_locked(
    *, org: Organization, values: dict[str, Any] | None, exclude_pk: int | None = None
) -> None:
    """Refuse a second replica, or a replica that is the primary under another name.

    Precondition: the caller holds the organization's location rows locked (``select_for_update``)
    so that two requests cannot both add "the" replica. ``values``: kind, endpoint_url, bucket,
    prefix of the location that is to be a replica (None: only the "one replica" rule).
    """
    others = StorageLocation.objects.for_org(org).exclude(pk=exclude_pk)
    if others.filter(role=StorageLocation.Role.REPLICA).exists():
        raise Conflict(
            "The organization already has a disaster-recovery replica; remove it before adding "
            "another one.",
            fields={"role": ["There is already a replica location; there can be only one."]},
        )
    if values is None:
        return
    primary = others.filter(role=StorageLocation.Role.PRIMARY).first()
    if primary is not None and same_storage(values, primary):
        raise ValidationFailed(
            "The replica would be the primary location itself: a copy in the same bucket and "
            "prefix does not survive the loss of the primary.",
            fields={
                "bucket": [
                    "This is where the primary stores its images; choose another bucket, "
                    "region or provider for the replica."
                ]
            },
        )


def replica_location_release_locked(
    *, org: Organization, location: StorageLocation, actor: Actor
) -> None:
    """Forget the replica rows and drills of a replica location that is being removed.

    The replica's bytes stop being billed: one negative ledger delta per tier. Nothing in the
    bucket is deleted (it is the hospital's bucket). Precondition: inside the transaction that
    deletes the location, with the location rows locked.
    """
    now = timezone.now()
    rows = InstanceReplica.objects.for_org(org).filter(location=location)
    per_tier = (
        rows.filter(state=InstanceReplica.State.DONE)
        .values("tier")
        .annotate(size=Sum("instance__size_bytes"), n=Count("id"))
    )
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    for item in per_tier:
        if item["size"]:
            storage_delta(
                org=org,
                tier=item["tier"],
                delta_bytes=-int(item["size"]),
                at=now,
                idempotency_key=f"replica-location:{location.pk}:out:{item['tier']}:{stamp}",
            )
    released = rows.count()
    rows.delete()
    ReplicaCheck.objects.for_org(org).filter(location=location).delete()
    if released:
        audit_record(
            org=org,
            actor=actor,
            action="replica.released",
            target=location,
            details={"replicas": released},
        )


# --- sync: pending rows for every instance not yet replicated -------------------------------------


def replicas_sync(*, org: Organization, limit: int = SYNC_BATCH) -> int:
    """Insert pending replica rows for up to ``limit`` instances that have none; returns how many.

    One ``INSERT ... SELECT`` with an anti-join: nothing is loaded into Python, and running it
    twice inserts nothing new (the anti-join and the unique constraint both see the rows).
    """
    location = replica_location(org=org)
    if location is None or limit <= 0:
        return 0
    quote = connection.ops.quote_name
    replica_table = quote(InstanceReplica._meta.db_table)
    instance_table = quote(Instance._meta.db_table)
    columns = ", ".join(
        quote(c)
        for c in (
            "organization_id",
            "instance_id",
            "location_id",
            "tier",
            "state",
            "attempts",
            "error",
            "created_at",
        )
    )
    # Identifiers come from the models and are quoted; every value is a parameter.
    sql = (
        "INSERT INTO " + replica_table + " (" + columns + ") "  # noqa: S608
        "SELECT i.organization_id, i.id, %s, %s, %s, 0, '', %s FROM " + instance_table + " i "
        "WHERE i.organization_id = %s AND i.location_id <> %s AND NOT EXISTS ("
        "SELECT 1 FROM " + replica_table + " r WHERE r.instance_id = i.id AND r.location_id = %s) "
        "ORDER BY i.id LIMIT %s "
        "ON CONFLICT (instance_id, location_id) DO NOTHING"
    )
    params: list[Any] = [
        location.pk,
        location.replica_tier,
        InstanceReplica.State.PENDING,
        timezone.now(),
        org.pk,
        location.pk,
        location.pk,
        int(limit),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted = max(cursor.rowcount, 0)
    if inserted:
        logger.info("replica sync: %s new rows for org %s", inserted, org.pk)
    return inserted


def _available(now: datetime) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


def replicas_dispatch(
    *, org: Organization, limit: int = DISPATCH_PER_MINUTE
) -> tuple[datetime, list[list[int]]]:
    """Reserve up to ``limit`` pending rows for the queue; returns the reservation token and the
    rows in task-sized batches.

    A reserved row carries ``claimed_until = token`` (now + DISPATCH_HOLD); the task holding the
    batch passes the token back to claim the rows before the hold runs out.
    """
    now = timezone.now()
    token = now + DISPATCH_HOLD
    location = replica_location(org=org)
    if location is None:
        return token, []
    ids = list(
        InstanceReplica.objects.for_org(org)
        # The location too, so that the (organization, location, state) index answers it.
        .filter(location=location, state=InstanceReplica.State.PENDING)
        .filter(_available(now))
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    if not ids:
        return token, []
    InstanceReplica.objects.for_org(org).filter(pk__in=ids).filter(_available(now)).update(
        claimed_until=token
    )
    return token, [ids[i : i + COPY_BATCH] for i in range(0, len(ids), COPY_BATCH)]


# --- copy -----------------------------------------------------------------------------------------


@dataclass
class CopyOutcome:
    done: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def _claim(org: Organization, replica_id: int, reserved_until: datetime | None) -> datetime | None:
    """Take the row for one lease, or None when another worker holds it or it is finished."""
    now = timezone.now()
    until = now + _lease()
    free = _available(now)
    if reserved_until is not None:
        free |= Q(claimed_until=reserved_until)
    claimed = (
        InstanceReplica.objects.for_org(org)
        .filter(pk=replica_id, state=InstanceReplica.State.PENDING)
        .filter(free)
        .update(claimed_until=until, attempts=F("attempts") + 1)
    )
    return until if claimed else None


def _primary_readable(store: ObjectStore, instance: Instance, now: datetime) -> bool:
    if not tier_get(instance.tier).needs_restore:
        return True
    if instance.restored_until is not None and instance.restored_until > now:
        return True
    return store.restore_status(key=instance.object_key, tier=instance.tier).ready


def _copy_one(replica: InstanceReplica, target: ObjectStore) -> int:
    """Stream, store and verify one object; returns its size. Raises ReplicaError/StorageUnavailable.

    Slow I/O, outside any transaction. The spool file lives in the replica store's spool folder
    (on the filesystem backend the same volume, so storing it is a rename).
    """
    instance = replica.instance
    source = _store(instance.location)
    if not _primary_readable(source, instance, timezone.now()):
        raise ReplicaError(PRIMARY_ARCHIVED, permanent=True)
    key = instance.object_key
    spool = target.spool_dir() / f"replica-{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(spool, "wb") as out:
            for chunk in source.iter_bytes(key=key, tier=instance.tier):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        if size != instance.size_bytes or sha256 != instance.sha256:
            raise ReplicaError(
                f"The primary copy read back {size} bytes with SHA-256 {sha256[:12]}…; the index "
                f"says {instance.size_bytes} bytes with {instance.sha256[:12]}…."
            )
        target.put_file(key=key, path=spool, tier=replica.tier, sha256=sha256, replace=True)
    finally:
        spool.unlink(missing_ok=True)
    stored = target.head(key=key, tier=replica.tier)
    problem = None
    if stored is None:
        problem = "The replica object is missing right after it was stored."
    elif stored.size != instance.size_bytes:
        problem = (
            f"The replica object has {stored.size} bytes; the index says {instance.size_bytes}."
        )
    elif stored.sha256 and stored.sha256 != instance.sha256:
        problem = "The replica store recorded another SHA-256 than the index's."
    if problem:
        try:
            target.delete(key=key, tier=replica.tier)
        except StorageUnavailable:
            logger.warning("could not delete unverified replica object of row %s", replica.pk)
        raise ReplicaError(problem)
    return size


def _finish(org: Organization, replica: InstanceReplica, lease: datetime, size: int) -> bool:
    """Mark the row done and bill its bytes, in one transaction; only the lease holder may."""
    now = timezone.now()
    with transaction.atomic():
        updated = (
            InstanceReplica.objects.for_org(org)
            .filter(pk=replica.pk, state=InstanceReplica.State.PENDING, claimed_until=lease)
            .update(
                state=InstanceReplica.State.DONE,
                replicated_at=now,
                verified_at=now,
                claimed_until=None,
                error="",
            )
        )
        if updated:
            storage_delta(
                org=org,
                tier=replica.tier,
                delta_bytes=size,
                at=now,
                idempotency_key=f"replica:{replica.pk}",
            )
    return bool(updated)


def _fail(
    org: Organization, replica: InstanceReplica, lease: datetime, reason: str, *, permanent: bool
) -> str:
    """Record a failed attempt: back to pending (retried later) or failed for good."""
    final = permanent or replica.attempts >= MAX_ATTEMPTS
    values: dict[str, Any] = {"error": reason[:1000], "claimed_until": None}
    if final:
        values["state"] = InstanceReplica.State.FAILED
    InstanceReplica.objects.for_org(org).filter(
        pk=replica.pk, state=InstanceReplica.State.PENDING, claimed_until=lease
    ).update(**values)
    return "failed" if final else "retried"


def replica_copy(
    *, org: Organization, replica_ids: list[int], reserved_until: datetime | None = None
) -> CopyOutcome:
    """Copy and verify the given replica rows, one at a time; safe to run twice or concurrently.

    ``reserved_until``: the token of a batch reserved by ``replicas_dispatch``.
    """
    outcome = CopyOutcome()
    targets: dict[int, ObjectStore] = {}
    for replica_id in replica_ids:
        lease = _claim(org, int(replica_id), reserved_until)
        if lease is None:
            outcome.skipped.append(replica_id)
            continue
        replica = (
            InstanceReplica.objects.for_org(org)
            .select_related("instance", "instance__location", "location")
            .get(pk=replica_id)
        )
        try:
            target = targets.get(replica.location_id)
            if target is None:
                target = targets[replica.location_id] = _store(replica.location)
            size = _copy_one(replica, target)
        except ReplicaError as exc:
            kind = _fail(org, replica, lease, str(exc), permanent=exc.permanent)
            getattr(outcome, kind).append(replica_id)
            logger.warning("replica %s of org %s: %s (%s)", replica.pk, org.pk, kind, exc)
            continue
        except (StorageUnavailable, ValueError, OSError) as exc:
            kind = _fail(org, replica, lease, f"{type(exc).__name__}: {exc}", permanent=False)
            getattr(outcome, kind).append(replica_id)
            logger.warning("replica %s of org %s: %s (%s)", replica.pk, org.pk, kind, exc)
            continue
        if _finish(org, replica, lease, size):
            outcome.done.append(replica_id)
        else:
            outcome.skipped.append(replica_id)
    return outcome


def replicas_retry_failed(*, org: Organization, actor: Actor) -> int:
    """Send every failed replica back to pending (e.g. after the bucket was fixed)."""
    with transaction.atomic():
        count = (
            InstanceReplica.objects.for_org(org)
            .filter(state=InstanceReplica.State.FAILED)
            .update(state=InstanceReplica.State.PENDING, attempts=0, claimed_until=None)
        )
        if count:
            audit_record(
                org=org, actor=actor, action="replica.retried", target=org, details={"rows": count}
            )
    return count


# --- instances leaving the archive (used by the trash purge) --------------------------------------


def replica_objects_delete(*, org: Organization, instance_ids: list[int]) -> None:
    """Delete the replica objects of instances about to be purged. Slow I/O: call it before the
    transaction that removes the rows (bytes go before index rows). Raises StorageUnavailable."""
    rows = (
        InstanceReplica.objects.for_org(org)
        .filter(instance_id__in=instance_ids)
        .select_related("instance", "location")
    )
    stores: dict[int, ObjectStore] = {}
    # Every row, not only done ones: an interrupted copy may have left an object behind.
    for row in rows:
        store = stores.get(row.location_id)
        if store is None:
            store = stores[row.location_id] = _store(row.location)
        store.delete(key=row.instance.object_key, tier=row.tier)


def replicas_forget_locked(*, org: Organization, instance_ids: list[int], at: datetime) -> int:
    """Stop billing and drop the replica rows of instances being removed from the index.

    Precondition: inside the transaction that deletes the instances, after
    ``replica_objects_delete``. Each done row gets its negative delta ``replica:<id>:out``.
    """
    rows = InstanceReplica.objects.for_org(org).filter(instance_id__in=instance_ids)
    for row in rows.filter(state=InstanceReplica.State.DONE).values(
        "id", "tier", "instance__size_bytes"
    ):
        storage_delta(
            org=org,
            tier=row["tier"],
            delta_bytes=-int(row["instance__size_bytes"]),
            at=at,
            idempotency_key=f"replica:{row['id']}:out",
        )
    deleted, _ = rows.delete()
    return deleted
