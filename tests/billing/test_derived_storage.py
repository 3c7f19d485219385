"""Derived storage (thumbnails the archive keeps): its own ledger meter, rolled up apart from the
images' storage, priced as storage by a plan that does not price it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from billing.invoicing import invoice_compute
from billing.metering import Delta, record_usage, storage_delta, storage_delta_bulk
from billing.meters import DERIVED_STORAGE, GIB
from billing.models import StorageDelta
from billing.rollups import rollup_run
from billing.selectors import storage_balance_now, usage_totals
from billing.services import plan_create, subscription_change
from tenants.context import Actor
from tenants.errors import ValidationFailed

pytestmark = pytest.mark.django_db


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def test_derived_bytes_have_their_own_balance_and_rollup(org):
    storage_delta(org=org, tier="hot", delta_bytes=1000, at=at(2026, 3, 1, 10), idempotency_key="i")
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=30,
        at=at(2026, 3, 1, 10),
        idempotency_key="t",
        meter=DERIVED_STORAGE,
    )
    storage_delta_bulk(
        org=org, deltas=[Delta("hot", -10, at(2026, 3, 1, 11), "t-out", DERIVED_STORAGE)]
    )

    rollup_run(now=at(2026, 3, 1, 12))

    totals = usage_totals(org=org, start=at(2026, 3, 1), end=at(2026, 3, 2))
    assert totals[("storage", "tier=hot")] == 1000 * 7200
    assert totals[(DERIVED_STORAGE, "tier=hot")] == 30 * 3600 + 20 * 3600
    # The images' balance (what storage pages and forecasts show) leaves thumbnails out.
    assert storage_balance_now(org=org) == {"hot": 1000}


def test_a_plan_without_a_derived_price_bills_it_as_storage(org):
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=2 * GIB,
        at=at(2026, 4, 1),
        idempotency_key="t",
        meter=DERIVED_STORAGE,
    )
    rollup_run(now=at(2026, 5, 1))

    lines = {
        (ln.meter, ln.tier): ln
        for ln in invoice_compute(org=org, period_start=at(2026, 4, 1)).lines
    }

    derived = lines[(DERIVED_STORAGE, "hot")]
    assert derived.quantity == D(2) and derived.unit == "GiB-month"
    assert derived.amount == D("0.05")  # 2 GiB-months at the default plan's hot storage price
    assert derived.description.startswith("Derived storage")
    assert ("storage", "hot") not in lines


def test_a_plan_may_price_derived_storage_itself(org):
    plan = plan_create(
        code="thumbs-free",
        name="Thumbnails free",
        currency="USD",
        prices=[
            {"meter": "storage", "tier": "hot", "model": "per_unit", "unit_price": "0.02"},
            {"meter": DERIVED_STORAGE, "model": "per_unit", "unit_price": "0"},
        ],
        actor=Actor.system("tests"),
    )
    subscription_change(org=org, plan=plan, starts_at=at(2026, 4, 1), actor=Actor.system("tests"))
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=GIB,
        at=at(2026, 4, 1),
        idempotency_key="t",
        meter=DERIVED_STORAGE,
    )
    rollup_run(now=at(2026, 5, 1))

    lines = {
        (ln.meter, ln.tier): ln
        for ln in invoice_compute(org=org, period_start=at(2026, 4, 1)).lines
    }

    assert lines[(DERIVED_STORAGE, "hot")].amount == D("0")


def test_ledger_meters_are_not_usage_events_and_unknown_ones_are_refused(org):
    with pytest.raises(ValidationFailed):
        record_usage(
            org=org, meter=DERIVED_STORAGE, quantity=1, at=at(2026, 3, 1), idempotency_key="u"
        )
    with pytest.raises(ValidationFailed) as refused:
        storage_delta(
            org=org,
            tier="hot",
            delta_bytes=1,
            at=at(2026, 3, 1),
            idempotency_key="x",
            meter="egress.bytes",
        )
    assert "meter" in refused.value.fields
    assert not StorageDelta.objects.exists()
