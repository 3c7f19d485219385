"""Restores: bringing archive-tier objects back to a readable copy, on a read or in bulk.

A read (WADO-RS, portal download) that touches archive-tier instances without a readable copy
calls ``restore_for_read``: it opens one ``RestoreRequest`` for the instances no open restore
covers yet (or answers with the open one), asks the object store for a copy of each object
(S3 RestoreObject; the filesystem backend simulates the delay), and the caller answers 503 with
the request's id. ``restores_poll`` (beat, every minute) asks the store how each item stands:
a ready item makes its instance readable until the copy expires (``Instance.restored_until``)
and meters ``restore.bytes`` once (key ``restore:<item id>``); a request whose items are all
ready sends ``restore.ready``; one still waiting at ``timeout_at`` is reported as timed out.

Object-store calls never run inside a database transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from archive.models import Instance, RestoreItem, RestoreRequest, Study
from archive.selectors import archive_settings_get
from archive.storage import StorageUnavailable, store_for
from archive.tiers import TIER_CATALOG
from billing.metering import record_usage
from billing.pricing import MeterUse, marginal_cost
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record, webhook_event_emit

logger = logging.getLogger(__name__)

RESTORE_METER = "restore.bytes"
# The beat job runs every minute: a copy that became ready is readable at most this much later.
POLL_SECONDS = 60
# Objects asked for inline by a read; a bigger read leaves the rest to the poll (bounded latency).
INLINE_STARTS = 200
# Items checked per request and per poll run.
POLL_ITEMS_PER_REQUEST = 500
POLL_ITEMS_PER_RUN = 5000


def needs_restore(instance: Instance, *, now: datetime | None = None) -> bool:
    """True when the instance sits in a tier that cannot be read and has no readable copy now."""
    if not TIER_CATALOG[instance.tier].needs_restore:
        return False
    now = now or timezone.now()
    return instance.restored_until is None or instance.restored_until <= now


def _unreadable_q(now: datetime) -> Q:
    restore_tiers = [t.key for t in TIER_CATALOG.values() if t.needs_restore]
    return Q(tier__in=restore_tiers) & (Q(restored_until__isnull=True) | Q(restored_until__lte=now))


def typical_seconds(*, platform_filesystem: bool) -> int:
    """How long a restore typically takes: the simulated delay on the filesystem backend, the
    catalog's figure (Deep Archive standard retrieval) on S3."""
    if platform_filesystem:
        return int(settings.ARCHIVE_FS_RESTORE_SECONDS)
    return TIER_CATALOG["archive"].restore_hours * 3600


def _platform_filesystem(org: Organization) -> bool:
    from archive.ingest import location_primary

    return location_primary(org).kind == "platform" and settings.ARCHIVE_BACKEND != "s3"


def retry_after_seconds(restore: RestoreRequest, *, now: datetime | None = None) -> int:
    """Seconds a client should wait before reading again: what is left of the typical delay,
    plus one poll interval (the copy is readable once the beat job has seen it)."""
    now = now or timezone.now()
    typical = typical_seconds(platform_filesystem=_platform_filesystem(restore.organization))
    left = typical - int((now - restore.requested_at).total_seconds())
    return max(left, 0) + POLL_SECONDS


# --- starting ----------------------------------------------------------------------------------


def _open_items(org: Organization, instance_ids: Iterable[int]) -> QuerySet[RestoreItem]:
    return RestoreItem.objects.for_org(org).filter(
        instance_id__in=list(instance_ids),
        ready_at__isnull=True,
        restore__state=RestoreRequest.State.IN_PROGRESS,
    )


def _lock_studies(org: Organization, study_ids: set[int]) -> None:
    # Serializes restore creation per study: two reads of the same study at once open one request.
    list(
        Study.objects.for_org(org)
        .filter(pk__in=sorted(study_ids))
        .order_by("pk")
        .select_for_update()
        .values_list("pk", flat=True)
    )


