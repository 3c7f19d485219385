"""Hourly rollups of usage events and of the storage ledger.

Incremental: each run reads only rows recorded since its mark (minus ``OVERLAP``, so a row whose
transaction committed a little after a later-numbered one is still seen) and recomputes every
hour bucket those rows touch from the raw rows, upserting the result. Recomputing a bucket twice
gives the same row, so the run is idempotent and a late event simply refreshes its bucket.

Storage: a delta at time t changes every hour from t onward (the balance is carried forward), so
each (organization, meter, tier) touched is recomputed from the hour of its earliest new delta up
to the last complete hour; every other one is extended hour by hour at its balance. The ledger
holds two meters, the images' ``storage`` and ``storage.derived`` (thumbnails), each its own
balance. Ledger times are integrated at one-second resolution.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing.meters import LEDGER_METERS
from billing.models import Rollup, RollupMark, StorageDelta, UsageEvent

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
OVERLAP = timedelta(minutes=5)


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


@dataclass
class RollupStats:
    usage_rows_read: int = 0
    usage_buckets: int = 0
    storage_series: int = 0
    storage_buckets: int = 0


def _mark() -> RollupMark:
    mark, _ = RollupMark.objects.select_for_update().get_or_create(
        source="rollup", defaults={"recorded_until": datetime(2000, 1, 1, tzinfo=UTC)}
    )
    return mark


def _contiguous_runs(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours -> [(first, last)] runs with gaps of at most a day, to keep scans short."""
    runs: list[tuple[datetime, datetime]] = []
    for h in hours:
        if runs and h - runs[-1][1] <= timedelta(days=1):
            runs[-1] = (runs[-1][0], h)
        else:
            runs.append((h, h))
    return runs


def _rollup_usage(since: datetime, until: datetime, stats: RollupStats) -> None:
    touched = (
        UsageEvent.objects.filter(recorded_at__gte=since, recorded_at__lt=until)
        .annotate(hour=TruncHour("at"))
        .values_list("organization_id", "meter", "dimension_key", "hour")
        .distinct()
    )
    series: dict[tuple[int, str, str], set[datetime]] = defaultdict(set)
    for org_id, meter, dim, hour in touched:
        series[(org_id, meter, dim)].add(hour)
        stats.usage_rows_read += 1
    now = timezone.now()
    for (org_id, meter, dim), hours in series.items():
        rows = [
            Rollup(
                organization_id=org_id,
                meter=meter,
                dimension_key=dim,
                hour=hour,
                quantity=total,
                events=n,
                updated_at=now,
            )
            for hour, total, n in _hour_sums(org_id, meter, dim, sorted(hours))
            if hour in hours
        ]
        Rollup.objects.bulk_create(
            rows,
            batch_size=5000,
            update_conflicts=True,
            unique_fields=["organization", "meter", "dimension_key", "hour"],
            update_fields=["quantity", "events", "updated_at"],
        )
        stats.usage_buckets += len(rows)


# Touched hours thinner than this share of their span (late events scattered over months) are
# summed hour by hour with one index scan each instead of re-reading the whole span.
SPARSE_SHARE = 0.25
HOURS_PER_QUERY = 2000
_HOUR_SUMS_SQL = """
    SELECT h.hour, s.total, s.n
    FROM unnest(%s::timestamptz[]) AS h(hour)
    CROSS JOIN LATERAL (
        SELECT SUM(e.quantity) AS total, COUNT(*) AS n FROM billing_usageevent e
        WHERE e.organization_id = %s AND e.meter = %s AND e.dimension_key = %s
          AND e.at >= h.hour AND e.at < h.hour + interval '1 hour'
    ) AS s
    WHERE s.n > 0
"""


def _hour_sums(
    org_id: int, meter: str, dim: str, hours: list[datetime]
) -> Iterator[tuple[datetime, int, int]]:
    """(hour, total, events) for a series' touched hours (sorted)."""
    span = int((hours[-1] - hours[0]) / HOUR) + 1
    if connection.vendor == "postgresql" and len(hours) < SPARSE_SHARE * span:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")  # compiling costs more than these short scans
            for i in range(0, len(hours), HOURS_PER_QUERY):
                cursor.execute(_HOUR_SUMS_SQL, [hours[i : i + HOURS_PER_QUERY], org_id, meter, dim])
                for hour, total, n in cursor.fetchall():
                    yield hour, int(total), n
        return
    for first, last in _contiguous_runs(hours):
        sums = (
            UsageEvent.objects.filter(
                organization_id=org_id,
                meter=meter,
                dimension_key=dim,
                at__gte=first,
                at__lt=last + HOUR,
            )
            .annotate(hour=TruncHour("at"))
            .values_list("hour")
            .annotate(total=Sum("quantity"), n=Count("id"))
        )
        for hour, total, n in sums:
            yield hour, int(total or 0), n


