"""Reads of restores: what an instance needs, how long a restore takes, what a bulk restore
would cost, the organization's restores, and for prefetching its prefetch rule, a patient's
priors and this month's prefetch cost. Writes are in ``archive.restores.services``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Upper
from django.utils import timezone

from archive.index.selectors import archive_settings_get
from archive.locations.selectors import location_primary
from archive.models import Instance, RestoreItem, RestoreRequest, Series, Study
from archive.storage.tiers import TIER_CATALOG
from billing.pricing import MeterUse, marginal_cost, month_bounds
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization

logger = logging.getLogger(__name__)

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


def restore_wait_seconds(
    org: Organization, *, requested_at: datetime | None = None, now: datetime | None = None
) -> int:
    """Seconds until a restore's images are expected readable: what is left of the typical delay
    after ``requested_at`` (all of it for a restore not started yet), plus one poll interval (a
    copy is readable once the beat job has seen it). The one estimate every page, API answer and
    Retry-After header gives, so that the figure shown before a restore starts is the one shown
    once it has."""
    now = now or timezone.now()
    elapsed = int((now - requested_at).total_seconds()) if requested_at is not None else 0
    typical = typical_seconds(platform_filesystem=platform_filesystem(org))
    return max(typical - elapsed, 0) + POLL_SECONDS


def retry_after_seconds(restore: RestoreRequest, *, now: datetime | None = None) -> int:
    """Seconds a client should wait before reading again (``restore_wait_seconds``)."""
    return restore_wait_seconds(restore.organization, requested_at=restore.requested_at, now=now)


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
        typical_seconds=restore_wait_seconds(org, now=now),
        days=archive_settings_get(org=org).restore_days,
    )


@dataclass(frozen=True)
class MeterPrice:
    amount: Decimal | None
    currency: str
    plan_name: str
    rate: str


def meter_price(*, org: Organization, meter: str, quantity: int, projected: int = 0) -> MeterPrice:
    """The marginal charge of ``quantity`` more base units of ``meter`` now, as the invoice will
    price it on the plan in force, counting this month's usage so far (allowances and tiers)
    and ``projected`` units the month will have anyway but that are not recorded yet."""
    quote = marginal_cost(
        org=org, at=timezone.now(), uses=[MeterUse(meter, quantity, projected=projected)]
    )
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


# --- prefetch ----------------------------------------------------------------------------------

# The rule kind of ``archive.policies.validate`` (the policy's prefetch rule).
PREFETCH_ACTION = "prefetch"


@dataclass(frozen=True)
class PrefetchRule:
    """The active policy's prefetch rule (validated when the policy was saved)."""

    same_modality: bool
    same_body_part: bool
    last_studies: int | None
    within_years: int | None
    keep_days: int
    monthly_cap: Decimal
    name: str = ""


def prefetch_rule_parse(rule: Any) -> PrefetchRule | None:
    """A stored prefetch rule as ``PrefetchRule``; None when ``rule`` is not one (or is broken)."""
    if not isinstance(rule, dict):
        return None
    action, conditions = rule.get("action"), rule.get("conditions")
    if not isinstance(action, dict) or action.get("type") != PREFETCH_ACTION:
        return None
    if not isinstance(conditions, dict):
        return None
    try:
        return PrefetchRule(
            same_modality=conditions.get("same_modality") is True,
            same_body_part=conditions.get("same_body_part") is True,
            last_studies=int(conditions["last_studies"]) if "last_studies" in conditions else None,
            within_years=int(conditions["within_years"]) if "within_years" in conditions else None,
            keep_days=int(action["keep_days"]),
            monthly_cap=Decimal(str(action["monthly_cap"])),
            name=str(rule.get("name", "")),
        )
    except (KeyError, TypeError, ValueError, InvalidOperation):
        logger.warning("ignoring a malformed prefetch rule: %r", rule)
        return None


def prefetch_rule(*, org: Organization) -> PrefetchRule | None:
    """The prefetch rule of the organization's active policy; None when there is none."""
    policy = archive_settings_get(org=org).active_policy
    if policy is None:
        return None
    for rule in policy.rules or []:
        parsed = prefetch_rule_parse(rule)
        if parsed is not None:
            return parsed
    return None