def _restore_open(
    *,
    org: Organization,
    instances: list[Instance],
    actor: Actor,
    scope: str,
    study: Study | None = None,
    patient_id: str = "",
) -> tuple[RestoreRequest, bool]:
    """Open a request for ``instances`` (all needing a restore) that no open restore covers.

    Returns (request, created). When every instance is already being restored, the newest open
    request covering them is returned and nothing is created.
    """
    config = archive_settings_get(org=org)
    now = timezone.now()
    with transaction.atomic():
        _lock_studies(org, {i.study_id for i in instances})
        covered = dict(
            _open_items(org, (i.pk for i in instances)).values_list("instance_id", "restore_id")
        )
        wanted = [i for i in instances if i.pk not in covered]
        if not wanted:
            newest = max(covered.values())
            return RestoreRequest.objects.for_org(org).get(pk=newest), False
        single_study = {i.study_id for i in wanted}
        restore = RestoreRequest.objects.create(
            organization=org,
            scope=scope,
            study=study
            if study is not None
            else (wanted[0].study if len(single_study) == 1 else None),
            patient_id=patient_id,
            days=config.restore_days,
            instances_total=len(wanted),
            bytes_total=sum(i.size_bytes for i in wanted),
            requested_by=actor.user if actor.user is not None and actor.user.pk else None,
            requested_by_label=actor.label[:255],
            requested_at=now,
            timeout_at=now + timedelta(hours=config.restore_timeout_hours),
        )
        RestoreItem.objects.bulk_create(
            [RestoreItem(organization=org, restore=restore, instance=i) for i in wanted],
            batch_size=1000,
        )
        audit_record(
            org=org,
            actor=actor,
            action="restore.started",
            target=restore,
            target_label=f"restore {restore.pk}",
            details={
                "scope": scope,
                "instances": restore.instances_total,
                "bytes": restore.bytes_total,
                "days": restore.days,
                "study_instance_uid": restore.study.study_uid if restore.study else "",
            },
        )
    return restore, True


def restore_kickoff(*, org: Organization, restore: RestoreRequest, limit: int) -> int:
    """Ask the object store for a readable copy of up to ``limit`` items not ready yet.

    Outside any transaction. Idempotent (the stores accept a repeated request); a failure is
    logged and left to the poll, which asks again for every item the store does not know.
    Returns the number of objects asked for.
    """
    items = (
        RestoreItem.objects.for_org(org)
        .filter(restore=restore, ready_at__isnull=True)
        .select_related("instance__location")
        .order_by("id")[:limit]
    )
    asked = 0
    stores: dict[int, Any] = {}
    for item in items:
        instance = item.instance
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        try:
            store.restore_start(key=instance.object_key, tier=instance.tier, days=restore.days)
            asked += 1
        except StorageUnavailable as exc:
            logger.warning("restore %s: could not start item %s: %s", restore.pk, item.pk, exc)
    return asked


def restore_for_read(
    *, org: Organization, instances: Iterable[Instance], actor: Actor
) -> RestoreRequest | None:
    """Start (or find the open) restore for the instances of a read that cannot be read now.

    None when every instance is readable. Precondition: ``instances`` belong to ``org``. Must
    not be called inside a transaction (the object store is asked after the commit).
    """
    now = timezone.now()
    needing = [i for i in instances if needs_restore(i, now=now)]
    if not needing:
        return None
    restore, created = _restore_open(
        org=org, instances=needing, actor=actor, scope=RestoreRequest.Scope.INSTANCES
    )
    if created:
        restore_kickoff(org=org, restore=restore, limit=INLINE_STARTS)
        if restore.instances_total > INLINE_STARTS:
            _queue_kickoff(org, restore)
    return restore


def _queue_kickoff(org: Organization, restore: RestoreRequest) -> None:
    from archive.restore_tasks import restore_start_run

    transaction.on_commit(lambda: restore_start_run.delay(org.pk, restore.pk))


def _bulk_instances(
    *, org: Organization, study: Study | None, patient_id: str | None
) -> QuerySet[Instance]:
    if (study is None) == (not patient_id):
        raise ValidationFailed(
            "Name either a study or a patient ID to restore.",
            code="restore_scope",
            fields={"study": ["Give a study or a patient_id, not both and not neither."]},
        )
    qs = Instance.objects.for_org(org).filter(study__trashed_at__isnull=True)
    if study is not None:
        if study.trashed_at is not None:
            raise Conflict(
                "The study is in the trash; restore it from the trash first.", code="trashed"
            )
        return qs.filter(study=study)
    qs = qs.filter(study__patient_id=patient_id)
    if not qs.exists():
        raise NotFound("No study of this patient was found.", code="patient_not_found")
    return qs


