"""Invoice computation: rollups x price plans -> lines. Pure reads; services persist the result.

A month is split at plan changes (subscriptions' effective dates); each segment's usage is priced
with its plan, the allowance, tier bounds and minimum commitment prorated by the segment's share of
the month's hours. Each line is rounded once (half-up to the cent); the total is the sum of lines.
Usage that arrives for a month after its invoice was finalized is billed as an adjustment line on
the next invoice: the month is recomputed from rollups and the difference to what was already
billed for it (its invoice plus earlier adjustments) is added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum

from billing.meters import METERS, TIERS, billing_quantity
from billing.models import Invoice, InvoiceLine, PlanPrice, PricePlan, Subscription
from billing.periods import hours_between, month_bounds, month_start
from billing.pricing import PriceSpec, parse_tiers, price, round_money
from billing.selectors import usage_totals
from tenants.models import Organization

ADJUSTMENT_LOOKBACK_MONTHS = 12


@dataclass
class DraftLine:
    kind: str
    description: str
    amount: Decimal
    meter: str = ""
    dimension_key: str = ""
    usage_start: datetime | None = None
    usage_end: datetime | None = None
    plan_code: str = ""
    base_quantity: int = 0
    quantity: Decimal = Decimal(0)
    unit: str = ""
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    # ``amount`` before its one rounding: estimates compare drafts by it (billing.pricing).
    unrounded_amount: Decimal = Decimal(0)

    @property
    def tier(self) -> str:
        return (
            self.dimension_key.removeprefix("tier=")
            if self.dimension_key.startswith("tier=")
            else ""
        )


@dataclass
class InvoiceDraft:
    organization: Organization
    period_start: datetime
    period_end: datetime
    currency: str
    lines: list[DraftLine]

    @property
    def subtotal(self) -> Decimal:
        return sum((line.amount for line in self.lines if line.kind == "usage"), Decimal("0.00"))

    @property
    def minimum_adjustment(self) -> Decimal:
        return sum((line.amount for line in self.lines if line.kind == "minimum"), Decimal("0.00"))

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))


def default_plan() -> PricePlan | None:
    return PricePlan.objects.filter(is_default=True).order_by("id").first()


def plan_segments(
    *, org: Organization, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, PricePlan]]:
    """The plans in force over [start, end), as hour-aligned segments; gaps use the default plan."""
    subs = list(
        Subscription.objects.for_org(org)
        .filter(starts_at__lt=end)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=start))
        .select_related("plan")
        .order_by("starts_at")
    )
    fallback = default_plan()
    segments: list[tuple[datetime, datetime, PricePlan]] = []
    cursor = start
    for sub in subs:
        s = max(start, sub.starts_at)
        e = min(end, sub.ends_at or end)
        if s > cursor and fallback is not None:
            segments.append((cursor, s, fallback))
        if e > s:
            segments.append((s, e, sub.plan))
        cursor = max(cursor, e)
    if cursor < end and fallback is not None:
        segments.append((cursor, end, fallback))
    return segments


def plan_in_force(*, org: Organization, at: datetime) -> PricePlan | None:
    """The plan that prices ``org``'s usage at ``at`` (its subscription, else the default)."""
    segments = plan_segments(org=org, start=at, end=at + timedelta(hours=1))
    return segments[0][2] if segments else default_plan()


def price_spec(pp: PlanPrice) -> PriceSpec:
    """A plan price as the pricing functions take it."""
    return PriceSpec(
        model=pp.model,
        unit_price=pp.unit_price,
        tiers=parse_tiers(pp.tiers),
        package_size=pp.package_size,
        package_price=pp.package_price,
        included=pp.included_quantity,
    )


def plan_price(
    prices: dict[tuple[str, str], PlanPrice], meter_key: str, tier: str
) -> PlanPrice | None:
    """The price of ``meter_key`` in ``tier`` on a plan: the tier's own, else the meter's; a plan
    that prices neither prices a meter with ``priced_as`` (derived storage) as that meter."""
    found = prices.get((meter_key, tier)) or prices.get((meter_key, ""))
    fallback = METERS[meter_key].priced_as if meter_key in METERS else ""
    if found is None and fallback:
        return plan_price(prices, fallback, tier)
    return found


def _describe(meter_key: str, tier: str) -> str:
    meter = METERS[meter_key]
    return f"{meter.label} ({tier})" if tier else meter.label


