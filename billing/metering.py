"""The public metering API: how other apps report consumption. Import only from here.

Every call writes inside the caller's transaction, so a usage event or ledger delta commits or
rolls back together with the change it bills. A repeated idempotency key is a no-op, enforced by a
unique constraint (INSERT ... ON CONFLICT DO NOTHING / a savepoint), never by read-then-write.

    with transaction.atomic():
        instance = Instance.objects.create(...)
        record_usage(org=org, meter="ingest.bytes", quantity=size, at=now,
                     idempotency_key=f"ingest:{instance.sop_uid}")
        storage_delta(org=org, tier="hot", delta_bytes=size, at=now,
                      idempotency_key=f"store:{instance.sop_uid}")

Objects the archive derives from the images (thumbnails) go to the same ledger under their own
meter, ``meter="storage.derived"``: stored bytes like any other, never the hospital's images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.meters import LEDGER_METERS, STORAGE, TIERS, dimension_key, meter_get
from billing.models import StorageDelta, UsageEvent
from tenants.errors import ValidationFailed
from tenants.models import Organization

BULK_BATCH = 5000


@dataclass(frozen=True)
class Usage:
    """One event for ``record_usage_bulk``."""

    meter: str
    quantity: int
    at: datetime
    idempotency_key: str
    dimensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """One ledger delta for ``storage_delta_bulk``."""

    tier: str
    delta_bytes: int
    at: datetime
    idempotency_key: str
    meter: str = STORAGE


def _fail(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_usage", fields={field_name: [message]})


def _check_at(at: Any) -> None:
    if not isinstance(at, datetime):
        raise _fail("at", "'at' must be a datetime.")
    if timezone.is_naive(at):
        raise _fail("at", "'at' must be timezone-aware (UTC); a naive datetime is ambiguous.")


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key or len(key) > 200:
        raise _fail(
            "idempotency_key",
            "The idempotency key must be a non-empty string of at most 200 characters.",
        )


def _check_tier(tier: Any) -> None:
    if tier not in TIERS:
        raise _fail("tier", f"Unknown tier {tier!r}; tiers are {', '.join(TIERS)}.")


def _usage_row(org: Organization, item: Usage) -> UsageEvent:
    try:
        meter = meter_get(item.meter)
    except ValueError as exc:
        raise _fail("meter", str(exc)) from None
    if meter.key in LEDGER_METERS:
        raise _fail(
            "meter", f"{meter.label} is metered through storage_delta(), not record_usage()."
        )
    if not isinstance(item.quantity, int) or isinstance(item.quantity, bool):
        raise _fail("quantity", "The quantity must be an integer in the meter's base unit.")
    if item.quantity < 0:
        raise _fail("quantity", f"The quantity of {meter.key} cannot be negative.")
    _check_at(item.at)
    _check_key(item.idempotency_key)
    dims = {str(k): str(v) for k, v in (item.dimensions or {}).items()}
    if meter.by_tier:
        _check_tier(dims.get("tier"))
    elif "tier" in dims:
        _check_tier(dims["tier"])
    return UsageEvent(
        organization=org,
        meter=meter.key,
        quantity=item.quantity,
        at=item.at,
        idempotency_key=item.idempotency_key,
        dimensions=dims,
        dimension_key=dimension_key(dims),
    )


def _delta_row(org: Organization, item: Delta) -> StorageDelta:
    if item.meter not in LEDGER_METERS:
        raise _fail(
            "meter", f"The ledger meters are {', '.join(LEDGER_METERS)}, not {item.meter!r}."
        )
    _check_tier(item.tier)
    if not isinstance(item.delta_bytes, int) or isinstance(item.delta_bytes, bool):
        raise _fail("delta_bytes", "delta_bytes must be an integer.")
    _check_at(item.at)
    _check_key(item.idempotency_key)
    return StorageDelta(
        organization=org,
        meter=item.meter,
        tier=item.tier,
        delta_bytes=item.delta_bytes,
        at=item.at,
        idempotency_key=item.idempotency_key,
    )


def _insert_once(row: UsageEvent | StorageDelta) -> bool:
    """Insert unless the (organization, idempotency key) exists; True if this call inserted.

    PostgreSQL and SQLite: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``. Elsewhere a
    savepoint keeps the caller's transaction usable when the key already exists.
    """
    if connection.vendor in ("postgresql", "sqlite"):
        fields = [f for f in row._meta.concrete_fields if not f.primary_key]
        quote = connection.ops.quote_name
        # Identifiers come from the model and are quoted; values are parameters.
        table = quote(row._meta.db_table)
        columns = ", ".join(quote(str(f.column)) for f in fields)
        markers = ", ".join(["%s"] * len(fields))
        conflict = f"{quote('organization_id')}, {quote('idempotency_key')}"
        sql = "INSERT INTO " + table + " (" + columns + ") VALUES (" + markers + ") "  # noqa: S608
        sql += "ON CONFLICT (" + conflict + ") DO NOTHING RETURNING " + quote("id")
        values = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            return cursor.fetchone() is not None
    try:
        with transaction.atomic():
            row.save(force_insert=True)
        return True
    except IntegrityError:
        return False


def record_usage(
    *,
    org: Organization,
    meter: str,
    quantity: int,
    at: datetime,
    idempotency_key: str,
    dimensions: dict[str, str] | None = None,
) -> bool:
    """Record one usage event. Returns False when the idempotency key was already recorded."""
    row = _usage_row(org, Usage(meter, quantity, at, idempotency_key, dimensions or {}))
    return _insert_once(row)


def storage_delta(
    *,
    org: Organization,
    tier: str,
    delta_bytes: int,
    at: datetime,
    idempotency_key: str,
    meter: str = STORAGE,
) -> bool:
    """Append a ledger delta (+ stored, - removed) of ``meter`` (the images' ``storage``, or
    ``storage.derived``). Returns False for an already-seen key."""
    return _insert_once(_delta_row(org, Delta(tier, delta_bytes, at, idempotency_key, meter)))


def record_usage_bulk(*, org: Organization, events: Iterable[Usage]) -> int:
    """Record many events in few statements; repeated keys are skipped. Returns the number offered.

    Every event is validated before anything is written: one bad event records nothing.
    """
    rows = [_usage_row(org, item) for item in events]
    for start in range(0, len(rows), BULK_BATCH):
        UsageEvent.objects.bulk_create(rows[start : start + BULK_BATCH], ignore_conflicts=True)
    return len(rows)


def storage_delta_bulk(*, org: Organization, deltas: Iterable[Delta]) -> int:
    rows = [_delta_row(org, item) for item in deltas]
    for start in range(0, len(rows), BULK_BATCH):
        StorageDelta.objects.bulk_create(rows[start : start + BULK_BATCH], ignore_conflicts=True)
    return len(rows)


def storage_balances(*, org: Organization) -> dict[tuple[str, str], int]:
    """The ledger's balance now, per (meter, tier): the sum of every delta recorded so far, of
    ``storage`` and ``storage.derived``. Pairs without a delta are absent (a balance of 0).

    What the archive's consistency check compares with the bytes its index names: the two agree
    when every stored and removed byte was metered exactly once.
    """
    rows = (
        StorageDelta.objects.for_org(org)
        .values("meter", "tier")
        .annotate(total=Sum("delta_bytes"))
        .order_by()
    )
    return {(row["meter"], row["tier"]): int(row["total"] or 0) for row in rows}
