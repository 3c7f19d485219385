"""Pricing models: turn a quantity in billing units into an amount, exactly.

All four models first subtract the included (free) allowance:

- per_unit:  billable x unit_price
- graduated: each tier's slice priced at its own unit price (+ its flat fee once reached)
- volume:    the whole billable quantity at the unit price of the tier it falls in (+ that tier's
             flat fee)
- package:   ceil(billable / package_size) x package_price

Amounts stay unrounded Decimals here; the invoice rounds each line once (half-up to the cent).

``marginal_cost`` is how other apps read prices: what some more usage adds to this month's
invoice, computed by the invoice itself (see its docstring). ``plan_prices`` gives the prices of
the plan in force (the cost simulator prices whole simulated months with them), and the meters
(``METERS``, ``GIB``) and month boundaries are re-exported here so that other apps read billing
through this module and ``billing.metering`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from billing.meters import GIB, METERS, billing_quantity
from billing.periods import hours_between, month_bounds, month_start, next_month
from billing.selectors import usage_totals
from tenants.errors import ValidationFailed
from tenants.models import Organization

__all__ = [
    "CENT",
    "GIB",
    "METERS",
    "MarginalCost",
    "MeterCost",
    "MeterUse",
    "PriceSpec",
    "marginal_cost",
    "month_bounds",
    "month_start",
    "next_month",
    "parse_tiers",
    "PlanPrices",
    "plan_prices",
    "price",
    "round_money",
]

CENT = Decimal("0.01")


def round_money(amount: Decimal) -> Decimal:
    """The one rounding step: half-up to the cent, applied per invoice line."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class PriceSpec:
    model: str
    unit_price: Decimal = Decimal(0)
    tiers: tuple[tuple[Decimal | None, Decimal, Decimal], ...] = ()  # (up_to, unit_price, flat_fee)
    package_size: Decimal = Decimal(1)
    package_price: Decimal = Decimal(0)
    included: Decimal = Decimal(0)


def parse_tiers(raw: list[dict[str, Any]]) -> tuple[tuple[Decimal | None, Decimal, Decimal], ...]:
    """Validate graduated/volume tiers: ascending ``up_to``, the last one open (``null``)."""
    out: list[tuple[Decimal | None, Decimal, Decimal]] = []
    previous = Decimal(0)
    for i, tier in enumerate(raw or []):
        try:
            up_to = None if tier.get("up_to") in (None, "", "inf") else Decimal(str(tier["up_to"]))
            price = Decimal(str(tier.get("unit_price", "0")))
            flat = Decimal(str(tier.get("flat_fee", "0")))
        except (ArithmeticError, AttributeError, TypeError, ValueError):
            raise ValidationFailed(
                "Invalid tier.", fields={"tiers": [f"Tier {i + 1} has a non-numeric value."]}
            ) from None
        if price < 0 or flat < 0:
            raise ValidationFailed(
                "Invalid tier.", fields={"tiers": [f"Tier {i + 1} has a negative price."]}
            )
        if up_to is not None and up_to <= previous:
            raise ValidationFailed(
                "Invalid tiers.", fields={"tiers": ["'up_to' must increase from tier to tier."]}
            )
        if up_to is None and i != len(raw) - 1:
            raise ValidationFailed(
                "Invalid tiers.", fields={"tiers": ["Only the last tier may be open-ended."]}
            )
        out.append((up_to, price, flat))
        previous = up_to if up_to is not None else previous
    if out and out[-1][0] is not None:
        raise ValidationFailed(
            "Invalid tiers.", fields={"tiers": ["The last tier must be open-ended (up_to null)."]}
        )
    return tuple(out)