def study_body_parts(*, org: Organization, study: Study) -> list[str]:
    """The body parts (BodyPartExamined of its series, upper case) of a study."""
    return sorted(
        {
            part.strip().upper()
            for part in Series.objects.for_org(org)
            .filter(study=study)
            .values_list("body_part", flat=True)
            if part and part.strip()
        }
    )


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def prefetch_priors(
    *,
    org: Organization,
    rule: PrefetchRule,
    patient_id: str,
    modalities: Iterable[str] = (),
    body_parts: Iterable[str] = (),
    exclude_study_id: int | None = None,
    now: datetime | None = None,
    arrived_before: datetime | None = None,
) -> list[Study]:
    """The patient's priors the rule names, most recent first (study date, then arrival).

    Priors are the patient's other studies (not in the trash): with ``same_modality`` those
    sharing a modality with ``modalities``, with ``same_body_part`` those with a series of one of
    ``body_parts`` (BodyPartExamined, case-insensitive); a condition whose values the trigger
    does not carry (no modality or body part known) is not applied. ``within_years``: dated
    within that many years of today (a study without a date does not match); ``last_studies``:
    the N most recent of those. No patient ID: no priors (an empty ID names no patient).
    ``arrived_before``: only studies that arrived before then (the preview replays past
    arrivals with it).
    """
    patient_id = (patient_id or "").strip()
    if not patient_id:
        return []
    now = now or timezone.now()
    qs = Study.objects.for_org(org).filter(patient_id=patient_id, trashed_at__isnull=True)
    if exclude_study_id is not None:
        qs = qs.exclude(pk=exclude_study_id)
    if arrived_before is not None:
        qs = qs.filter(created_at__lt=arrived_before)
    wanted_modalities = sorted({m.strip().upper() for m in modalities if m and m.strip()})
    if rule.same_modality and wanted_modalities:
        match = Q()
        for modality in wanted_modalities:
            match |= Q(modalities__contains=f"\\{modality}\\")
        qs = qs.filter(match)
    wanted_parts = sorted({p.strip().upper() for p in body_parts if p and p.strip()})
    if rule.same_body_part and wanted_parts:
        parts = (
            Series.objects.for_org(org)
            .annotate(part=Upper("body_part"))
            .filter(study=OuterRef("pk"), part__in=wanted_parts)
        )
        qs = qs.filter(Exists(parts))
    if rule.within_years is not None:
        qs = qs.filter(study_date__gte=_years_before(now.date(), rule.within_years))
    qs = qs.order_by(F("study_date").desc(nulls_last=True), "-created_at", "-pk")
    if rule.last_studies is not None:
        return list(qs[: rule.last_studies])
    return list(qs)


def prefetch_instances(
    *, org: Organization, studies: list[Study], now: datetime
) -> QuerySet[Instance]:
    """The instances of ``studies`` that cannot be read now (archive tier, no readable copy)."""
    return (
        Instance.objects.for_org(org)
        .filter(study__in=[s.pk for s in studies])
        .filter(unreadable_q(now))
        .order_by("id")
    )


def prefetch_month_cost(*, org: Organization, now: datetime | None = None) -> Decimal:
    """This month's prefetch cost so far: the estimates of the prefetches opened this month."""
    start, end = month_bounds(now or timezone.now())
    total = (
        RestoreRequest.objects.for_org(org)
        .filter(
            origin=RestoreRequest.Origin.PREFETCH,
            requested_at__gte=start,
            requested_at__lt=end,
        )
        .aggregate(total=Sum("estimated_cost"))["total"]
    )
    return Decimal(total or 0).quantize(Decimal("0.000001"))


def restore_pending_bytes(*, org: Organization) -> int:
    """Archive-tier bytes that open restores will meter once ready (not recorded yet)."""
    restore_tiers = [t.key for t in TIER_CATALOG.values() if t.needs_restore]
    total = (
        RestoreItem.objects.for_org(org)
        .filter(
            ready_at__isnull=True,
            restore__state=RestoreRequest.State.IN_PROGRESS,
            instance__tier__in=restore_tiers,
        )
        .aggregate(total=Sum("instance__size_bytes"))["total"]
    )
    return int(total or 0)


@dataclass(frozen=True)
class PrefetchSummary:
    """The prefetch rule in force and this month's prefetches (the restores page shows it)."""

    rule: PrefetchRule
    month_cost: Decimal
    count: int
    currency: str


def prefetch_summary(*, org: Organization, now: datetime | None = None) -> PrefetchSummary | None:
    """None when the active policy has no prefetch rule."""
    rule = prefetch_rule(org=org)
    if rule is None:
        return None
    now = now or timezone.now()
    start, end = month_bounds(now)
    count = (
        RestoreRequest.objects.for_org(org)
        .filter(
            origin=RestoreRequest.Origin.PREFETCH, requested_at__gte=start, requested_at__lt=end
        )
        .count()
    )
    currency = meter_price(org=org, meter=RESTORE_METER, quantity=0).currency
    return PrefetchSummary(
        rule=rule, month_cost=prefetch_month_cost(org=org, now=now), count=count, currency=currency
    )
