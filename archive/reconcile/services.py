"""The consistency check: index = ledger = object store, per organization, meter and tier.

For one organization ``reconcile_run`` compares three accounts of the same bytes:

- the index: instances per tier (meter ``storage``), their verified disaster-recovery replicas
  (``storage``, in the replica's tier) and derived objects such as thumbnails
  (``storage.derived``);
- the storage ledger: billing's balance per meter and tier (``billing.metering.storage_balances``);
- the object stores: every object listed under ``org-<id>/`` in each of the organization's
  locations (one listing per physical store).

The index and the ledger are read as one consistent pair (the index is read again after the
ledger until both reads agree: every index change writes its ledger delta in the same
transaction). The listing is merge-joined, key by key, with the index rows of the same store
read in the same key order, so memory stays constant however many objects there are.

Work in progress explains what it leaves in a store and is no difference: an upload or a
thumbnail between storing and indexing (``PendingObject``), a replica being copied, a tier move
between its copy and its finish (the object in both tiers, or on S3 already in its new class),
a study being purged (rows whose bytes are already deleted). Each object difference found by the
pass is checked once more, key by key, against fresh rows and a HEAD of the object, so that work
that started during the listing is not reported.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Case, Count, F, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Collate
from django.utils import timezone

from archive.models import (
    TIERS,
    DerivedObject,
    Instance,
    InstanceReplica,
    PendingObject,
    Reconciliation,
    StorageLocation,
    TierMove,
)
from archive.storage import ListedObject, ObjectStore, StorageUnavailable, store_for
from billing.metering import storage_balances
from tenants.models import Organization
from tenants.services import webhook_event_emit

logger = logging.getLogger(__name__)

# billing's ledger meters (billing.meters; archive imports only billing.metering and pricing).
STORAGE = "storage"
DERIVED_STORAGE = "storage.derived"
METERS = (STORAGE, DERIVED_STORAGE)

# Object differences checked a second time, key by key; beyond this many the pass's finding
# stands (a store this far off is reported as it was seen).
RECHECK_MAX = 2000
# Index and ledger are read again until two index reads agree, at most this many times.
SNAPSHOT_ATTEMPTS = 5
INDEX_CHUNK = 2000


class Kind:
    """What a difference says; docs/operations.md says what to do about each."""

    MISSING = "missing_object"  # the index names an object the store does not hold
    SIZE = "size_mismatch"  # the store holds the object with another size
    TIER = "tier_mismatch"  # the store holds the object in another tier than the index says
    UNINDEXED = "unindexed_object"  # the store holds an object nothing in the index names
    LEDGER = "ledger_mismatch"  # the ledger's balance differs from the bytes the index names


KINDS = (Kind.MISSING, Kind.SIZE, Kind.TIER, Kind.UNINDEXED, Kind.LEDGER)


@dataclass(frozen=True)
class _Expected:
    """An object the index says a store holds."""

    key: str
    tier: str
    size: int
    meter: str
    # Its bytes may already be gone: a study being purged, a derived object awaiting its sweep.
    leaving: bool


@dataclass
class _Tally:
    store_bytes: int = 0
    store_objects: int = 0
    in_flight_bytes: int = 0
    unindexed_bytes: int = 0


@dataclass
class Report:
    """What one check found, before it is kept as a ``Reconciliation``."""

    totals: list[dict[str, Any]] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Place:
    """One physical store of the organization and the locations that name it."""

    store: ObjectStore
    location_ids: list[int]
    primary: bool
    label: str


# --- the index and the ledger -------------------------------------------------------------------


def _index_totals(org: Organization) -> dict[tuple[str, str], tuple[int, int]]:
    """(meter, tier) -> (bytes, objects) that the index names."""
    out: dict[tuple[str, str], tuple[int, int]] = defaultdict(lambda: (0, 0))

    def add(meter: str, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            size, count = out[(meter, row["tier"])]
            out[(meter, row["tier"])] = (size + int(row["size"] or 0), count + int(row["n"]))

    add(
        STORAGE,
        Instance.objects.for_org(org)
        .values("tier")
        .annotate(size=Sum("size_bytes"), n=Count("id"))
        .order_by(),
    )
    add(
        STORAGE,
        InstanceReplica.objects.for_org(org)
        .filter(state=InstanceReplica.State.DONE)
        .values("tier")
        .annotate(size=Sum("instance__size_bytes"), n=Count("id"))
        .order_by(),
    )
    add(
        DERIVED_STORAGE,
        DerivedObject.objects.for_org(org)
        .values("tier")
        .annotate(size=Sum("size_bytes"), n=Count("id"))
        .order_by(),
    )
    return dict(out)


def _index_and_ledger(
    org: Organization,
) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], int]]:
    """The index totals and the ledger balances as one consistent pair.

    Every change of the index writes its ledger delta in the same transaction, so the ledger
    read between two equal index reads belongs to that index state. Under steady ingest the
    reads may keep disagreeing: the last pair is used and a difference it shows is a real one
    only if it persists in the next run.
    """
    index = _index_totals(org)
    ledger: dict[tuple[str, str], int] = {}
    for _ in range(SNAPSHOT_ATTEMPTS):
        ledger = storage_balances(org=org)
        again = _index_totals(org)
        if again == index:
            break
        index = again
    return index, ledger


# --- the stores -----------------------------------------------------------------------------------


def _places(org: Organization) -> list[_Place]:
    """The organization's stores, each once: two locations naming the same physical store (the
    same root, or endpoint + bucket + prefix) are listed together."""
    places: dict[str, _Place] = {}
    for location in StorageLocation.objects.for_org(org).order_by("id"):
        store = store_for(location)
        place = places.get(store.place())
        if place is None:
            place = places[store.place()] = _Place(store, [], False, location.name)
        place.location_ids.append(location.pk)
        place.primary = place.primary or location.role == StorageLocation.Role.PRIMARY
    return list(places.values())


def _key_order(field_name: str) -> Any:
    """Order by key as the stores list (code point order): PostgreSQL's "C" collation; SQLite
    compares text as bytes already."""
    if connection.vendor == "postgresql":
        return Collate(F(field_name), "C")
    return F(field_name)


def _leaving_instance(prefix: str, now: datetime) -> Case:
    return Case(
        When(
            Q(**{f"{prefix}study__trashed_at__isnull": False})
            & Q(**{f"{prefix}study__purge_after__lte": now}),
            then=Value(True),
        ),
        default=Value(False),
        output_field=BooleanField(),
    )


def _expected_rows(
    org: Organization, place: _Place, now: datetime, key: str | None = None
) -> Iterator[_Expected]:
    """The objects the index says ``place`` holds, in key order (only ``key``'s when given)."""
    ids = place.location_ids

    def keyed(qs: QuerySet[Any], field_name: str) -> QuerySet[Any]:
        return qs.filter(**{field_name: key}) if key is not None else qs

    instances = (
        keyed(Instance.objects.for_org(org).filter(location_id__in=ids), "object_key")
        .annotate(leaving=_leaving_instance("", now))
        .order_by(_key_order("object_key"))
        .values_list("object_key", "tier", "size_bytes", "leaving")
    )
    replicas = (
        keyed(
            InstanceReplica.objects.for_org(org).filter(
                location_id__in=ids, state=InstanceReplica.State.DONE
            ),
            "instance__object_key",
        )
        .annotate(leaving=_leaving_instance("instance__", now))
        .order_by(_key_order("instance__object_key"))
        .values_list("instance__object_key", "tier", "instance__size_bytes", "leaving")
    )
    # A derived object whose location was removed was stored in the primary location.
    where = (
        Q(location_id__in=ids) | Q(location__isnull=True)
        if place.primary
        else Q(location_id__in=ids)
    )
    derived = (
        keyed(DerivedObject.objects.for_org(org).filter(where), "object_key")
        .annotate(
            leaving=Case(
                When(
                    Q(instance__isnull=True)
                    | Q(location__isnull=True)
                    | Q(instance__study__trashed_at__isnull=False),
                    then=Value(True),
                ),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
        .order_by(_key_order("object_key"))
        .values_list("object_key", "tier", "size_bytes", "leaving")
    )

    def stream(qs: QuerySet[Any], meter: str) -> Iterator[_Expected]:
        for object_key, tier, size, leaving in qs.iterator(chunk_size=INDEX_CHUNK):
            yield _Expected(object_key, tier, int(size), meter, bool(leaving))

    return heapq.merge(
        stream(instances, STORAGE),
        stream(replicas, STORAGE),
        stream(derived, DERIVED_STORAGE),
        key=attrgetter("key"),
    )


def _in_flight(org: Organization, place: _Place, key: str | None = None) -> dict[str, set[str]]:
    """key -> the tiers in which work in progress may have left a copy of it in ``place``.

    Bounded by the work in flight (pending uploads, replicas being copied, moves between their
    copy and their finish), never by the size of the archive.
    """
    ids = place.location_ids
    out: dict[str, set[str]] = defaultdict(set)
    pending = PendingObject.objects.for_org(org).filter(location_id__in=ids)
    replicas = InstanceReplica.objects.for_org(org).filter(
        location_id__in=ids, state=InstanceReplica.State.PENDING
    )
    moves = TierMove.objects.for_org(org).filter(
        Q(state__in=[TierMove.State.COPYING, TierMove.State.VERIFYING])
        | Q(state=TierMove.State.DONE, finished_at__isnull=True)
    )
    if key is not None:
        pending = pending.filter(object_key=key)
        replicas = replicas.filter(instance__object_key=key)
        moves = moves.filter(instance__object_key=key)
    for object_key, tier in pending.values_list("object_key", "tier").iterator():
        out[object_key].add(tier)
    for object_key, tier in replicas.values_list("instance__object_key", "tier").iterator():
        out[object_key].add(tier)
    for object_key, src, src_tier, dst, dst_tier in moves.values_list(
        "instance__object_key", "from_location_id", "from_tier", "to_location_id", "to_tier"
    ).iterator():
        if src in ids:
            out[object_key].add(src_tier)
        if dst in ids:
            out[object_key].add(dst_tier)
    return out


# --- comparing one key --------------------------------------------------------------------------


@dataclass
class _KeyResult:
    """What one key contributes: bytes per (meter, tier) and differences."""

    stored: list[tuple[str, str, int]] = field(default_factory=list)  # (meter, tier, size)
    in_flight: list[tuple[str, str, int]] = field(default_factory=list)
    unindexed: list[tuple[str, str, int]] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)


def _tier_of(store: ObjectStore, storage_class: str) -> str:
    for tier in TIERS:
        if store.storage_class_for(tier) == storage_class:
            return tier
    return storage_class  # a class no tier of this location uses: named as the store says


def _meter_of_key(key: str) -> str:
    # Derived objects live under org-<id>/derived/ (archive.dicomweb.thumbnails).
    return DERIVED_STORAGE if key.split("/", 2)[1:2] == ["derived"] else STORAGE


def _difference(
    kind: str, place: _Place, key: str, meter: str, tier: str, index: int | None, other: int | None
) -> dict[str, Any]:
    details = {
        Kind.MISSING: "The index names this object; the store does not hold it.",
        Kind.SIZE: "The store holds this object with another size than the index says.",
        Kind.TIER: "The store holds this object in another tier than the index says.",
        Kind.UNINDEXED: "The store holds this object; nothing in the index names it.",
    }
    return {
        "kind": kind,
        "meter": meter,
        "tier": tier,
        "location": place.label,
        "key": key,
        "index_bytes": index,
        "other_bytes": other,
        "detail": details[kind],
    }


def _compare_key(
    place: _Place,
    key: str,
    copies: list[ListedObject],
    expected: list[_Expected],
    allowed_tiers: set[str],
) -> _KeyResult:
    """Match the copies a store holds under ``key`` with the objects the index names there."""
    store = place.store
    result = _KeyResult()
    left = list(copies)
    unmatched: list[_Expected] = []
    for item in expected:
        wanted = store.storage_class_for(item.tier)
        copy = next((c for c in left if c.storage_class == wanted), None)
        if copy is None:
            unmatched.append(item)
            continue
        left.remove(copy)
        result.stored.append((item.meter, item.tier, copy.size))
        if copy.size != item.size:
            result.differences.append(
                _difference(Kind.SIZE, place, key, item.meter, item.tier, item.size, copy.size)
            )
    allowed = {store.storage_class_for(t) for t in allowed_tiers}
    for item in unmatched:
        # On S3 a tier move changes the object's class in place before the index switches: the
        # copy in the move's other tier is this object.
        copy = next((c for c in left if c.storage_class in allowed), None)
        if copy is None and not item.leaving:
            copy = next(iter(left), None)
            if copy is None:
                result.differences.append(
                    _difference(Kind.MISSING, place, key, item.meter, item.tier, item.size, None)
                )
                continue
            result.differences.append(
                _difference(Kind.TIER, place, key, item.meter, item.tier, item.size, copy.size)
                | {"store_tier": _tier_of(store, copy.storage_class)}
            )
        if copy is not None:
            left.remove(copy)
            result.stored.append((item.meter, item.tier, copy.size))
    meter = expected[0].meter if expected else _meter_of_key(key)
    for copy in left:
        tier = _tier_of(store, copy.storage_class)
        if copy.storage_class in allowed:
            result.in_flight.append((meter, tier, copy.size))
            continue
        result.unindexed.append((meter, tier, copy.size))
        result.differences.append(
            _difference(Kind.UNINDEXED, place, key, meter, tier, None, copy.size)
        )
    return result


def _copies_now(store: ObjectStore, key: str) -> list[ListedObject]:
    """The copies of ``key`` a store holds now, by HEAD (one per tier on the filesystem; S3 has
    one object whatever the tier asked)."""
    found: dict[str, ListedObject] = {}
    for tier in TIERS:
        if not store.storage_class_for(tier):
            continue
        head = store.head(key=key, tier=tier)
        if head is not None and head.storage_class not in found:
            found[head.storage_class] = ListedObject(key, head.size, head.storage_class)
    return list(found.values())


def _recheck(org: Organization, place: _Place, key: str, now: datetime) -> _KeyResult:
    """The same comparison for one key, from fresh rows and a fresh look at the store."""
    return _compare_key(
        place,
        key,
        _copies_now(place.store, key),
        list(_expected_rows(org, place, now, key=key)),
        _in_flight(org, place, key=key).get(key, set()),
    )


def _merge_join(
    listing: Iterator[ListedObject], expected: Iterator[_Expected]
) -> Iterator[tuple[str, list[ListedObject], list[_Expected]]]:
    """(key, copies, index rows) for every key either side has, both sides in key order."""
    copies = itertools.groupby(listing, key=attrgetter("key"))
    rows = itertools.groupby(expected, key=attrgetter("key"))
    ck, cg = next(copies, (None, None))
    rk, rg = next(rows, (None, None))
    while ck is not None or rk is not None:
        if rk is None or (ck is not None and ck < rk):
            yield ck, list(cg or ()), []  # type: ignore[misc]
            ck, cg = next(copies, (None, None))
        elif ck is None or rk < ck:
            yield rk, [], list(rg or ())
            rk, rg = next(rows, (None, None))
        else:
            yield ck, list(cg or ()), list(rg or ())
            ck, cg = next(copies, (None, None))
            rk, rg = next(rows, (None, None))


def _pair_order(pair: tuple[str, str]) -> tuple[int, int, str]:
    meter, tier = pair
    return (
        METERS.index(meter) if meter in METERS else len(METERS),
        TIERS.index(tier) if tier in TIERS else len(TIERS),
        tier,
    )


def reconcile_compute(*, org: Organization) -> Report:
    """Compare index, ledger and stores for ``org``; nothing is written.

    Raises StorageUnavailable when a store cannot be listed. Slow I/O (the listings) runs
    outside any transaction.
    """
    now = timezone.now()
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    differences: list[dict[str, Any]] = []
    rechecks = 0
    prefix = f"org-{org.pk}/"
    for place in _places(org):
        in_flight = _in_flight(org, place)
        listing = place.store.iter_objects(prefix=prefix)
        for key, copies, rows in _merge_join(listing, _expected_rows(org, place, now)):
            result = _compare_key(place, key, copies, rows, in_flight.get(key, set()))
            if result.differences and rechecks < RECHECK_MAX:
                rechecks += 1
                result = _recheck(org, place, key, now)
            for meter, tier, size in result.stored:
                tallies[(meter, tier)].store_bytes += size
                tallies[(meter, tier)].store_objects += 1
            for meter, tier, size in result.in_flight:
                tallies[(meter, tier)].in_flight_bytes += size
            for meter, tier, size in result.unindexed:
                tallies[(meter, tier)].unindexed_bytes += size
            differences.extend(result.differences)
    index, ledger = _index_and_ledger(org)
    report = Report(differences=differences)
    pairs = {(m, t) for m in METERS for t in TIERS} | set(index) | set(ledger) | set(tallies)
    for meter, tier in sorted(pairs, key=_pair_order):
        index_bytes, index_objects = index.get((meter, tier), (0, 0))
        tally = tallies.get((meter, tier), _Tally())
        ledger_bytes = ledger.get((meter, tier), 0)
        report.totals.append(
            {
                "meter": meter,
                "tier": tier,
                "index_bytes": index_bytes,
                "index_objects": index_objects,
                "ledger_bytes": ledger_bytes,
                "store_bytes": tally.store_bytes,
                "store_objects": tally.store_objects,
                "in_flight_bytes": tally.in_flight_bytes,
                "unindexed_bytes": tally.unindexed_bytes,
            }
        )
        if ledger_bytes != index_bytes:
            report.differences.append(
                {
                    "kind": Kind.LEDGER,
                    "meter": meter,
                    "tier": tier,
                    "location": "",
                    "key": "",
                    "index_bytes": index_bytes,
                    "other_bytes": ledger_bytes,
                    "detail": (
                        f"The ledger's balance is {ledger_bytes - index_bytes:+d} bytes off the "
                        "bytes the index names."
                    ),
                }
            )
    return report


# --- the kept result ----------------------------------------------------------------------------


def _summary(differences: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in differences:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts


def reconcile_run(*, org: Organization) -> Reconciliation:
    """Run the check for ``org`` and keep its result; a run with differences sends the webhook
    event ``reconcile.differences``. A store that cannot be listed makes the run ``failed`` with
    the reason (no differences are claimed from half a listing)."""
    run = Reconciliation.objects.create(organization=org)
    try:
        report = reconcile_compute(org=org)
    except StorageUnavailable as exc:
        run.state = Reconciliation.State.FAILED
        run.error = str(exc)[:1000]
        run.finished_at = timezone.now()
        run.save(update_fields=["state", "error", "finished_at"])
        logger.warning("reconciliation %s of org %s could not list a store", run.pk, org.pk)
        return run
    run.totals = report.totals
    run.differences = report.differences[: Reconciliation.DIFFERENCES_KEPT]
    run.difference_count = len(report.differences)
    run.state = Reconciliation.State.DIFFERENCES if report.differences else Reconciliation.State.OK
    run.finished_at = timezone.now()
    run.save()
    if report.differences:
        logger.warning(
            "reconciliation %s of org %s: %s difference(s)", run.pk, org.pk, run.difference_count
        )
        webhook_event_emit(
            org=org,
            event_type="reconcile.differences",
            payload={
                "reconciliation": run.pk,
                "difference_count": run.difference_count,
                "kinds": _summary(report.differences),
                "differences": report.differences[:20],
            },
        )
    return run