@dataclass(frozen=True)
class RestoreEstimate:
    """What a bulk restore would bring back, cost and take, before it starts.

    ``amount`` is the marginal charge for ``bytes`` of ``restore.bytes`` on the organization's
    current plan (None when the plan does not price restores).
    """

    instances: int
    bytes: int
    in_progress_instances: int
    readable_instances: int
    amount: Decimal | None
    currency: str
    plan_name: str
    rate: str
    typical_seconds: int
    days: int


def restore_estimate(
    *, org: Organization, study: Study | None = None, patient_id: str | None = None
) -> RestoreEstimate:
    now = timezone.now()
    qs = _bulk_instances(org=org, study=study, patient_id=patient_id)
    unreadable = qs.filter(_unreadable_q(now))
    open_ids = RestoreItem.objects.for_org(org).filter(
        ready_at__isnull=True, restore__state=RestoreRequest.State.IN_PROGRESS
    )
    in_progress = unreadable.filter(pk__in=open_ids.values("instance_id"))
    todo = unreadable.exclude(pk__in=open_ids.values("instance_id")).aggregate(
        n=Count("id"), size=Sum("size_bytes")
    )
    n, size = int(todo["n"] or 0), int(todo["size"] or 0)
    readable = qs.filter(tier="archive").exclude(_unreadable_q(now)).count()
    price = meter_price(org=org, meter=RESTORE_METER, quantity=size)
    return RestoreEstimate(
        instances=n,
        bytes=size,
        in_progress_instances=in_progress.count(),
        readable_instances=readable,
        amount=price.amount,
        currency=price.currency,
        plan_name=price.plan_name,
        rate=price.rate,
        typical_seconds=typical_seconds(platform_filesystem=_platform_filesystem(org)),
        days=archive_settings_get(org=org).restore_days,
    )


def restore_bulk(
    *,
    org: Organization,
    actor: Actor,
    study: Study | None = None,
    patient_id: str | None = None,
) -> RestoreRequest:
    """Restore every archive-tier image of a study or of a patient's studies.

    Answers the open request when all of them are already being restored; Conflict when every
    image is readable already. Objects are asked for by a task after the commit.
    """
    now = timezone.now()
    qs = _bulk_instances(org=org, study=study, patient_id=patient_id)
    needing = list(qs.filter(_unreadable_q(now)).only("id", "study_id", "size_bytes", "tier"))
    if not needing:
        raise Conflict(
            "Every image is readable already: nothing needs a restore.", code="nothing_to_restore"
        )
    restore, created = _restore_open(
        org=org,
        instances=needing,
        actor=actor,
        scope=RestoreRequest.Scope.STUDY if study is not None else RestoreRequest.Scope.PATIENT,
        study=study,
        patient_id=patient_id or "",
    )
    if created:
        _queue_kickoff(org, restore)
    return restore


# --- pricing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterPrice:
    amount: Decimal | None
    currency: str
    plan_name: str
    rate: str


def meter_price(*, org: Organization, meter: str, quantity: int) -> MeterPrice:
    """The marginal charge of ``quantity`` more base units of ``meter`` now, as the invoice will
    price it on the plan in force, counting this month's usage so far (allowances and tiers)."""
    quote = marginal_cost(org=org, at=timezone.now(), uses=[MeterUse(meter, quantity)])
    [cost] = quote.costs
    spec = cost.spec
    if spec is None:
        return MeterPrice(None, quote.currency, quote.plan_name, "")
    rate = ""
    if spec.model == "per_unit":
        rate = f"{spec.unit_price.normalize():f} {quote.currency} per {cost.unit}"
    elif spec.tiers:
        rate = f"from {spec.tiers[0][1].normalize():f} {quote.currency} per {cost.unit}"
    return MeterPrice(cost.amount, quote.currency, quote.plan_name, rate)


# --- polling -----------------------------------------------------------------------------------