def _opening_balance(org_id: int, meter: str, tier: str, start: datetime) -> int:
    """Bytes of ``meter`` stored in ``tier`` just before ``start``.

    Precondition: no delta before ``start`` arrived since the rollups before ``start`` were made
    (true because ``start`` is at or before the earliest new delta), so the last rollup row before
    ``start`` carries the right balance. Hours without a row had a zero balance and no deltas.
    """
    previous = (
        Rollup.objects.filter(
            organization_id=org_id, meter=meter, dimension_key=f"tier={tier}", hour__lt=start
        )
        .order_by("-hour")
        .values_list("balance_bytes", flat=True)
        .first()
    )
    if previous is not None:
        return int(previous)
    total = StorageDelta.objects.filter(
        organization_id=org_id, meter=meter, tier=tier, at__lt=start
    ).aggregate(s=Sum("delta_bytes"))
    return int(total["s"] or 0)


def storage_integrate(
    *, opening: int, deltas: list[tuple[datetime, int]], start: datetime, end: datetime
) -> list[tuple[datetime, int, int, bool]]:
    """Integrate a balance over whole hours [start, end).

    ``deltas`` are (time, bytes) sorted by time, all within [start, end). Returns, per hour,
    (hour, byte-seconds, balance at the end of the hour, whether the hour had deltas).
    """
    out: list[tuple[datetime, int, int, bool]] = []
    balance = opening
    i = 0
    hour = start
    while hour < end:
        hour_end = hour + HOUR
        cursor = hour
        byte_seconds = 0
        had = False
        while i < len(deltas) and deltas[i][0] < hour_end:
            at = deltas[i][0].replace(microsecond=0)
            byte_seconds += balance * int((at - cursor).total_seconds())
            balance += deltas[i][1]
            cursor = at
            had = True
            i += 1
        byte_seconds += balance * int((hour_end - cursor).total_seconds())
        out.append((hour, byte_seconds, balance, had))
        hour = hour_end
    return out


def _rollup_storage(since: datetime, until: datetime, now: datetime, stats: RollupStats) -> None:
    end = floor_hour(now)  # only complete hours are rolled up
    new_deltas = (
        StorageDelta.objects.filter(recorded_at__gte=since, recorded_at__lt=until)
        .values("organization_id", "meter", "tier")
        .annotate(first=Min("at"))
        .values_list("organization_id", "meter", "tier", "first")
    )
    earliest_new = {(org_id, meter, tier): first for org_id, meter, tier, first in new_deltas}
    last_rolled: dict[tuple[int, str, str], datetime] = {}
    for org_id, meter, dim, last in (
        Rollup.objects.filter(meter__in=LEDGER_METERS)
        .values("organization_id", "meter", "dimension_key")
        .annotate(last=Max("hour"))
        .values_list("organization_id", "meter", "dimension_key", "last")
    ):
        last_rolled[(org_id, meter, dim.removeprefix("tier="))] = last
    now = timezone.now()
    for key in set(earliest_new) | set(last_rolled):
        org_id, meter, tier = key
        starts = []
        if key in earliest_new:
            starts.append(floor_hour(earliest_new[key]))
        if key in last_rolled:
            starts.append(last_rolled[key] + HOUR)
        start = min(starts)
        if start >= end:
            continue
        opening = _opening_balance(org_id, meter, tier, start)
        deltas = list(
            StorageDelta.objects.filter(
                organization_id=org_id, meter=meter, tier=tier, at__gte=start, at__lt=end
            )
            .order_by("at", "id")
            .values_list("at", "delta_bytes")
        )
        if opening == 0 and not deltas:
            continue
        hours = storage_integrate(opening=opening, deltas=deltas, start=start, end=end)
        # Keep a row per hour while anything is stored (so the carried balance is visible);
        # hours at zero without deltas are left out.
        rows = [
            Rollup(
                organization_id=org_id,
                meter=meter,
                dimension_key=f"tier={tier}",
                hour=hour,
                quantity=byte_seconds,
                events=0,
                balance_bytes=balance,
                updated_at=now,
            )
            for hour, byte_seconds, balance, had in hours
            if had or byte_seconds or balance
        ]
        Rollup.objects.bulk_create(
            rows,
            batch_size=2000,
            update_conflicts=True,
            unique_fields=["organization", "meter", "dimension_key", "hour"],
            update_fields=["quantity", "balance_bytes", "updated_at"],
        )
        stats.storage_series += 1
        stats.storage_buckets += len(rows)


def rollup_run(*, now: datetime | None = None) -> RollupStats:
    """Bring rollups up to date. Safe to run concurrently (the mark row is locked) and twice.

    ``now`` sets how far storage is integrated (complete hours before it); rows are read by
    the time they were recorded, up to the real clock.
    """
    until = timezone.now()
    stats = RollupStats()
    with transaction.atomic():
        mark = _mark()
        since = mark.recorded_until - OVERLAP
        _rollup_usage(since, until, stats)
        _rollup_storage(since, until, now or until, stats)
        mark.recorded_until = until
        mark.updated_at = timezone.now()
        mark.save(update_fields=["recorded_until", "updated_at"])
    logger.info(
        "rollup: %s usage buckets, %s storage buckets in %s series",
        stats.usage_buckets,
        stats.storage_buckets,
        stats.storage_series,
    )
    return stats