def price(
    spec: PriceSpec, quantity: Decimal, *, scale: Decimal = Decimal(1)
) -> tuple[Decimal, list[dict[str, str]]]:
    """Amount and breakdown for ``quantity``. ``scale`` prorates the allowance and tier bounds
    (a plan that covers part of the month gets that part of them)."""
    included = spec.included * scale
    billable = max(Decimal(0), quantity - included)
    breakdown: list[dict[str, str]] = []
    if included:
        breakdown.append(
            {"label": "included", "quantity": str(min(quantity, included)), "amount": "0"}
        )
    if spec.model == "per_unit":
        amount = billable * spec.unit_price
        breakdown.append(
            {
                "label": "per unit",
                "quantity": str(billable),
                "unit_price": str(spec.unit_price),
                "amount": str(amount),
            }
        )
        return amount, breakdown
    if spec.model == "package":
        size = spec.package_size if spec.package_size > 0 else Decimal(1)
        packages = (billable / size).to_integral_value(rounding=ROUND_CEILING)
        amount = packages * spec.package_price
        breakdown.append(
            {
                "label": f"{packages} package(s) of {size}",
                "quantity": str(billable),
                "unit_price": str(spec.package_price),
                "amount": str(amount),
            }
        )
        return amount, breakdown
    if spec.model == "graduated":
        amount = Decimal(0)
        lower = Decimal(0)
        for up_to, unit_price, flat in spec.tiers:
            upper = None if up_to is None else up_to * scale
            if billable <= lower:
                break
            slice_qty = billable - lower if upper is None else min(billable, upper) - lower
            slice_amount = slice_qty * unit_price + flat
            breakdown.append(
                {
                    "label": f"{lower}-{'' if upper is None else upper}",
                    "quantity": str(slice_qty),
                    "unit_price": str(unit_price),
                    "flat_fee": str(flat),
                    "amount": str(slice_amount),
                }
            )
            amount += slice_amount
            if upper is None:
                break
            lower = upper
        return amount, breakdown
    if spec.model == "volume":
        if billable <= 0:
            return Decimal(0), breakdown
        for up_to, unit_price, flat in spec.tiers:
            upper = None if up_to is None else up_to * scale
            if upper is None or billable <= upper:
                amount = billable * unit_price + flat
                breakdown.append(
                    {
                        "label": f"volume tier up to {'' if upper is None else upper}",
                        "quantity": str(billable),
                        "unit_price": str(unit_price),
                        "flat_fee": str(flat),
                        "amount": str(amount),
                    }
                )
                return amount, breakdown
        return Decimal(0), breakdown
    raise ValidationFailed(
        f"Unknown pricing model {spec.model!r}.", fields={"model": ["Unknown pricing model."]}
    )


# --- marginal cost: what more usage adds to the invoice ------------------------------------------


@dataclass(frozen=True)
class MeterUse:
    """``quantity`` more base units of ``meter`` (bytes, byte-seconds, counts) in ``tier``.

    ``projected``: base units the month will have anyway but that are not recorded yet (storage
    held to the month's end); the use is priced on top of them.
    """

    meter: str
    quantity: int
    tier: str = ""
    projected: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.meter, f"tier={self.tier}" if self.tier else ""


@dataclass(frozen=True)
class MeterCost:
    use: MeterUse
    quantity: Decimal  # the use in the meter's billing unit, as the invoice counts it
    unit: str
    # The rise of the invoice, unrounded; None when the plan in force does not price the meter.
    amount: Decimal | None
    spec: PriceSpec | None  # the price applied, as the plan states it (allowance unprorated)


@dataclass(frozen=True)
class MarginalCost:
    """What some uses at ``at`` add to the invoice of the month containing it."""

    at: datetime
    period_start: datetime
    period_end: datetime
    plan_name: str  # the plan in force at ``at``; "" when no plan applies
    currency: str
    costs: list[MeterCost]


