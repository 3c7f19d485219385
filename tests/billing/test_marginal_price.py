"""billing.pricing.marginal_cost: an estimate is what the invoice will charge.

Each case records some usage, asks for the marginal cost of more, then records it and recomputes
the draft: the estimate must equal the rise of the draft's unrounded amount, for every pricing
model, on one plan and across a mid-month plan change (allowance and tier bounds prorated).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import pytest
from django.utils import timezone

from archive.index import selectors
from archive.policies.preview import policy_preview
from billing.invoicing import invoice_compute
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import PlanPrice, PricePlan
from billing.pricing import MeterUse, marginal_cost
from billing.rollups import rollup_run
from billing.services import subscription_change
from tenants.context import Actor
from tenants.models import Organization
from tests.archive.test_policies_support import NOW, make_instance, move

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")

APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
CHANGE = datetime(2026, 4, 16, tzinfo=UTC)  # 360 of April's 720 hours on each plan: scale 0.5
AFTER_CHANGE = datetime(2026, 4, 20, 10, tzinfo=UTC)
BEFORE_CHANGE = datetime(2026, 4, 10, 10, tzinfo=UTC)
EGRESS = "egress.bytes"

# The new plan's egress price for each model, and by hand what 10 GiB more costs after the change
# on top of 40 GiB in the new plan's half of the month (allowance and bounds halved).
MODELS: dict[str, tuple[dict[str, Any], D]] = {
    # 40 GiB free of 80 / 2; then 10 x 0.05.
    "per_unit": ({"unit_price": D("0.05"), "included_quantity": D(80)}, D("0.50")),
    # 10 free of 20 / 2; 30 -> 40 billable: 5 x 0.10 up to 70 / 2, then 5 x 0.05 + the 0.27 fee.
    "graduated": (
        {
            "included_quantity": D(20),
            "tiers": [
                {"up_to": "70", "unit_price": "0.10"},
                {"up_to": None, "unit_price": "0.05", "flat_fee": "0.27"},
            ],
        },
        D("1.02"),
    ),
    # 40 x 0.10 = 4.00 below 90 / 2; 50 x 0.08 + 0.30 = 4.30 above it.
    "volume": (
        {
            "tiers": [
                {"up_to": "90", "unit_price": "0.10"},
                {"up_to": None, "unit_price": "0.08", "flat_fee": "0.30"},
            ]
        },
        D("0.30"),
    ),
    # 30 free of 60 / 2; 10 -> 20 billable: 3 -> 5 packages of 4 GiB at 0.20.
    "package": (
        {"included_quantity": D(60), "package_size": D(4), "package_price": D("0.20")},
        D("0.40"),
    ),
}


def plan_with(code: str, meter: str, tier: str = "", **price: Any) -> PricePlan:
    plan = PricePlan.objects.create(code=code, name=code.title(), currency="EUR")
    PlanPrice.objects.create(plan=plan, meter=meter, tier=tier, **price)
    return plan


def old_and_new_plan(org: Organization, model: str, *, change: bool) -> None:
    """Per unit at 0.09 from March, the model's price from ``CHANGE`` (or from March)."""
    old = plan_with("old", EGRESS, unit_price=D("0.09"))
    new = plan_with("new", EGRESS, model=model, **MODELS[model][0])
    subscription_change(org=org, plan=old, starts_at=datetime(2026, 3, 1, tzinfo=UTC), actor=SYSTEM)
    if change:
        subscription_change(org=org, plan=new, starts_at=CHANGE, actor=SYSTEM)
    else:
        subscription_change(
            org=org, plan=new, starts_at=datetime(2026, 3, 2, tzinfo=UTC), actor=SYSTEM
        )


def use(org: Organization, meter: str, quantity: int, at: datetime, key: str) -> None:
    record_usage(org=org, meter=meter, quantity=quantity, at=at, idempotency_key=key)
    rollup_run(now=MAY)


def draft_unrounded(org: Organization) -> D:
    draft = invoice_compute(org=org, period_start=APRIL)
    return sum((ln.unrounded_amount for ln in draft.lines if ln.kind == "usage"), D(0))


