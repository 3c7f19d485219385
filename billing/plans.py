"""The rate card of an organization: the plan that prices its usage now, each price as the
invoice applies it, and what changed when (its subscriptions, oldest first). Pure reads.

Prices read as the invoice lines show them (``billing.reports``): a rate per billing unit, counts
billed per thousand as ``0.40 / 1,000 requests``, tiers as ``up to 5``, ``over 5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.invoicing import default_plan, plan_in_force
from billing.meters import METERS, TIERS, shown_quantity
from billing.models import PlanPrice, PricePlan, Subscription
from billing.pricing import parse_tiers
from tenants.errors import ValidationFailed
from tenants.labels import money_label, quantity_label, rate_label
from tenants.models import Organization


@dataclass(frozen=True)
class PriceRow:
    """One price of a plan: ``prices`` has one rate, or one entry per tier of a tiered price."""

    meter: str
    description: str
    tier: str  # "" : every tier (or a meter without tiers)
    model: str
    model_label: str
    unit: str
    prices: list[str]
    included: str  # the allowance, e.g. ``10 GiB-month``; "" for none
    price: PlanPrice


@dataclass(frozen=True)
class PlanPeriod:
    """A subscription: the plan from ``starts_at`` until ``ends_at`` (open: None), and what it
    changed from the plan before it."""

    plan: PricePlan
    starts_at: datetime
    ends_at: datetime | None
    changes: list[str]


@dataclass(frozen=True)
class RateCard:
    plan: PricePlan | None
    # True when no subscription is in force and the platform's default plan prices the usage.
    is_default: bool
    prices: list[PriceRow]
    minimum: str  # the monthly minimum commitment, e.g. ``500.00 USD``; "" for none
    history: list[PlanPeriod]
    as_of: datetime


def _bound(unit: str, value: Decimal) -> str:
    """A quantity as a rate card states it: a whole number without decimals (``1,024``), a
    fraction to the unit's places (``0.500``)."""
    shown = shown_quantity(unit, value)
    whole = shown.value == shown.value.to_integral_value()
    return quantity_label(shown.value, 0 if whole else shown.places)


def _amount(unit: str, value: Decimal) -> str:
    return f"{_bound(unit, value)} {shown_quantity(unit, value).unit}"


def price_texts(pp: PlanPrice) -> list[str]:
    """How a price reads: ``0.023 / GiB-month``; per tier ``up to 5: 0.05 / GiB-month``."""
    unit = METERS[pp.meter].billing_unit if pp.meter in METERS else ""
    per = shown_quantity(unit, Decimal(1)).per if unit else ""
    if pp.model == PlanPrice.Model.PACKAGE:
        return [f"{rate_label(pp.package_price)} per {_amount(unit, pp.package_size)} started"]
    if pp.model == PlanPrice.Model.PER_UNIT:
        return [f"{rate_label(pp.unit_price)} / {per}"]
    try:
        tiers = parse_tiers(pp.tiers)
    except ValidationFailed:
        return ["tiers not valid"]
    texts: list[str] = []
    lower = Decimal(0)
    volume = pp.model == PlanPrice.Model.VOLUME
    for up_to, unit_price, flat in tiers:
        if up_to is None:
            scope = f"over {_bound(unit, lower)}" if lower else "any quantity"
        elif not lower:
            scope = f"up to {_bound(unit, up_to)}"
        else:
            scope = f"{_bound(unit, lower)}–{_bound(unit, up_to)}"
        text = f"{scope}: {rate_label(unit_price)} / {per}{' on all of it' if volume else ''}"
        if flat:
            text += f" + {rate_label(flat)} flat"
        texts.append(text)
        lower = up_to if up_to is not None else lower
    return texts


def price_rows(plan: PricePlan) -> list[PriceRow]:
    """The plan's prices in the order of the meter catalog, then of the tiers."""
    meter_order = {key: i for i, key in enumerate(METERS)}
    tier_order = {tier: i for i, tier in enumerate(TIERS)}
    prices = sorted(
        plan.prices.all(),
        key=lambda pp: (meter_order.get(pp.meter, len(METERS)), tier_order.get(pp.tier, -1)),
    )
    own_tier = {pp.meter for pp in prices if pp.tier}
    rows = []
    for pp in prices:
        meter = METERS.get(pp.meter)
        unit = meter.billing_unit if meter else ""
        label = meter.label if meter else pp.meter
        if pp.tier:
            description = f"{label} ({pp.tier})"
        elif meter is not None and meter.by_tier:
            # A tier-less price of a tiered meter applies to the tiers without their own.
            description = f"{label} ({'other' if pp.meter in own_tier else 'every'} tier)"
        else:
            description = label
        rows.append(
            PriceRow(
                meter=pp.meter,
                description=description,
                tier=pp.tier,
                model=pp.model,
                model_label=PlanPrice.Model(pp.model).label,
                unit=unit,
                prices=price_texts(pp),
                included=_amount(unit, pp.included_quantity) if pp.included_quantity else "",
                price=pp,
            )
        )
    return rows


def _summary(plan: PricePlan) -> dict[str, str]:
    """What a plan charges, per price and for the minimum, as text to compare plans by."""
    out = {}
    for row in price_rows(plan):
        text = "; ".join(row.prices)
        out[row.description] = f"{text}, {row.included} included" if row.included else text
    out["Monthly minimum"] = (
        money_label(plan.monthly_minimum, plan.currency) if plan.monthly_minimum else "none"
    )
    return out


def plan_changes(before: PricePlan | None, after: PricePlan) -> list[str]:
    """What moving from ``before`` to ``after`` changed: ``Egress: 0.09 / GiB → 0.05 / GiB``."""
    if before is None:
        return [f"Started on {after.name}."]
    if before.pk == after.pk:
        return [f"Renewed on {after.name}, prices unchanged."]
    old, new = _summary(before), _summary(after)
    changes = [f"Plan {before.name} → {after.name}."]
    if before.currency != after.currency:
        changes.append(f"Currency {before.currency} → {after.currency}.")
    for key in [*old, *(k for k in new if k not in old)]:
        if key not in new:
            changes.append(f"{key}: {old[key]} → no longer charged")
        elif key not in old:
            changes.append(f"{key}: not charged → {new[key]}")
        elif old[key] != new[key]:
            changes.append(f"{key}: {old[key]} → {new[key]}")
    return changes


def rate_card(*, org: Organization, now: datetime) -> RateCard:
    """The rate card of ``org`` at ``now`` (see the module docstring)."""
    subscriptions = list(
        Subscription.objects.for_org(org)
        .select_related("plan")
        .prefetch_related("plan__prices")
        .order_by("starts_at", "id")
    )
    history = []
    previous: PricePlan | None = None
    for sub in subscriptions:
        history.append(
            PlanPeriod(
                plan=sub.plan,
                starts_at=sub.starts_at,
                ends_at=sub.ends_at,
                changes=plan_changes(previous, sub.plan),
            )
        )
        previous = sub.plan
    plan = plan_in_force(org=org, at=now)
    in_force = any(
        s.starts_at <= now and (s.ends_at is None or now < s.ends_at) for s in subscriptions
    )
    fallback = default_plan()
    return RateCard(
        plan=plan,
        is_default=not in_force and plan is not None and fallback is not None,
        prices=price_rows(plan) if plan is not None else [],
        minimum=(
            money_label(plan.monthly_minimum, plan.currency)
            if plan is not None and plan.monthly_minimum
            else ""
        ),
        history=history,
        as_of=now,
    )