def _mark_ready(
    *, org: Organization, item: RestoreItem, expires_at: datetime | None, now: datetime
) -> bool:
    """Record one item ready: the instance readable until the copy expires, metered once."""
    restore = item.restore
    instance = item.instance
    until = expires_at or now + timedelta(days=restore.days)
    with transaction.atomic():
        claimed = (
            RestoreItem.objects.for_org(org)
            .filter(pk=item.pk, ready_at__isnull=True)
            .update(ready_at=now)
        )
        if not claimed:
            return False
        Instance.objects.for_org(org).filter(pk=instance.pk).filter(
            Q(restored_until__isnull=True) | Q(restored_until__lt=until)
        ).update(restored_until=until)
        if TIER_CATALOG[instance.tier].needs_restore:
            record_usage(
                org=org,
                meter=RESTORE_METER,
                quantity=instance.size_bytes,
                at=now,
                idempotency_key=f"restore:{item.pk}",
            )
        RestoreRequest.objects.for_org(org).filter(pk=restore.pk).update(
            instances_ready=F("instances_ready") + 1
        )
    return True


def _finish_ready(*, org: Organization, restore: RestoreRequest, now: datetime) -> bool:
    with transaction.atomic():
        claimed = (
            RestoreRequest.objects.for_org(org)
            .filter(pk=restore.pk, state=RestoreRequest.State.IN_PROGRESS)
            .update(state=RestoreRequest.State.READY, ready_at=now, checked_at=now, error="")
        )
        if not claimed:
            return False
        restore.refresh_from_db()
        items = RestoreItem.objects.for_org(org).filter(restore=restore)
        readable_until = (
            Instance.objects.for_org(org)
            .filter(pk__in=items.values("instance_id"))
            .order_by("restored_until")
            .values_list("restored_until", flat=True)
            .first()
        )
        uids = list(
            Study.objects.for_org(org)
            .filter(pk__in=items.values("instance__study_id"))
            .order_by("study_uid")
            .values_list("study_uid", flat=True)
        )
        payload = {
            "restore_id": restore.pk,
            "scope": restore.scope,
            "study_instance_uids": uids,
            "patient_id": restore.patient_id,
            "instances": restore.instances_total,
            "bytes": restore.bytes_total,
            "readable_until": readable_until.isoformat() if readable_until else None,
        }
        webhook_event_emit(org=org, event_type="restore.ready", payload=payload)
        audit_record(
            org=org,
            actor=Actor.system("restores"),
            action="restore.ready",
            target=restore,
            target_label=f"restore {restore.pk}",
            details={k: v for k, v in payload.items() if k != "patient_id"},
        )
    return True