def rise_after(org: Organization, action: Any) -> D:
    before = draft_unrounded(org)
    action()
    return draft_unrounded(org) - before


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("change", "at"),
    [(False, AFTER_CHANGE), (True, AFTER_CHANGE), (True, BEFORE_CHANGE)],
    ids=["one-plan", "after-a-plan-change", "before-a-plan-change"],
)
def test_estimate_is_the_rise_of_the_draft(
    org: Organization, model: str, change: bool, at: datetime
) -> None:
    old_and_new_plan(org, model, change=change)
    use(org, EGRESS, 30 * GIB, datetime(2026, 4, 5, tzinfo=UTC), "a")
    use(org, EGRESS, 40 * GIB, datetime(2026, 4, 17, tzinfo=UTC), "b")

    [cost] = marginal_cost(org=org, at=at, uses=[MeterUse(EGRESS, 10 * GIB)]).costs

    assert cost.amount == rise_after(org, lambda: use(org, EGRESS, 10 * GIB, at, "c"))
    if change and at == AFTER_CHANGE:
        assert cost.amount == MODELS[model][1]
    if change and at == BEFORE_CHANGE:
        assert cost.amount == D("0.90")  # on the old plan
    assert (cost.quantity, cost.unit) == (10, "GiB")


@pytest.mark.parametrize("projected", [False, True], ids=["rolled-up", "projected"])
def test_storage_estimate_across_a_plan_change_is_the_rise_of_the_draft(
    org: Organization, projected: bool
) -> None:
    # GiB-months on the new plan's half: 2.5 of 5 included free, then 0.023.
    old = plan_with("old", "storage", tier="hot", unit_price=D("0.02"))
    new = plan_with("new", "storage", tier="hot", unit_price=D("0.023"), included_quantity=D(5))
    subscription_change(org=org, plan=old, starts_at=datetime(2026, 3, 1, tzinfo=UTC), actor=SYSTEM)
    subscription_change(org=org, plan=new, starts_at=CHANGE, actor=SYSTEM)
    storage_delta(org=org, tier="hot", delta_bytes=3 * GIB, at=APRIL, idempotency_key="base")
    # Rolled up to the month's end, or to now with the rest of the month projected.
    rollup_run(now=AFTER_CHANGE if projected else MAY)
    remaining = int((MAY - AFTER_CHANGE).total_seconds())
    held = MeterUse(
        "storage",
        4 * GIB * remaining,
        tier="hot",
        projected=3 * GIB * remaining if projected else 0,
    )

    [cost] = marginal_cost(org=org, at=AFTER_CHANGE, uses=[held]).costs

    rollup_run(now=MAY)

    def store() -> None:
        storage_delta(
            org=org, tier="hot", delta_bytes=4 * GIB, at=AFTER_CHANGE, idempotency_key="more"
        )
        rollup_run(now=MAY)

    assert cost.amount == rise_after(org, store)
    assert cost.amount is not None and cost.amount > 0 and cost.unit == "GiB-month"


def test_a_tier_without_its_own_price_is_priced_at_the_meters_price(org: Organization) -> None:
    plan = plan_with("flat", "tier.transitions", unit_price=D("0.02"))
    subscription_change(org=org, plan=plan, starts_at=CHANGE, actor=SYSTEM)
    quote = marginal_cost(
        org=org, at=AFTER_CHANGE, uses=[MeterUse("tier.transitions", 500, tier="cold")]
    )
    assert (quote.plan_name, quote.currency) == ("Flat", "EUR")
    assert quote.costs[0].amount == D("0.01")  # 0.5 thousand x 0.02


def test_an_unpriced_meter_has_no_amount_and_names_the_plan(org: Organization) -> None:
    plan = plan_with("egress-only", EGRESS, unit_price=D("0.05"))
    subscription_change(org=org, plan=plan, starts_at=CHANGE, actor=SYSTEM)
    quote = marginal_cost(
        org=org,
        at=AFTER_CHANGE,
        uses=[MeterUse("restore.bytes", GIB), MeterUse(EGRESS, 0)],
    )
    assert [c.amount for c in quote.costs] == [None, D(0)]
    assert quote.plan_name == "Egress-Only"


