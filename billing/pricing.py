"""Pricing models: turn a quantity in billing units into an amount, exactly.

All four models first subtract the included (free) allowance:

- per_unit:  billable x unit_price
- graduated: each tier's slice priced at its own unit price (+ its flat fee once reached)
- volume:    the whole billable quantity at the unit price of the tier it falls in (+ that tier's
             flat fee)
- package:   ceil(billable / package_size) x package_price

Amounts stay unrounded Decimals here; the invoice rounds each line once (half-up to the cent).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from tenants.errors import ValidationFailed

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