def _time_out(*, org: Organization, restore: RestoreRequest, now: datetime) -> bool:
    hours = int((restore.timeout_at - restore.requested_at).total_seconds() // 3600)
    with transaction.atomic():
        ready = RestoreItem.objects.for_org(org).filter(restore=restore, ready_at__isnull=False)
        done = ready.count()
        error = (
            f"Timed out: {done} of {restore.instances_total} image(s) were restored within "
            f"{hours} hours; the object store did not finish the rest. Start a new restore to "
            "try again."
        )
        claimed = (
            RestoreRequest.objects.for_org(org)
            .filter(pk=restore.pk, state=RestoreRequest.State.IN_PROGRESS)
            .update(state=RestoreRequest.State.TIMED_OUT, checked_at=now, error=error)
        )
        if not claimed:
            return False
        audit_record(
            org=org,
            actor=Actor.system("restores"),
            action="restore.timed_out",
            target=restore,
            target_label=f"restore {restore.pk}",
            details={"instances": restore.instances_total, "ready": done},
        )
    logger.warning("restore %s of org %s timed out (%d ready)", restore.pk, org.pk, done)
    return True


def restore_check(*, org: Organization, restore: RestoreRequest, limit: int) -> int:
    """Check up to ``limit`` items of one open request with the object store; finish the
    request when all are ready, time it out past ``timeout_at``. Returns items checked."""
    now = timezone.now()
    if restore.state != RestoreRequest.State.IN_PROGRESS:
        return 0
    pending = list(
        RestoreItem.objects.for_org(org)
        .filter(restore=restore, ready_at__isnull=True)
        .select_related("instance__location", "restore")
        .order_by("id")[:limit]
    )
    stores: dict[int, Any] = {}
    for item in pending:
        instance = item.instance
        if not TIER_CATALOG[instance.tier].needs_restore:
            # Moved back to a readable tier meanwhile: nothing to wait for, nothing to bill.
            _mark_ready(org=org, item=item, expires_at=now, now=now)
            continue
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        try:
            status = store.restore_status(key=instance.object_key, tier=instance.tier)
            if status.ready:
                _mark_ready(org=org, item=item, expires_at=status.expires_at, now=timezone.now())
            elif not status.requested:
                # Never reached the store (a failed start) or expired before we saw it: ask again.
                store.restore_start(key=instance.object_key, tier=instance.tier, days=restore.days)
        except StorageUnavailable as exc:
            logger.warning("restore %s: item %s not checked: %s", restore.pk, item.pk, exc)
    now = timezone.now()
    left = RestoreItem.objects.for_org(org).filter(restore=restore, ready_at__isnull=True)
    if not left.exists():
        _finish_ready(org=org, restore=restore, now=now)
    elif now >= restore.timeout_at:
        _time_out(org=org, restore=restore, now=now)
    else:
        RestoreRequest.objects.for_org(org).filter(pk=restore.pk).update(checked_at=now)
    return len(pending)


def restores_poll(*, limit: int = POLL_ITEMS_PER_RUN) -> dict[str, int]:
    """Beat: check open restores, least recently checked first, up to ``limit`` items in all."""
    checked = requests = 0
    open_requests = (
        RestoreRequest.objects.filter(state=RestoreRequest.State.IN_PROGRESS)
        .select_related("organization")
        .order_by(F("checked_at").asc(nulls_first=True), "id")
    )
    for restore in open_requests.iterator(chunk_size=100):
        if checked >= limit:
            break
        checked += restore_check(
            org=restore.organization,
            restore=restore,
            limit=min(POLL_ITEMS_PER_REQUEST, limit - checked),
        )
        requests += 1
    return {"requests": requests, "items": checked}


# --- reads -------------------------------------------------------------------------------------


def restore_list(*, org: Organization, state: str = "") -> QuerySet[RestoreRequest]:
    qs = RestoreRequest.objects.for_org(org).select_related("study", "requested_by")
    if state:
        qs = qs.filter(state=state)
    return qs.order_by("-id")


def restore_get(*, org: Organization, restore_id: int | str) -> RestoreRequest:
    try:
        return (
            RestoreRequest.objects.for_org(org)
            .select_related("study", "requested_by")
            .get(pk=int(restore_id))
        )
    except (RestoreRequest.DoesNotExist, ValueError, TypeError):
        raise NotFound("Restore not found.", code="restore_not_found") from None


def restore_instance_uids(
    *, org: Organization, restore: RestoreRequest, limit: int = 100
) -> list[str]:
    return list(
        RestoreItem.objects.for_org(org)
        .filter(restore=restore)
        .order_by("id")
        .values_list("instance__sop_instance_uid", flat=True)[:limit]
    )


def study_restores(*, org: Organization, study: Study) -> QuerySet[RestoreRequest]:
    """Restores that include images of ``study`` (whatever their scope), newest first."""
    ids = RestoreItem.objects.for_org(org).filter(instance__study=study).values("restore_id")
    return (
        RestoreRequest.objects.for_org(org).filter(Q(study=study) | Q(pk__in=ids)).order_by("-id")
    )


def study_restore_state(*, org: Organization, study: Study) -> dict[str, int]:
    """Archive-tier images of a study: readable now (restored), being restored, needing one."""
    now = timezone.now()
    archived = Instance.objects.for_org(org).filter(study=study, tier="archive")
    unreadable = archived.filter(_unreadable_q(now))
    in_progress = unreadable.filter(
        pk__in=RestoreItem.objects.for_org(org)
        .filter(ready_at__isnull=True, restore__state=RestoreRequest.State.IN_PROGRESS)
        .values("instance_id")
    ).count()
    total_unreadable = unreadable.count()
    return {
        "archived": archived.count(),
        "restored": archived.exclude(_unreadable_q(now)).count(),
        "in_progress": in_progress,
        "needing": total_unreadable - in_progress,
    }
