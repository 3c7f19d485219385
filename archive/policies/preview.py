"""The preview of a policy: what its rules would move today, what they would trash, and the change
on this month's bill, priced by ``billing.pricing`` as the invoice will price it. Nothing is
saved.

A prefetch rule adds the restores it is expected to start to the end of the month (one bill line,
``restore.bytes``), estimated by replaying it: for the studies that arrived in the last
``PREFETCH_WINDOW_DAYS`` days (the most recent ``PREFETCH_SAMPLE`` of them), the priors the rule
would have named when each arrived (the patient's studies that had arrived before it) and their
bytes in the archive tier today give the archive bytes a new study brings back on average; times
the arrival rate (studies per 30 days over the window), prorated to what is left of the month.
The line is at most what the monthly cap leaves this month. Honest limits: the tiers are today's
(a prior archived since is counted as archived then), a copy still readable is counted as
needing a restore, and orders posted by integrations are not counted (they leave no trace in the
index before their study arrives).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    DateTimeField,
    F,
    Q,
    Sum,
    Value,
    When,
)
from django.db.models.functions import (
    Coalesce,
)
from django.utils import timezone

from archive.index.selectors import bytes_by_tier
from archive.models import (
    PolicyVersion,
    Series,
    Study,
)
from archive.policies.sql import DaysStayed, move_rules, move_selection, trash_selection
from archive.policies.validate import rules_validate
from archive.restores.selectors import (
    RESTORE_METER,
    PrefetchRule,
    prefetch_month_cost,
    prefetch_priors,
    prefetch_rule_parse,
    restore_pending_bytes,
)
from archive.storage.tiers import TIER_CATALOG
from billing.pricing import MeterUse, marginal_cost, month_bounds, round_money
from tenants.errors import NotFound
from tenants.models import Organization


@dataclass(frozen=True)
class TargetPreview:
    """What moves into one tier: instances, distinct studies, bytes, and from which tiers."""

    tier: str
    instances: int
    studies: int
    bytes: int
    from_tiers: dict[str, dict[str, int]]  # from tier -> {"instances", "bytes"}


@dataclass(frozen=True)
class BillLine:
    label: str
    meter: str
    tier: str
    quantity: Decimal  # in the meter's billing unit (GiB-months, 1,000 transitions, GiB-days)
    unit: str
    amount: Decimal | None  # None: the plan does not price it


@dataclass(frozen=True)
class BillChange:
    """The change on this month's bill if the moves happened now (to the end of the month)."""

    currency: str
    plan_name: str
    month_start: datetime
    month_end: datetime
    remaining_hours: Decimal
    lines: list[BillLine]

    @property
    def total(self) -> Decimal:
        return round_money(sum((ln.amount or Decimal(0) for ln in self.lines), Decimal(0)))


# The prefetch estimate replays the arrivals of this many days, at most this many of them.
PREFETCH_WINDOW_DAYS = 90
PREFETCH_SAMPLE = 100


@dataclass(frozen=True)
class PrefetchPreview:
    """What the prefetch rule is expected to restore (see the module docstring)."""

    arrivals: int  # studies that arrived in the window
    sampled: int  # the most recent of them, replayed
    bytes_per_arrival: int  # archive-tier bytes of the priors named, on average
    bytes_per_month: int  # per 30 days at the window's arrival rate
    rest_of_month_bytes: int  # prorated to what is left of this month (the bill line)
    monthly_cap: Decimal
    month_cost: Decimal  # this month's prefetch cost so far
    capped: bool  # the bill line is cut to what the cap leaves


@dataclass(frozen=True)
class PolicyPreview:
    now: datetime
    rules: list[dict[str, Any]]
    targets: list[TargetPreview]
    instances: int
    studies: int
    bytes: int
    # Byte-days charged because objects leave a tier before its minimum storage duration.
    early_deletion_byte_days: dict[str, int]
    trash_studies: int
    trash_bytes: int
    held_studies: int
    held_bytes: int
    bill: BillChange
    rule_counts: dict[int, dict[str, int]] = field(default_factory=dict)
    prefetch: PrefetchPreview | None = None


