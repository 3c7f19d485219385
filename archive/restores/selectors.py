"""Reads of restores: what an instance needs, how long a restore takes, what a bulk restore
would cost, and the organization's restores. Writes are in ``archive.restores.services``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from archive.index.selectors import archive_settings_get
from archive.locations.selectors import location_primary
from archive.models import Instance, RestoreItem, RestoreRequest, Study
from archive.storage.tiers import TIER_CATALOG
from billing.pricing import MeterUse, marginal_cost
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization

RESTORE_METER = "restore.bytes"
# The beat job runs every minute: a copy that became ready is readable at most this much later.
POLL_SECONDS = 60


def needs_restore(instance: Instance, *, now: datetime | None = None) -> bool:
    """True when the instance sits in a tier that cannot be read and has no readable copy now."""
    if not TIER_CATALOG[instance.tier].needs_restore:
        return False
    now = now or timezone.now()
    return instance.restored_until is None or instance.restored_until <= now


def unreadable_q(now: datetime) -> Q:
    restore_tiers = [t.key for t in TIER_CATALOG.values() if t.needs_restore]
    return Q(tier__in=restore_tiers) & (Q(restored_until__isnull=True) | Q(restored_until__lte=now))


def typical_seconds(*, platform_filesystem: bool) -> int:
    """How long a restore typically takes: the simulated delay on the filesystem backend, the
    catalog's figure (Deep Archive standard retrieval) on S3."""
    if platform_filesystem:
        return int(settings.ARCHIVE_FS_RESTORE_SECONDS)
    return TIER_CATALOG["archive"].restore_hours * 3600


def platform_filesystem(org: Organization) -> bool:
    return location_primary(org).kind == "platform" and settings.ARCHIVE_BACKEND != "s3"


def retry_after_seconds(restore: RestoreRequest, *, now: datetime | None = None) -> int:
    """Seconds a client should wait before reading again: what is left of the typical delay,
    plus one poll interval (the copy is readable once the beat job has seen it)."""
    now = now or timezone.now()
    typical = typical_seconds(platform_filesystem=platform_filesystem(restore.organization))
    left = typical - int((now - restore.requested_at).total_seconds())
    return max(left, 0) + POLL_SECONDS


def bulk_instances(
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
    qs = bulk_instances(org=org, study=study, patient_id=patient_id)
    unreadable = qs.filter(unreadable_q(now))
    open_ids = RestoreItem.objects.for_org(org).filter(
        ready_at__isnull=True, restore__state=RestoreRequest.State.IN_PROGRESS
    )
    in_progress = unreadable.filter(pk__in=open_ids.values("instance_id"))
    todo = unreadable.exclude(pk__in=open_ids.values("instance_id")).aggregate(
        n=Count("id"), size=Sum("size_bytes")
    )
    n, size = int(todo["n"] or 0), int(todo["size"] or 0)
    readable = qs.filter(tier="archive").exclude(unreadable_q(now)).count()
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
        typical_seconds=typical_seconds(platform_filesystem=platform_filesystem(org)),
        days=archive_settings_get(org=org).restore_days,
    )


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
    unreadable = archived.filter(unreadable_q(now))
    in_progress = unreadable.filter(
        pk__in=RestoreItem.objects.for_org(org)
        .filter(ready_at__isnull=True, restore__state=RestoreRequest.State.IN_PROGRESS)
        .values("instance_id")
    ).count()
    total_unreadable = unreadable.count()
    return {
        "archived": archived.count(),
        "restored": archived.exclude(unreadable_q(now)).count(),
        "in_progress": in_progress,
        "needing": total_unreadable - in_progress,
    }