def usage_lines(
    *,
    org: Organization,
    period_start: datetime,
    period_end: datetime,
    totals_by_segment: Any = None,
) -> tuple[list[DraftLine], str]:
    """Usage and minimum-commitment lines for one month. Returns (lines, currency)."""
    month_hours = hours_between(period_start, period_end)
    lines: list[DraftLine] = []
    currency = ""
    segments = plan_segments(org=org, start=period_start, end=period_end)
    split = len(segments) > 1
    for seg_start, seg_end, plan in segments:
        currency = currency or plan.currency
        scale = Decimal(hours_between(seg_start, seg_end)) / Decimal(month_hours)
        totals = (
            totals_by_segment(seg_start, seg_end)
            if totals_by_segment is not None
            else usage_totals(org=org, start=seg_start, end=seg_end)
        )
        prices = {(pp.meter, pp.tier): pp for pp in plan.prices.all()}
        suffix = (
            f" — {plan.name}, {seg_start:%b %d}–{(seg_end - timedelta(seconds=1)):%b %d}"
            if split
            else ""
        )
        segment_amount = Decimal(0)
        for (meter_key, dim), base in sorted(totals.items()):
            if meter_key not in METERS or not base:
                continue
            tier = dim.removeprefix("tier=") if dim.startswith("tier=") else ""
            pp = plan_price(prices, meter_key, tier)
            meter = METERS[meter_key]
            qty = billing_quantity(meter, base, hours_in_month=month_hours)
            if pp is None:
                amount, breakdown = (
                    Decimal(0),
                    [{"label": "not charged on this plan", "quantity": str(qty), "amount": "0"}],
                )
            else:
                amount, breakdown = price(price_spec(pp), qty, scale=scale)
            line = DraftLine(
                kind="usage",
                description=_describe(meter_key, tier) + suffix,
                amount=round_money(amount),
                unrounded_amount=amount,
                meter=meter_key,
                dimension_key=dim,
                usage_start=seg_start,
                usage_end=seg_end,
                plan_code=plan.code,
                base_quantity=base,
                quantity=qty,
                unit=meter.billing_unit,
                breakdown=breakdown,
            )
            segment_amount += line.amount
            lines.append(line)
        if plan.monthly_minimum:
            minimum = round_money(plan.monthly_minimum * scale)
            if segment_amount < minimum:
                lines.append(
                    DraftLine(
                        kind="minimum",
                        description=f"Minimum commitment ({plan.name}){suffix}",
                        amount=minimum - segment_amount,
                        usage_start=seg_start,
                        usage_end=seg_end,
                        plan_code=plan.code,
                        breakdown=[
                            {
                                "label": "minimum",
                                "amount": str(minimum),
                                "usage": str(segment_amount),
                            }
                        ],
                    )
                )
    order = {k: i for i, k in enumerate(METERS)}
    tier_order = {f"tier={t}": i for i, t in enumerate(TIERS)}
    lines.sort(
        key=lambda ln: (
            ln.kind != "usage",
            ln.usage_start or period_start,
            order.get(ln.meter, 99),
            tier_order.get(ln.dimension_key, 99),
            ln.dimension_key,
        )
    )
    fallback = default_plan()
    return lines, currency or (fallback.currency if fallback else "USD")


def _billed_for_month(*, org: Organization, month: datetime) -> Decimal | None:
    """What has been billed for ``month`` so far: its finalized invoice plus later adjustments."""
    invoice = (
        Invoice.objects.for_org(org)
        .filter(period_start=month, status=Invoice.Status.FINALIZED)
        .first()
    )
    if invoice is None:
        return None
    own = invoice.lines.filter(kind__in=["usage", "minimum"]).aggregate(s=Sum("amount"))[
        "s"
    ] or Decimal(0)
    adjustments = InvoiceLine.objects.for_org(org).filter(
        kind="adjustment", usage_start=month, invoice__status=Invoice.Status.FINALIZED
    ).aggregate(s=Sum("amount"))["s"] or Decimal(0)
    return own + adjustments


def adjustment_lines(*, org: Organization, period_start: datetime) -> list[DraftLine]:
    """Late usage for earlier, already finalized months, recomputed from rollups."""
    lines: list[DraftLine] = []
    months = (
        Invoice.objects.for_org(org)
        .filter(status=Invoice.Status.FINALIZED, period_start__lt=period_start)
        .order_by("-period_start")
        .values_list("period_start", flat=True)[:ADJUSTMENT_LOOKBACK_MONTHS]
    )
    for month in sorted(set(months)):
        billed = _billed_for_month(org=org, month=month)
        if billed is None:
            continue
        start, end = month_bounds(month)
        recomputed_lines, _ = usage_lines(org=org, period_start=start, period_end=end)
        recomputed = sum((ln.amount for ln in recomputed_lines), Decimal("0.00"))
        difference = recomputed - billed
        if difference:
            lines.append(
                DraftLine(
                    kind="adjustment",
                    description=f"Adjustment: usage for {month:%B %Y} recorded after its invoice",
                    amount=difference,
                    usage_start=start,
                    usage_end=end,
                    breakdown=[
                        {"label": "recomputed", "amount": str(recomputed)},
                        {"label": "billed", "amount": str(billed)},
                    ],
                )
            )
    return lines


def invoice_compute(*, org: Organization, period_start: datetime) -> InvoiceDraft:
    """The invoice for the month starting at ``period_start`` as the rollups say now."""
    start, end = month_bounds(month_start(period_start))
    lines, currency = usage_lines(org=org, period_start=start, period_end=end)
    lines += adjustment_lines(org=org, period_start=start)
    return InvoiceDraft(
        organization=org, period_start=start, period_end=end, currency=currency, lines=lines
    )
