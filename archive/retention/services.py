"""Retention: the trash (with a grace period), the purge that follows it, and legal holds.

A study deleted by a retention rule (or by hand) goes to the trash first: it disappears from
searches and reads, and can be taken back out until ``purge_after``. Past that date the beat job
``trash_purge_due`` deletes it for good: every object's bytes first (primary copy and replicas),
then, in one transaction per batch, the index rows with their ledger deltas (``-size`` per tier)
and the early-deletion charge of a tier left before its minimum storage duration. A crash
between the two steps leaves rows whose bytes are gone, in a study that is trashed and due: the
rerun deletes the (missing) bytes again, which the stores accept, and then the rows.

A legal hold keeps a study whatever the policy says: a held study cannot be trashed, and a held
study that is already in the trash stays there but is never purged until the hold is lifted.
``Study.legal_hold`` mirrors "an active hold exists" and is written in the same transaction.
Once a study's purge date has passed it can be neither taken out of the trash nor held: its
bytes may already be going.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from archive.index.selectors import archive_settings_get
from archive.models import (
    Instance,
    LegalHold,
    Series,
    Study,
    TierMove,
)
from archive.replicas.services import replica_objects_delete, replicas_forget_locked
from archive.storage import StorageUnavailable, store_for
from archive.storage.tiers import early_deletion_byte_days
from billing.metering import Delta, Usage, record_usage_bulk, storage_delta_bulk
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

REASON_MAX = 500
PURGE_STUDIES_PER_RUN = 50
PURGE_INSTANCES_PER_RUN = 5000
PURGE_BATCH = 500


def _reason(reason: str, field: str = "reason") -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationFailed(
            "A reason is required.", code="reason_required", fields={field: ["Give a reason."]}
        )
    if len(text) > REASON_MAX:
        raise ValidationFailed(
            "The reason is too long.",
            fields={field: [f"At most {REASON_MAX} characters."]},
        )
    return text


def _locked(org: Organization, study: Study) -> Study:
    row = Study.objects.for_org(org).select_for_update().filter(pk=study.pk).first()
    if row is None:
        raise NotFound("Study not found.")
    return row


def _purge_due(study: Study, now: datetime) -> bool:
    return (
        study.trashed_at is not None and study.purge_after is not None and study.purge_after <= now
    )


def _grace_days(org: Organization) -> int:
    return archive_settings_get(org=org).trash_grace_days


# --- trash -------------------------------------------------------------------------------------


def study_trash(*, org: Organization, study: Study, actor: Actor, reason: str) -> Study:
    """Move a study to the trash for ``ArchiveSettings.trash_grace_days``.

    Refused (Conflict) for a study under legal hold or already in the trash.
    """
    text = _reason(reason)
    now = timezone.now()
    with transaction.atomic():
        row = _locked(org, study)
        if row.legal_hold:
            raise Conflict(
                f"Study {row.study_uid} is under legal hold and cannot be deleted; the hold must "
                "be lifted first.",
                code="legal_hold",
            )
        if row.trashed_at is not None:
            raise Conflict(
                f"Study {row.study_uid} is already in the trash (purge on "
                f"{row.purge_after:%Y-%m-%d}).",
                code="already_trashed",
            )
        row.trashed_at = now
        row.purge_after = now + timedelta(days=_grace_days(org))
        row.trash_reason = text[:REASON_MAX]
        row.save(update_fields=["trashed_at", "purge_after", "trash_reason"])
        audit_record(
            org=org,
            actor=actor,
            action="study.trashed",
            target=row,
            target_label=row.study_uid,
            details={
                "reason": row.trash_reason,
                "purge_after": row.purge_after.isoformat(),
                "instances": row.instance_count,
                "bytes": row.total_bytes,
            },
        )
    return row


def study_untrash(*, org: Organization, study: Study, actor: Actor, reason: str = "") -> Study:
    """Take a study out of the trash before its purge date."""
    now = timezone.now()
    with transaction.atomic():
        row = _locked(org, study)
        if row.trashed_at is None:
            raise Conflict(f"Study {row.study_uid} is not in the trash.", code="not_trashed")
        if _purge_due(row, now):
            raise Conflict(
                f"Study {row.study_uid} passed its purge date ({row.purge_after:%Y-%m-%d}) and "
                "is being deleted; it can no longer be taken out of the trash.",
                code="purge_due",
            )
        row.trashed_at = None
        row.purge_after = None
        row.trash_reason = ""
        row.save(update_fields=["trashed_at", "purge_after", "trash_reason"])
        audit_record(
            org=org,
            actor=actor,
            action="study.untrashed",
            target=row,
            target_label=row.study_uid,
            details={"reason": (reason or "").strip()[:REASON_MAX]},
        )
    return row


# --- purge -------------------------------------------------------------------------------------


def _delete_bytes(org: Organization, instances: list[Instance]) -> None:
    """Delete every copy of ``instances``: the disaster-recovery replicas, then the primary
    objects. Raises StorageUnavailable on the first failure (the rows stay; a rerun retries)."""
    replica_objects_delete(org=org, instance_ids=[i.pk for i in instances])
    stores: dict[int, Any] = {}
    for instance in instances:
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        store.delete(key=instance.object_key, tier=instance.tier)


def _delete_rows(*, org: Organization, study: Study, ids: list[int], now: datetime) -> int:
    """One transaction: the rows of instances whose bytes are gone, with their ledger deltas and
    early-deletion charges. Returns the rows deleted (0 when the study is no longer due)."""
    with transaction.atomic():
        row = _locked(org, study)
        if not _purge_due(row, now) or row.legal_hold:
            return 0
        rows = list(
            Instance.objects.for_org(org)
            .filter(pk__in=ids)
            .values("pk", "tier", "size_bytes", "received_at", "tier_changed_at")
        )
        deltas = []
        charges = []
        for r in rows:
            deltas.append(
                Delta(
                    tier=r["tier"],
                    delta_bytes=-r["size_bytes"],
                    at=now,
                    idempotency_key=f"purge:{r['pk']}",
                )
            )
            owed = early_deletion_byte_days(
                size=r["size_bytes"],
                tier=r["tier"],
                since=r["tier_changed_at"] or r["received_at"],
                left_at=now,
            )
            if owed:
                charges.append(
                    Usage(
                        meter="early_deletion",
                        quantity=owed,
                        at=now,
                        idempotency_key=f"purge:{r['pk']}:early",
                        dimensions={"tier": r["tier"]},
                    )
                )
        storage_delta_bulk(org=org, deltas=deltas)
        record_usage_bulk(org=org, events=charges)
        # The replicas stop being billed (``replica:<id>:out``) and their rows go.
        replicas_forget_locked(org=org, instance_ids=[r["pk"] for r in rows], at=now)
        # Restore items and moves of these instances go with them (CASCADE).
        Instance.objects.for_org(org).filter(pk__in=[r["pk"] for r in rows]).delete()
    return len(rows)


def _finish(*, org: Organization, study: Study, now: datetime) -> bool:
    with transaction.atomic():
        row = _locked(org, study)
        if not _purge_due(row, now) or row.legal_hold:
            return False
        if Instance.objects.for_org(org).filter(study=row).exists():
            return False
        details = {
            "reason": row.trash_reason,
            "trashed_at": row.trashed_at.isoformat() if row.trashed_at else None,
            "instances": row.instance_count,
            "series": row.series_count,
            "bytes": row.total_bytes,
        }
        uid, pk = row.study_uid, row.pk
        Series.objects.for_org(org).filter(study=row).delete()
        row.delete()
        audit_record(
            org=org,
            actor=Actor.system("retention"),
            action="study.purged",
            target_type="study",
            target_id=str(pk),
            target_label=uid,
            details=details,
        )
    return True


def study_purge(*, org: Organization, study: Study, limit: int) -> tuple[int, bool]:
    """Purge up to ``limit`` instances of a due study, bytes first; then the study itself when
    none is left. Returns (instances purged, study gone)."""
    purged = 0
    while True:
        now = timezone.now()
        current = Study.objects.for_org(org).filter(pk=study.pk).first()
        if current is None or not _purge_due(current, now) or current.legal_hold:
            return purged, False
        busy = TierMove.objects.for_org(org).filter(
            study=current, state__in=[TierMove.State.COPYING, TierMove.State.VERIFYING]
        )
        if busy.exists():
            # A worker is copying one of its objects: let it finish (or its lease run out).
            return purged, False
        if purged >= limit:
            return purged, False
        batch = list(
            Instance.objects.for_org(org)
            .filter(study=current)
            .select_related("location")
            .order_by("id")[: min(PURGE_BATCH, limit - purged)]
        )
        if not batch:
            return purged, _finish(org=org, study=current, now=now)
        try:
            _delete_bytes(org, batch)
        except StorageUnavailable as exc:
            logger.warning("purge of study %s (org %s) paused: %s", current.pk, org.pk, exc)
            return purged, False
        deleted = _delete_rows(org=org, study=current, ids=[i.pk for i in batch], now=now)
        if not deleted:
            return purged, False
        purged += deleted


def trash_purge_due(
    *,
    study_limit: int = PURGE_STUDIES_PER_RUN,
    instance_limit: int = PURGE_INSTANCES_PER_RUN,
) -> dict[str, int]:
    """Beat: purge studies past their purge date and not held, oldest due first (bounded)."""
    now = timezone.now()
    due = (
        Study.objects.filter(trashed_at__isnull=False, purge_after__lte=now, legal_hold=False)
        .select_related("organization")
        .order_by("purge_after", "id")[:study_limit]
    )
    instances = studies = 0
    for study in list(due):
        if instances >= instance_limit:
            break
        count, gone = study_purge(
            org=study.organization, study=study, limit=instance_limit - instances
        )
        instances += count
        studies += int(gone)
    return {"studies": studies, "instances": instances}


# --- legal holds -------------------------------------------------------------------------------


def legal_hold_set(*, org: Organization, study: Study, actor: Actor, reason: str) -> LegalHold:
    """Put a study under legal hold. Precondition: the caller checked ``holds.manage``."""
    text = _reason(reason)
    now = timezone.now()
    with transaction.atomic():
        row = _locked(org, study)
        if (
            row.legal_hold
            or LegalHold.objects.for_org(org).filter(study=row, lifted_at__isnull=True).exists()
        ):
            raise Conflict(
                f"Study {row.study_uid} is already under legal hold.", code="already_held"
            )
        if _purge_due(row, now):
            raise Conflict(
                f"Study {row.study_uid} passed its purge date and is being deleted; it can no "
                "longer be held.",
                code="purge_due",
            )
        hold = LegalHold.objects.create(
            organization=org,
            study=row,
            reason=text,
            set_by=actor.user if actor.user is not None and actor.user.pk else None,
            set_by_label=actor.label[:255],
            set_at=now,
        )
        Study.objects.for_org(org).filter(pk=row.pk).update(legal_hold=True)
        audit_record(
            org=org,
            actor=actor,
            action="legal_hold.set",
            target=hold,
            target_label=row.study_uid,
            details={"reason": text, "study": row.pk, "in_trash": row.trashed_at is not None},
        )
    study.legal_hold = True
    return hold


def legal_hold_lift(*, org: Organization, hold: LegalHold, actor: Actor, reason: str) -> LegalHold:
    """Lift an active hold. Precondition: the caller checked ``holds.manage``."""
    text = _reason(reason)
    now = timezone.now()
    with transaction.atomic():
        study = _locked(org, hold.study)
        row = LegalHold.objects.for_org(org).select_for_update().get(pk=hold.pk)
        if row.lifted_at is not None:
            raise Conflict("This legal hold was already lifted.", code="already_lifted")
        row.lifted_at = now
        row.lifted_by = actor.user if actor.user is not None and actor.user.pk else None
        row.lifted_by_label = actor.label[:255]
        row.lift_reason = text
        row.save(update_fields=["lifted_at", "lifted_by", "lifted_by_label", "lift_reason"])
        still_held = (
            LegalHold.objects.for_org(org).filter(study=study, lifted_at__isnull=True).exists()
        )
        Study.objects.for_org(org).filter(pk=study.pk).update(legal_hold=still_held)
        audit_record(
            org=org,
            actor=actor,
            action="legal_hold.lifted",
            target=row,
            target_label=study.study_uid,
            details={"reason": text, "study": study.pk, "set_reason": row.reason},
        )
    return row