def prefetch_estimate(
    *, org: Organization, rule: PrefetchRule, now: datetime
) -> tuple[int, int, int, int]:
    """(arrivals, sampled, bytes per arrival, bytes per 30 days): the rule replayed on the
    studies that arrived in the last ``PREFETCH_WINDOW_DAYS`` days. The cost simulator
    (``archive.analytics.simulator``) projects its months from the same estimate."""
    window = Study.objects.for_org(org).filter(
        created_at__gte=now - timedelta(days=PREFETCH_WINDOW_DAYS), created_at__lt=now
    )
    arrivals = window.count()
    sample = list(
        window.order_by("-created_at", "-pk").only("pk", "patient_id", "modalities", "created_at")[
            :PREFETCH_SAMPLE
        ]
    )
    if not sample:
        return 0, 0, 0, 0
    parts: dict[int, list[str]] = {}
    for study_id, part in (
        Series.objects.for_org(org)
        .filter(study_id__in=[s.pk for s in sample])
        .exclude(body_part="")
        .values_list("study_id", "body_part")
    ):
        parts.setdefault(study_id, []).append(part)
    restored = 0
    for arrival in sample:
        priors = prefetch_priors(
            org=org,
            rule=rule,
            patient_id=arrival.patient_id,
            modalities=arrival.modality_list,
            body_parts=parts.get(arrival.pk, []),
            exclude_study_id=arrival.pk,
            now=arrival.created_at,
            arrived_before=arrival.created_at,
        )
        restored += sum(p.bytes_archive for p in priors)
    per_arrival = restored // len(sample)
    per_month = per_arrival * arrivals * 30 // PREFETCH_WINDOW_DAYS
    return arrivals, len(sample), per_arrival, per_month


def _prefetch_preview(
    *, org: Organization, rules: list[dict[str, Any]], now: datetime
) -> PrefetchPreview | None:
    rule = next((r for r in map(prefetch_rule_parse, rules) if r is not None), None)
    if rule is None:
        return None
    arrivals, sampled, per_arrival, per_month = prefetch_estimate(org=org, rule=rule, now=now)
    start, end = month_bounds(now)
    left = Decimal((end - now).total_seconds()) / Decimal((end - start).total_seconds())
    return PrefetchPreview(
        arrivals=arrivals,
        sampled=sampled,
        bytes_per_arrival=per_arrival,
        bytes_per_month=per_month,
        rest_of_month_bytes=int(per_month * left),
        monthly_cap=rule.monthly_cap,
        month_cost=prefetch_month_cost(org=org, now=now),
        capped=False,
    )


def _move_aggregates(
    *, org: Organization, rules: list[dict[str, Any]], now: datetime
) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """GROUP BY (rule, from tier) and the distinct studies per target tier, in SQL."""
    if not move_rules(rules):
        return [], {}, 0
    selection = move_selection(org=org, rules=rules, now=now)
    since = Coalesce(F("tier_changed_at"), F("received_at"))
    early_whens = []
    for tier, spec in TIER_CATALOG.items():
        m = spec.minimum_storage_days
        if m == 0:
            continue
        early_whens.append(
            When(
                Q(tier=tier, policy_since__gt=now - timedelta(days=m)),
                then=F("size_bytes")
                * (Value(m) - DaysStayed(Value(now, output_field=DateTimeField()), since)),
            )
        )
    grouped = (
        selection.alias(policy_since=since)
        .values("rule_index", "tier")
        .annotate(
            n=Count("id"),
            total=Sum("size_bytes"),
            early=Sum(Case(*early_whens, default=Value(0), output_field=BigIntegerField())),
        )
        .order_by()
    )
    rows = [dict(row) for row in grouped]
    by_target: dict[str, list[int]] = {}
    for i, rule in move_rules(rules):
        by_target.setdefault(rule["action"]["tier"], []).append(i)
    studies = selection.aggregate(
        all=Count("study_id", distinct=True),
        **{
            f"t_{tier}": Count("study_id", distinct=True, filter=Q(rule_index__in=indices))
            for tier, indices in by_target.items()
        },
    )
    per_target = {tier: int(studies[f"t_{tier}"] or 0) for tier in by_target}
    return rows, per_target, int(studies["all"] or 0)


