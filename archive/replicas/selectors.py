"""Reads of the disaster-recovery replica (see ``archive.replicas``): the replica location,
whether two locations are one, replication status and lag, failures, drills."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, Max, Min, OuterRef, Sum
from django.utils import timezone

from archive.models import Instance, InstanceReplica, ReplicaCheck, StorageLocation
from tenants.models import Organization

# --- the replica location -------------------------------------------------------------------------


def replica_location(*, org: Organization) -> StorageLocation | None:
    return (
        StorageLocation.objects.for_org(org)
        .filter(role=StorageLocation.Role.REPLICA)
        .order_by("id")
        .first()
    )


def _platform_target() -> tuple[str, str, str] | None:
    if settings.ARCHIVE_BACKEND != "s3":
        return None
    return (
        str(settings.ARCHIVE_S3_ENDPOINT_URL or ""),
        str(settings.ARCHIVE_S3_BUCKET),
        str(settings.ARCHIVE_S3_PREFIX or ""),
    )


def _target(kind: str, endpoint_url: str, bucket: str, prefix: str) -> tuple[str, str, str] | None:
    if kind == StorageLocation.Kind.PLATFORM:
        return _platform_target()
    return (endpoint_url, bucket, prefix)


def _normalized(target: tuple[str, str, str]) -> tuple[str, str, str]:
    endpoint, bucket, prefix = target
    return (endpoint.strip().rstrip("/").lower(), bucket.strip(), prefix.strip().strip("/"))


def same_storage(a: StorageLocation | dict[str, Any], b: StorageLocation | dict[str, Any]) -> bool:
    """Whether two locations write to the same place: a replica there protects nothing.

    Both the platform default, or the same endpoint, bucket and prefix (the platform default is
    compared by its own bucket when the platform stores on S3).
    """

    def parts(x: StorageLocation | dict[str, Any]) -> tuple[str, str, str, str]:
        if isinstance(x, StorageLocation):
            return (x.kind, x.endpoint_url, x.bucket, x.prefix)
        return (
            str(x.get("kind", StorageLocation.Kind.S3)),
            str(x.get("endpoint_url", "")),
            str(x.get("bucket", "")),
            str(x.get("prefix", "")),
        )

    kind_a, *rest_a = parts(a)
    kind_b, *rest_b = parts(b)
    if kind_a == kind_b == StorageLocation.Kind.PLATFORM:
        return True
    target_a = _target(kind_a, *rest_a)
    target_b = _target(kind_b, *rest_b)
    if target_a is None or target_b is None:
        return False
    return _normalized(target_a) == _normalized(target_b)


def replica_rows_exist(*, org: Organization, location: StorageLocation) -> bool:
    return InstanceReplica.objects.for_org(org).filter(location=location).exists()


def replica_org_ids() -> list[int]:
    """Organizations that have a replica location."""
    return list(
        StorageLocation.objects.filter(role=StorageLocation.Role.REPLICA)
        .values_list("organization_id", flat=True)
        .distinct()
    )


# --- status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicationStatus:
    location: StorageLocation | None
    instances: int
    bytes: int
    replicated: int
    replicated_bytes: int
    pending: int
    pending_bytes: int
    failed: int
    failed_bytes: int
    # The oldest instance without a verified replica, and how long it has waited.
    oldest_unreplicated_at: datetime | None
    lag_seconds: int
    last_drill: ReplicaCheck | None

    @property
    def enabled(self) -> bool:
        return self.location is not None


def replication_status(*, org: Organization) -> ReplicationStatus:
    """Where replication stands. Pending counts instances without a row yet (not synced) too.

    Counts per state come from the replica rows alone; sizes and waiting times are read only for
    the rows not done (few, through the state index) and for the instances without a row. Those
    are the instances above the highest one with a row whenever their number adds up (new
    instances not synced yet, the usual case); otherwise an anti-join finds them.
    """
    location = replica_location(org=org)
    instances_qs = Instance.objects.for_org(org)
    totals = instances_qs.aggregate(n=Count("id"), size=Sum("size_bytes"))
    instances, size = int(totals["n"] or 0), int(totals["size"] or 0)
    if location is None:
        return ReplicationStatus(None, instances, size, 0, 0, 0, 0, 0, 0, None, 0, None)
    rows = InstanceReplica.objects.for_org(org).filter(location=location)
    counts = {
        row["state"]: (int(row["n"]), int(row["top"] or 0))
        for row in rows.values("state").annotate(n=Count("id"), top=Max("instance_id"))
    }
    waiting = {
        row["state"]: (int(row["size"] or 0), row["oldest"])
        for row in rows.exclude(state=InstanceReplica.State.DONE)
        .values("state")
        .annotate(size=Sum("instance__size_bytes"), oldest=Min("instance__received_at"))
    }
    without = max(instances - sum(n for n, _ in counts.values()), 0)
    unsynced: dict[str, Any] = {"n": 0, "size": 0, "oldest": None}
    if without:
        aggregates = {"n": Count("id"), "size": Sum("size_bytes"), "oldest": Min("received_at")}
        top = max((t for _, t in counts.values()), default=0)
        unsynced = instances_qs.filter(pk__gt=top).aggregate(**aggregates)
        if unsynced["n"] != without:
            has_row = InstanceReplica.objects.filter(instance_id=OuterRef("pk"), location=location)
            unsynced = instances_qs.filter(~Exists(has_row)).aggregate(**aggregates)
    done = counts.get(InstanceReplica.State.DONE, (0, 0))[0]
    failed = counts.get(InstanceReplica.State.FAILED, (0, 0))[0]
    failed_bytes = waiting.get(InstanceReplica.State.FAILED, (0, None))[0]
    pending_bytes = waiting.get(InstanceReplica.State.PENDING, (0, None))[0] + int(
        unsynced["size"] or 0
    )
    starts = [at for _, at in waiting.values() if at is not None]
    if unsynced["oldest"] is not None:
        starts.append(unsynced["oldest"])
    oldest = min(starts, default=None)
    now = timezone.now()
    lag = max(int((now - oldest).total_seconds()), 0) if oldest else 0
    return ReplicationStatus(
        location=location,
        instances=instances,
        bytes=size,
        replicated=done,
        replicated_bytes=max(size - pending_bytes - failed_bytes, 0),
        pending=max(instances - done - failed, 0),
        pending_bytes=pending_bytes,
        failed=failed,
        failed_bytes=failed_bytes,
        oldest_unreplicated_at=oldest,
        lag_seconds=lag,
        last_drill=drill_list(org=org).first(),
    )


def replica_failures(*, org: Organization) -> Any:
    return (
        InstanceReplica.objects.for_org(org)
        .filter(state=InstanceReplica.State.FAILED)
        .select_related("instance", "location")
        .order_by("-id")
    )


def drill_list(*, org: Organization) -> Any:
    return (
        ReplicaCheck.objects.for_org(org).select_related("location").order_by("-started_at", "-id")
    )
