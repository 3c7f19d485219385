"""Restores: bringing archive-tier objects back to a readable copy, on a read or in bulk.

A read (WADO-RS, portal download) that touches archive-tier instances without a readable copy
calls ``restore_for_read``: it opens one ``RestoreRequest`` for the instances no open restore
covers yet (or answers with the open one), asks the object store for a copy of each object
(S3 RestoreObject; the filesystem backend simulates the delay), and the caller answers 503 with
the request's id. ``restores_poll`` (beat, every minute) asks the store how each item stands:
a ready item makes its instance readable until the copy expires (``Instance.restored_until``)
and meters ``restore.bytes`` once (key ``restore:<item id>``); a request whose items are all
ready sends ``restore.ready``; one still waiting at ``timeout_at`` is reported as timed out.

Prefetch: when a new study settles (``prefetch_for_study``, queued by the ingest pipeline's
settle check) or an integration posts an order (``prefetch_for_order``), the active policy's
prefetch rule names the patient's priors; those that cannot be read now are restored like a
bulk restore, with the rule's days and a reason, unless this month's prefetches would then
cost more than the rule's monthly cap (audited ``prefetch.capped`` with the figures).

Object-store calls never run inside a database transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from archive.index.selectors import archive_settings_get
from archive.models import ArchiveSettings, Instance, RestoreItem, RestoreRequest, Study
from archive.restores.selectors import (
    RESTORE_METER,
    bulk_instances,
    meter_price,
    needs_restore,
    prefetch_instances,
    prefetch_month_cost,
    prefetch_priors,
    prefetch_rule,
    restore_pending_bytes,
    study_body_parts,
    unreadable_q,
)
from archive.storage import StorageUnavailable, store_for
from archive.storage.tiers import TIER_CATALOG
from billing.metering import record_usage
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record, webhook_event_emit

logger = logging.getLogger(__name__)

_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")

# Objects asked for inline by a read; a bigger read leaves the rest to the poll (bounded latency).
INLINE_STARTS = 200
# Items checked per request and per poll run.
POLL_ITEMS_PER_REQUEST = 500
POLL_ITEMS_PER_RUN = 5000


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
    origin: str = RestoreRequest.Origin.ASKED,
    reason: str = "",
    days: int | None = None,
    admit: Callable[[list[Instance]], Decimal | None] | None = None,
) -> tuple[RestoreRequest, bool]:
    """Open a request for ``instances`` (all needing a restore) that no open restore covers.

    Returns (request, created). When every instance is already being restored, the newest open
    request covering them is returned and nothing is created. ``days``: how long the copies
    stay readable (default: the organization's restore period). ``admit`` is called in the
    transaction with the instances the new request would hold: it may refuse by raising
    (nothing is written), and what it returns is stored as the request's estimated cost.
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
        estimated_cost = admit(wanted) if admit is not None else None
        single_study = {i.study_id for i in wanted}
        restore = RestoreRequest.objects.create(
            organization=org,
            scope=scope,
            study=study
            if study is not None
            else (wanted[0].study if len(single_study) == 1 else None),
            patient_id=patient_id,
            origin=origin,
            reason=reason[:200],
            estimated_cost=estimated_cost,
            days=days or config.restore_days,
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
                "origin": restore.origin,
                "reason": restore.reason,
                "instances": restore.instances_total,
                "bytes": restore.bytes_total,
                "days": restore.days,
                "study_instance_uid": restore.study.study_uid if restore.study else "",
                "estimated_cost": str(estimated_cost) if estimated_cost is not None else None,
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
    # Deferred: archive.restores.tasks imports this module (a task calls a service, a service
    # queues a task).
    from archive.restores.tasks import restore_start_run

    transaction.on_commit(lambda: restore_start_run.delay(org.pk, restore.pk))


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
    qs = bulk_instances(org=org, study=study, patient_id=patient_id)
    needing = list(qs.filter(unreadable_q(now)).only("id", "study_id", "size_bytes", "tier"))
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


# --- prefetch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchOutcome:
    """What a prefetch did.

    ``status``: ``started`` (a restore was opened: ``restore``), ``in_progress`` (open restores
    already cover every prior that needs one: the newest is ``restore``), ``nothing_to_restore``
    (the priors are readable now), ``no_priors`` (no study of the patient matches the rule),
    ``no_rule`` (the active policy has no prefetch rule) or ``capped`` (the restore would take
    this month's prefetch cost past the rule's monthly cap; nothing was started).
    ``amount``: the estimated cost of what was (or would have been) restored.
    """

    status: str
    reason: str
    priors: int = 0
    instances: int = 0
    bytes: int = 0
    amount: Decimal | None = None
    currency: str = ""
    monthly_cap: Decimal | None = None
    month_cost: Decimal | None = None
    keep_days: int | None = None
    restore: RestoreRequest | None = None


class _Capped(Exception):
    def __init__(self, *, amount: Decimal, currency: str, month_cost: Decimal) -> None:
        super().__init__("prefetch capped")
        self.amount = amount
        self.currency = currency
        self.month_cost = month_cost


MAX_ORDER_ID = 64
COST_PLACES = Decimal("0.000001")


def _prefetch(
    *,
    org: Organization,
    actor: Actor,
    patient_id: str,
    modalities: list[str],
    body_parts: list[str],
    reason: str,
    exclude_study_id: int | None = None,
) -> PrefetchOutcome:
    rule = prefetch_rule(org=org)
    if rule is None:
        return PrefetchOutcome(status="no_rule", reason=reason)
    now = timezone.now()
    priors = prefetch_priors(
        org=org,
        rule=rule,
        patient_id=patient_id,
        modalities=modalities,
        body_parts=body_parts,
        exclude_study_id=exclude_study_id,
        now=now,
    )
    base = PrefetchOutcome(
        status="no_priors",
        reason=reason,
        priors=len(priors),
        currency=meter_price(org=org, meter=RESTORE_METER, quantity=0).currency,
        monthly_cap=rule.monthly_cap,
        month_cost=prefetch_month_cost(org=org, now=now),
        keep_days=rule.keep_days,
    )
    if not priors:
        return base
    needing = list(
        prefetch_instances(org=org, studies=priors, now=now).only(
            "id", "study_id", "size_bytes", "tier"
        )
    )
    if not needing:
        return replace(base, status="nothing_to_restore")

    def admit(wanted: list[Instance]) -> Decimal:
        # Serializes the organization's prefetches, so that two cannot both pass the cap.
        list(ArchiveSettings.objects.for_org(org).select_for_update().values_list("pk", flat=True))
        month_cost = prefetch_month_cost(org=org, now=now)
        price = meter_price(
            org=org,
            meter=RESTORE_METER,
            quantity=sum(i.size_bytes for i in wanted),
            projected=restore_pending_bytes(org=org),
        )
        # Kept to the micro-unit, as the request stores it, rounded up: the cap never counts
        # less than the invoice will bill.
        amount = (price.amount or Decimal(0)).quantize(COST_PLACES, rounding=ROUND_CEILING)
        if month_cost + amount > rule.monthly_cap:
            raise _Capped(amount=amount, currency=price.currency, month_cost=month_cost)
        return amount

    try:
        restore, created = _restore_open(
            org=org,
            instances=needing,
            actor=actor,
            scope=RestoreRequest.Scope.PATIENT,
            patient_id=patient_id,
            origin=RestoreRequest.Origin.PREFETCH,
            reason=reason,
            days=rule.keep_days,
            admit=admit,
        )
    except _Capped as capped:
        wanted = _uncovered(org, needing)
        size = sum(i.size_bytes for i in wanted)
        audit_record(
            org=org,
            actor=actor,
            action="prefetch.capped",
            target_label=reason,
            details={
                "reason": reason,
                "priors": len(priors),
                "instances": len(wanted),
                "bytes": size,
                "estimated_cost": str(capped.amount),
                "month_cost": str(capped.month_cost),
                "monthly_cap": str(rule.monthly_cap),
                "currency": capped.currency,
            },
        )
        logger.info(
            "prefetch for org %s capped: %s + %s > %s %s",
            org.pk,
            capped.month_cost,
            capped.amount,
            rule.monthly_cap,
            capped.currency,
        )
        return replace(
            base,
            status="capped",
            instances=len(wanted),
            bytes=size,
            amount=capped.amount,
            currency=capped.currency,
            month_cost=capped.month_cost,
        )
    if not created:
        # Open restores cover every prior that needs one: nothing new, nothing more to pay.
        return replace(
            base,
            status="in_progress",
            instances=restore.instances_total,
            bytes=restore.bytes_total,
            restore=restore,
        )
    _queue_kickoff(org, restore)
    return replace(
        base,
        status="started",
        instances=restore.instances_total,
        bytes=restore.bytes_total,
        amount=restore.estimated_cost,
        month_cost=prefetch_month_cost(org=org, now=now),
        restore=restore,
    )


def _uncovered(org: Organization, instances: list[Instance]) -> list[Instance]:
    covered = set(_open_items(org, (i.pk for i in instances)).values_list("instance_id", flat=True))
    return [i for i in instances if i.pk not in covered]


def prefetch_for_study(*, org: Organization, study: Study) -> PrefetchOutcome:
    """A new study settled: restore the patient's priors the prefetch rule names (the same
    modalities and body parts as the new study). Run by the task the settle check queues;
    settling twice opens one restore (the second finds the priors covered or readable)."""
    if study.organization_id != org.pk:
        raise NotFound("Study not found.")
    return _prefetch(
        org=org,
        actor=Actor.system("prefetch"),
        patient_id=study.patient_id,
        modalities=study.modality_list,
        body_parts=study_body_parts(org=org, study=study),
        reason=f"prefetch: new study {study.study_uid}",
        exclude_study_id=study.pk,
    )


def prefetch_for_order(
    *,
    org: Organization,
    actor: Actor,
    patient_id: str,
    order_id: str,
    modality: str = "",
    body_part: str = "",
) -> PrefetchOutcome:
    """An order (HL7 ORM, FHIR ServiceRequest) for a patient: restore the priors the prefetch
    rule names, of ``modality`` and ``body_part`` when the rule asks for the same ones. A
    patient the organization does not have answers ``no_priors``, like one without studies."""
    fields: dict[str, list[str]] = {}
    patient_id = (patient_id or "").strip()
    order_id = (order_id or "").strip()
    if not patient_id or len(patient_id) > 64 or not patient_id.isprintable():
        fields["patient_id"] = ["Give the patient ID: 1 to 64 printable characters."]
    if not order_id or len(order_id) > MAX_ORDER_ID or not order_id.isprintable():
        fields["order_id"] = [f"Give the order ID: 1 to {MAX_ORDER_ID} printable characters."]
    modality = (modality or "").strip().upper()
    if modality and not _MODALITY.match(modality):
        fields["modality"] = ["A modality is 1 to 16 letters, digits or underscores, e.g. CT."]
    body_part = (body_part or "").strip().upper()
    if body_part and (len(body_part) > 64 or not body_part.isprintable()):
        fields["body_part"] = ["A body part is 1 to 64 printable characters, e.g. CHEST."]
    if fields:
        first = next(iter(fields.values()))[0]
        raise ValidationFailed(f"The order cannot be prefetched: {first}", fields=fields)
    return _prefetch(
        org=org,
        actor=actor,
        patient_id=patient_id,
        modalities=[modality] if modality else [],
        body_parts=[body_part] if body_part else [],
        reason=f"prefetch: order {order_id}",
    )


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
            "origin": restore.origin,
            "reason": restore.reason,
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