def test_uses_of_one_line_are_refused(org: Organization) -> None:
    with pytest.raises(ValueError):
        marginal_cost(org=org, at=AFTER_CHANGE, uses=[MeterUse(EGRESS, 1), MeterUse(EGRESS, 2)])


def test_download_after_a_plan_change_is_estimated_as_billed(
    org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The case: Standard (100 GiB free) to mid-April, then 0.05 per GiB with a 0.27 fee
    # past 100 GiB. 60 GiB read this month, 45 of them on the new plan, whose half month has
    # 50 GiB before the fee. Priced on the whole month with the full bound the 10 GiB were 0.50.
    new = plan_with(
        "new",
        EGRESS,
        model="graduated",
        tiers=[
            {"up_to": "100", "unit_price": "0.05"},
            {"up_to": None, "unit_price": "0.05", "flat_fee": "0.27"},
        ],
    )
    subscription_change(org=org, plan=new, starts_at=CHANGE, actor=SYSTEM)
    use(org, EGRESS, 15 * GIB, datetime(2026, 4, 5, tzinfo=UTC), "a")
    use(org, EGRESS, 45 * GIB, datetime(2026, 4, 17, tzinfo=UTC), "b")
    with monkeypatch.context() as clock:
        clock.setattr(timezone, "now", lambda: AFTER_CHANGE)
        estimate = selectors.egress_estimate(org=org, bytes_out=10 * GIB)
    assert (estimate.plan_name, estimate.amount) == ("New", D("0.77"))

    before = invoice_compute(org=org, period_start=APRIL).total
    use(org, EGRESS, 10 * GIB, AFTER_CHANGE, "download")
    assert invoice_compute(org=org, period_start=APRIL).total - before == D("0.77")


def test_policy_preview_after_a_plan_change_prices_transitions_as_billed(
    org: Organization, settings: Any, tmp_path: Any
) -> None:
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    june = datetime(2025, 6, 1, tzinfo=UTC)
    # 1,000 transitions free a month on the new plan from June 11: 2/3 of them in June's rest.
    # 700 of June's 900 so far are on it, so 3 more pass its 666.67; on the whole month with the
    # whole allowance (903 of 1,000) they were free.
    old = plan_with("old", "tier.transitions", unit_price=D("0.05"))
    new = plan_with(
        "new", "tier.transitions", tier="cold", unit_price=D("0.02"), included_quantity=D(1)
    )
    subscription_change(org=org, plan=old, starts_at=datetime(2025, 5, 1, tzinfo=UTC), actor=SYSTEM)
    subscription_change(
        org=org, plan=new, starts_at=datetime(2025, 6, 11, tzinfo=UTC), actor=SYSTEM
    )
    cold = {"tier": "cold"}
    for key, count, day in [("a", 200, 5), ("b", 700, 12)]:
        record_usage(
            org=org,
            meter="tier.transitions",
            quantity=count,
            at=datetime(2025, 6, day, tzinfo=UTC),
            idempotency_key=key,
            dimensions=cold,
        )
    rollup_run(now=NOW)
    for _ in range(3):
        make_instance(org, size=GIB, accessed_days_ago=100)

    preview = policy_preview(org=org, rules=[move("cold", modalities=["CT"])], now=NOW)
    amounts = {(ln.meter, ln.tier): ln.amount for ln in preview.bill.lines}

    assert preview.bill.plan_name == "New"
    assert amounts[("tier.transitions", "cold")] == D("0.00006")  # 3 / 1,000 x 0.02

    def transitions() -> None:
        record_usage(
            org=org,
            meter="tier.transitions",
            quantity=3,
            at=NOW,
            idempotency_key="moves",
            dimensions=cold,
        )
        rollup_run(now=NOW)

    before = invoice_compute(org=org, period_start=june).lines
    transitions()
    after = invoice_compute(org=org, period_start=june).lines

    def unrounded(lines: list[Any]) -> D:
        return sum((ln.unrounded_amount for ln in lines if ln.meter == "tier.transitions"), D(0))

    assert unrounded(after) - unrounded(before) == amounts[("tier.transitions", "cold")]
