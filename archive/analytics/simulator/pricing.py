"""The simulator's prices: the organization's plan in force, and one simulated month's usage
priced as an invoice prices it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from archive.analytics.simulator.results import TIERS
from archive.restores.selectors import RESTORE_METER
from billing.pricing import GIB, METERS, PriceSpec, price, round_money
from billing.pricing import plan_prices as billing_plan_prices
from tenants.models import Organization


@dataclass
class _Prices:
    currency: str
    plan_code: str
    specs: dict[tuple[str, str], PriceSpec]

    def spec(self, meter: str, tier: str = "") -> PriceSpec | None:
        return self.specs.get((meter, tier)) or self.specs.get((meter, ""))

    def amount(self, meter: str, tier: str, quantity: Decimal) -> Decimal:
        spec = self.spec(meter, tier)
        if spec is None or quantity <= 0:
            return Decimal(0)
        return price(spec, quantity)[0]

    def unit(self, meter: str, tier: str = "") -> Decimal:
        """The price of one more billing unit past the allowance (for explanations only)."""
        spec = self.spec(meter, tier)
        if spec is None:
            return Decimal(0)
        if spec.model == "per_unit":
            return spec.unit_price
        if spec.model == "package":
            return spec.package_price / (spec.package_size or Decimal(1))
        return spec.tiers[0][1] if spec.tiers else Decimal(0)


def plan_prices(*, org: Organization, now: datetime) -> _Prices:
    """The plan in force at ``now`` (billing's own resolution of subscriptions and default)."""
    prices = billing_plan_prices(org=org, at=now)
    return _Prices(prices.currency, prices.plan_code, prices.specs)


@dataclass
class _Usage:
    """One simulated month's quantities in base units (bytes, byte-days, counts)."""

    storage: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    transitions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    early: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    egress: float = 0.0
    restore: float = 0.0
    prefetch: int = 0  # archive-tier bytes the prefetch rule restores (before its cap)
    ingest_bytes: int = 0
    ingest_instances: int = 0


def _price_month(
    prices: _Prices, usage: _Usage, *, prefetch_cap: Decimal | None = None
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """A month's components as billed (each rounded once to the cent, like an invoice line) and
    before that rounding.

    Prefetches are restores too (``restore.bytes``), billed on top of the re-reads' restores:
    their amount is what they add to that meter's charge (past what the re-reads leave of an
    allowance, at the graduated price those reach), at most ``prefetch_cap``, the prefetch
    rule's monthly cap (prefetching stops there)."""
    gib = Decimal(GIB)
    exact: dict[str, Decimal] = {}
    out: dict[str, Decimal] = {}
    for tier in TIERS:
        qty = Decimal(round(usage.storage.get(tier, 0))) / gib  # a month's average = GiB-months
        exact[f"storage_{tier}"] = prices.amount("storage", tier, qty)
    per_1000 = Decimal(METERS["tier.transitions"].divisor)
    transitions = [
        prices.amount("tier.transitions", t, Decimal(n) / per_1000)
        for t, n in usage.transitions.items()
    ]
    early = [
        prices.amount("early_deletion", t, Decimal(round(v)) / gib) for t, v in usage.early.items()
    ]
    ingest = [
        prices.amount("ingest.bytes", "", Decimal(usage.ingest_bytes) / gib),
        prices.amount(
            "ingest.instances",
            "",
            Decimal(usage.ingest_instances) / Decimal(METERS["ingest.instances"].divisor),
        ),
    ]
    exact["transitions"] = sum(transitions, Decimal(0))
    exact["restores"] = prices.amount(RESTORE_METER, "", Decimal(round(usage.restore)) / gib)
    with_prefetch = Decimal(round(usage.restore) + usage.prefetch) / gib
    prefetches = prices.amount(RESTORE_METER, "", with_prefetch) - exact["restores"]
    if prefetch_cap is not None:
        prefetches = min(prefetches, max(prefetch_cap, Decimal(0)))
    exact["prefetches"] = prefetches
    exact["early_deletion"] = sum(early, Decimal(0))
    exact["egress"] = prices.amount("egress.bytes", "", Decimal(round(usage.egress)) / gib)
    exact["ingest"] = sum(ingest, Decimal(0))
    for key in exact:
        out[key] = round_money(exact[key])
    # One rounding per invoice line: per target tier, per meter.
    out["transitions"] = sum((round_money(a) for a in transitions), Decimal("0.00"))
    out["early_deletion"] = sum((round_money(a) for a in early), Decimal("0.00"))
    out["ingest"] = sum((round_money(a) for a in ingest), Decimal("0.00"))
    return out, exact
