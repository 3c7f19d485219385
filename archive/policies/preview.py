"""The preview of a policy: what its rules would move today, what they would trash, and the change
on this month's bill, priced by ``billing.pricing`` as the invoice will price it. Nothing is
saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
)
from archive.policies.sql import DaysStayed, move_rules, move_selection, trash_selection
from archive.policies.validate import rules_validate
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
) -> BillChange:
    """Price the changes marginally, as the invoice will, against this month's usage so far.

    Storage: the bytes that change tier are priced for the rest of the month in both tiers (the
    difference); what is already stored is projected to stay as it is. Transitions and early
    deletion are one-off charges. A plan's allowances and tiers are taken into account, after a
    plan change this month only the new plan's part of them.
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
    quote = marginal_cost(org=org, at=now, uses=[use for use, _ in uses])
    return BillChange(
        currency=quote.currency,
        plan_name=quote.plan_name,
        month_start=start,
        month_end=end,
        remaining_hours=Decimal(remaining) / Decimal(3600),
        lines=[
            BillLine(
                label=label,
                meter=cost.use.meter,
                tier=cost.use.tier,
                quantity=cost.quantity,
                unit=cost.unit,
                amount=cost.amount,
            )
            for (_, label), cost in zip(uses, quote.costs, strict=True)
        ],
    )


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
        bill=_bill_change(
            org=org,
            now=now,
            storage_delta=storage_delta,
            transitions=transitions,
            early_byte_days=early,
        ),
        rule_counts=rule_counts,
    )