def marginal_cost(*, org: Organization, at: datetime, uses: Sequence[MeterUse]) -> MarginalCost:
    """The rise of the draft invoice's unrounded amount if ``uses`` were recorded at ``at``.

    Computed by the invoice itself: the month's usage lines are priced twice, as recorded (plus
    ``projected``) and with each use added to the plan segment in force at ``at``, so a plan
    change in the month splits the usage and prorates allowances and tier bounds exactly as the
    invoice does. Each use's amount is its own line's rise, so uses must name distinct
    (meter, tier) lines. A plan's minimum commitment is a floor under the whole segment, not a
    price of a meter, and is left out.
    """
    # The invoice prices with this module: importing it at the top would be a cycle.
    from billing import invoicing

    keys = [use.key for use in uses]
    if len(set(keys)) != len(keys):
        raise ValueError("Each use must name a distinct (meter, tier).")
    start, end = month_bounds(at)
    month_hours = hours_between(start, end)
    plan = invoicing.plan_in_force(org=org, at=at)
    prices = {(pp.meter, pp.tier): pp for pp in plan.prices.all()} if plan is not None else {}
    recorded: dict[tuple[datetime, datetime], dict[tuple[str, str], int]] = {}

    def totals(added: bool) -> Callable[[datetime, datetime], dict[tuple[str, str], int]]:
        def by_segment(seg_start: datetime, seg_end: datetime) -> dict[tuple[str, str], int]:
            if (seg_start, seg_end) not in recorded:
                every = usage_totals(org=org, start=seg_start, end=seg_end)
                recorded[(seg_start, seg_end)] = {key: every.get(key, 0) for key in keys}
            out = dict(recorded[(seg_start, seg_end)])
            if seg_start <= at < seg_end:
                for use in uses:
                    out[use.key] += use.projected + (use.quantity if added else 0)
            return out

        return by_segment

    def amounts(added: bool) -> dict[tuple[str, str], Decimal]:
        lines, _ = invoicing.usage_lines(
            org=org, period_start=start, period_end=end, totals_by_segment=totals(added)
        )
        out: dict[tuple[str, str], Decimal] = {}
        for line in lines:
            if line.kind == "usage":
                key = (line.meter, line.dimension_key)
                out[key] = out.get(key, Decimal(0)) + line.unrounded_amount
        return out

    priced = [
        (use, None if plan is None else invoicing.plan_price(prices, use.meter, use.tier))
        for use in uses
    ]
    needed = any(pp is not None and use.quantity for use, pp in priced)
    before = amounts(added=False) if needed else {}
    after = amounts(added=True) if needed else {}
    costs = []
    for use, pp in priced:
        meter = METERS[use.meter]
        amount = None
        if pp is not None:
            amount = after.get(use.key, Decimal(0)) - before.get(use.key, Decimal(0))
        costs.append(
            MeterCost(
                use=use,
                quantity=billing_quantity(meter, use.quantity, hours_in_month=month_hours),
                unit=meter.billing_unit,
                amount=amount,
                spec=None if pp is None else invoicing.price_spec(pp),
            )
        )
    return MarginalCost(
        at=at,
        period_start=start,
        period_end=end,
        plan_name=plan.name if plan is not None else "",
        currency=plan.currency if plan is not None else "USD",
        costs=costs,
    )


@dataclass(frozen=True)
class PlanPrices:
    """The prices of one plan: currency, code, and a ``PriceSpec`` per (meter, tier) ("" for a
    price that applies to every tier)."""

    currency: str
    plan_code: str
    specs: dict[tuple[str, str], PriceSpec]


def plan_prices(*, org: Organization, at: datetime) -> PlanPrices:
    """The prices of the plan in force for ``org`` at ``at`` (its subscription, else the default
    plan; no plan at all: no prices, in USD)."""
    # The invoice prices with this module: importing it at the top would be a cycle.
    from billing import invoicing

    plan = invoicing.plan_in_force(org=org, at=at)
    if plan is None:
        return PlanPrices("USD", "", {})
    specs = {(pp.meter, pp.tier): invoicing.price_spec(pp) for pp in plan.prices.all()}
    return PlanPrices(plan.currency, plan.code, specs)