def _bill_change(
    *,
    org: Organization,
    now: datetime,
    storage_delta: dict[str, int],
    transitions: dict[str, int],
    early_byte_days: dict[str, int],
    prefetch: PrefetchPreview | None = None,
) -> tuple[BillChange, PrefetchPreview | None]:
    """Price the changes marginally, as the invoice will, against this month's usage so far.

    Storage: the bytes that change tier are priced for the rest of the month in both tiers (the
    difference); what is already stored is projected to stay as it is. Transitions and early
    deletion are one-off charges. A plan's allowances and tiers are taken into account, after a
    plan change this month only the new plan's part of them. The prefetch line (restores, on
    top of those open restores will meter) is cut to what the monthly cap leaves.
    """
    start, end = month_bounds(now)
    remaining = int((end - now).total_seconds())
    balance = bytes_by_tier(org=org)
    uses: list[tuple[MeterUse, str]] = []
    for tier in TIER_CATALOG:
        if storage_delta.get(tier):
            # Byte-seconds to the month's end, on top of what is stored staying as it is.
            use = MeterUse(
                "storage",
                storage_delta[tier] * remaining,
                tier=tier,
                projected=balance[tier] * remaining,
            )
            uses.append((use, f"Storage ({tier})"))
    for tier, count in transitions.items():
        if count:
            uses.append((MeterUse("tier.transitions", count, tier=tier), f"Transitions to {tier}"))
    for tier, byte_days in early_byte_days.items():
        if byte_days:
            uses.append(
                (MeterUse("early_deletion", byte_days, tier=tier), f"Early deletion ({tier})")
            )
    if prefetch is not None and prefetch.rest_of_month_bytes:
        use = MeterUse(
            RESTORE_METER,
            prefetch.rest_of_month_bytes,
            projected=restore_pending_bytes(org=org),
        )
        uses.append((use, "Prefetch restores (expected to the month's end)"))
    quote = marginal_cost(org=org, at=now, uses=[use for use, _ in uses])
    lines = []
    for (use, label), cost in zip(uses, quote.costs, strict=True):
        amount = cost.amount
        if prefetch is not None and use.meter == RESTORE_METER and amount is not None:
            room = max(prefetch.monthly_cap - prefetch.month_cost, Decimal(0))
            if amount > room:
                amount = room
                label = f"{label}, cut to the monthly cap"
                prefetch = replace(prefetch, capped=True)
        lines.append(
            BillLine(
                label=label,
                meter=cost.use.meter,
                tier=cost.use.tier,
                quantity=cost.quantity,
                unit=cost.unit,
                amount=amount,
            )
        )
    bill = BillChange(
        currency=quote.currency,
        plan_name=quote.plan_name,
        month_start=start,
        month_end=end,
        remaining_hours=Decimal(remaining) / Decimal(3600),
        lines=lines,
    )
    return bill, prefetch


def policy_preview(
    *,
    org: Organization,
    rules: Any = None,
    version: PolicyVersion | None = None,
    now: datetime | None = None,
) -> PolicyPreview:
    """What the rules (or a saved version) would do today, and what it changes on this month's bill.

    Everything is aggregated in SQL (GROUP BY rule and source tier); nothing iterates instances.
    Raises ValidationFailed for invalid rules, like saving them would.
    """
    now = now or timezone.now()
    if version is not None:
        if version.organization_id != org.pk:
            raise NotFound("Policy version not found.")
        rules = version.rules
    normalized = rules_validate(org=org, rules=rules if rules is not None else [])
    rows, studies_per_target, studies_total = _move_aggregates(org=org, rules=normalized, now=now)

    target_of = {i: r["action"]["tier"] for i, r in move_rules(normalized)}
    moved: dict[str, dict[str, dict[str, int]]] = {}
    storage_delta: dict[str, int] = {}
    transitions: dict[str, int] = {}
    early: dict[str, int] = {}
    rule_counts: dict[int, dict[str, int]] = {}
    for row in rows:
        to_tier, from_tier = target_of[row["rule_index"]], row["tier"]
        n, size, owed = int(row["n"]), int(row["total"] or 0), int(row["early"] or 0)
        cell = moved.setdefault(to_tier, {}).setdefault(from_tier, {"instances": 0, "bytes": 0})
        cell["instances"] += n
        cell["bytes"] += size
        storage_delta[to_tier] = storage_delta.get(to_tier, 0) + size
        storage_delta[from_tier] = storage_delta.get(from_tier, 0) - size
        transitions[to_tier] = transitions.get(to_tier, 0) + n
        if owed:
            early[from_tier] = early.get(from_tier, 0) + owed
        counts = rule_counts.setdefault(row["rule_index"], {"instances": 0, "bytes": 0})
        counts["instances"] += n
        counts["bytes"] += size

    targets = [
        TargetPreview(
            tier=tier,
            instances=sum(c["instances"] for c in moved[tier].values()),
            studies=studies_per_target.get(tier, 0),
            bytes=sum(c["bytes"] for c in moved[tier].values()),
            from_tiers=moved[tier],
        )
        for tier in TIER_CATALOG
        if tier in moved
    ]
    trash = trash_selection(org=org, rules=normalized, now=now).aggregate(
        n=Count("id"), total=Sum("total_bytes")
    )
    held = trash_selection(org=org, rules=normalized, now=now, held=True).aggregate(
        n=Count("id"), total=Sum("total_bytes")
    )
    bill, prefetch = _bill_change(
        org=org,
        now=now,
        storage_delta=storage_delta,
        transitions=transitions,
        early_byte_days=early,
        prefetch=_prefetch_preview(org=org, rules=normalized, now=now),
    )
    return PolicyPreview(
        now=now,
        rules=normalized,
        targets=targets,
        instances=sum(t.instances for t in targets),
        studies=studies_total,
        bytes=sum(t.bytes for t in targets),
        early_deletion_byte_days=early,
        trash_studies=int(trash["n"] or 0),
        trash_bytes=int(trash["total"] or 0),
        held_studies=int(held["n"] or 0),
        held_bytes=int(held["total"] or 0),
        bill=bill,
        rule_counts=rule_counts,
        prefetch=prefetch,
    )
