"""Byte-hour integration and rollups against hand-computed cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.metering import record_usage, storage_delta
from billing.meters import GIB, METERS, billing_quantity
from billing.models import Rollup
from billing.periods import hours_in_month, month_bounds
from billing.rollups import rollup_run, storage_integrate
from billing.selectors import storage_balance_daily, usage_totals

pytestmark = pytest.mark.django_db


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_mid_hour_changes_integrate_exactly():
    hours = storage_integrate(
        opening=0,
        deltas=[(at(2026, 3, 1, 10, 15), 1000), (at(2026, 3, 1, 10, 45), -400)],
        start=at(2026, 3, 1, 10),
        end=at(2026, 3, 1, 12),
    )
    # 1000 B for 30 min + 600 B for 15 min, then 600 B for a whole hour
    assert hours == [
        (at(2026, 3, 1, 10), 1000 * 1800 + 600 * 900, 600, True),
        (at(2026, 3, 1, 11), 600 * 3600, 600, False),
    ]


def test_rollup_mid_hour_and_usage(org):
    storage_delta(
        org=org, tier="hot", delta_bytes=1000, at=at(2026, 3, 1, 10, 15), idempotency_key="a"
    )
    storage_delta(
        org=org, tier="hot", delta_bytes=-400, at=at(2026, 3, 1, 10, 45), idempotency_key="b"
    )
    record_usage(
        org=org, meter="egress.bytes", quantity=5, at=at(2026, 3, 1, 10, 5), idempotency_key="e1"
    )
    record_usage(
        org=org, meter="egress.bytes", quantity=7, at=at(2026, 3, 1, 10, 55), idempotency_key="e2"
    )
    rollup_run(now=at(2026, 3, 1, 12, 30))
    totals = usage_totals(org=org, start=at(2026, 3, 1), end=at(2026, 3, 2))
    assert totals[("storage", "tier=hot")] == 1000 * 1800 + 600 * 900 + 600 * 3600
    assert totals[("egress.bytes", "")] == 12


def test_tier_change_across_a_month_boundary(org):
    storage_delta(
        org=org, tier="hot", delta_bytes=GIB, at=at(2026, 1, 31, 23, 30), idempotency_key="in"
    )
    storage_delta(
        org=org, tier="hot", delta_bytes=-GIB, at=at(2026, 2, 1, 0, 30), idempotency_key="out-hot"
    )
    storage_delta(
        org=org, tier="cold", delta_bytes=GIB, at=at(2026, 2, 1, 0, 30), idempotency_key="in-cold"
    )
    rollup_run(now=at(2026, 3, 1, 0, 0))
    jan = usage_totals(org=org, start=at(2026, 1, 1), end=at(2026, 2, 1))
    feb = usage_totals(org=org, start=at(2026, 2, 1), end=at(2026, 3, 1))
    assert jan == {("storage", "tier=hot"): GIB * 1800}
    assert feb[("storage", "tier=hot")] == GIB * 1800
    assert feb[("storage", "tier=cold")] == GIB * (28 * 24 * 3600 - 1800)


def test_leap_february_gib_month():
    assert hours_in_month(at(2028, 2, 10)) == 29 * 24
    assert hours_in_month(at(2026, 2, 10)) == 28 * 24
    # one GiB stored the whole of February 2028 is exactly one GiB-month
    byte_seconds = GIB * 29 * 24 * 3600
    assert billing_quantity(METERS["storage"], byte_seconds, hours_in_month=29 * 24) == Decimal(1)


def test_leap_february_rollup(org):
    storage_delta(org=org, tier="warm", delta_bytes=3 * GIB, at=at(2028, 2, 1), idempotency_key="w")
    rollup_run(now=at(2028, 3, 1, 0, 5))
    start, end = month_bounds(at(2028, 2, 1))
    total = usage_totals(org=org, start=start, end=end)[("storage", "tier=warm")]
    assert total == 3 * GIB * 696 * 3600
    assert billing_quantity(METERS["storage"], total, hours_in_month=696) == Decimal(3)


def test_opening_balance_is_carried_into_later_months(org):
    storage_delta(org=org, tier="cold", delta_bytes=500, at=at(2026, 1, 10, 8), idempotency_key="c")
    rollup_run(now=at(2026, 1, 20))
    rollup_run(now=at(2026, 3, 15))  # incremental: no new deltas, balance carried forward
    march = usage_totals(org=org, start=at(2026, 3, 1), end=at(2026, 4, 1))
    assert march[("storage", "tier=cold")] == 500 * 14 * 24 * 3600
    feb = usage_totals(org=org, start=at(2026, 2, 1), end=at(2026, 3, 1))
    assert feb[("storage", "tier=cold")] == 500 * 28 * 24 * 3600


def test_rollup_is_idempotent_and_incremental(org):
    for i in range(10):
        record_usage(
            org=org,
            meter="api.requests",
            quantity=1,
            at=at(2026, 5, 1, 9, i),
            idempotency_key=f"r{i}",
        )
    rollup_run(now=at(2026, 5, 1, 10))
    first = list(Rollup.objects.values_list("meter", "hour", "quantity", "events"))
    rollup_run(now=at(2026, 5, 1, 10, 1))
    assert list(Rollup.objects.values_list("meter", "hour", "quantity", "events")) == first
    assert first == [("api.requests", at(2026, 5, 1, 9), 10, 10)]


def test_late_event_recomputes_its_bucket(org):
    storage_delta(org=org, tier="hot", delta_bytes=100, at=at(2026, 6, 1), idempotency_key="s1")
    rollup_run(now=at(2026, 6, 10))
    # arrives late, dated back to June 5th noon
    storage_delta(org=org, tier="hot", delta_bytes=100, at=at(2026, 6, 5, 12), idempotency_key="s2")
    record_usage(
        org=org, meter="egress.bytes", quantity=9, at=at(2026, 6, 2, 3), idempotency_key="late"
    )
    rollup_run(now=at(2026, 6, 10, 0, 30))
    totals = usage_totals(org=org, start=at(2026, 6, 1), end=at(2026, 6, 10))
    expected = 100 * 9 * 24 * 3600 + 100 * (4 * 24 + 12) * 3600
    assert totals[("storage", "tier=hot")] == expected
    assert totals[("egress.bytes", "")] == 9


def test_storage_balance_per_day(org):
    storage_delta(org=org, tier="hot", delta_bytes=10, at=at(2026, 7, 1, 5), idempotency_key="1")
    storage_delta(org=org, tier="hot", delta_bytes=5, at=at(2026, 7, 2, 5), idempotency_key="2")
    rollup_run(now=at(2026, 7, 3))
    days = storage_balance_daily(org=org, start=at(2026, 7, 1), end=at(2026, 7, 3))
    assert [(d["day"].day, d["tier"], d["bytes"]) for d in days] == [(1, "hot", 10), (2, "hot", 15)]


def test_other_org_usage_is_separate(org, other_org):
    record_usage(
        org=other_org, meter="egress.bytes", quantity=1, at=at(2026, 8, 1), idempotency_key="o"
    )
    rollup_run(now=at(2026, 8, 2))
    assert usage_totals(org=org, start=at(2026, 8, 1), end=at(2026, 9, 1)) == {}
    assert timedelta(0) == timedelta(0)


def test_totals_beyond_2_to_the_63_are_exact(org):
    # ~30 TiB in archive for a month is more byte-seconds than a 64-bit SUM holds
    big = 2**62 + 12345
    Rollup.objects.bulk_create(
        [
            Rollup(
                organization=org,
                meter="storage",
                dimension_key="tier=archive",
                hour=at(2026, 9, 1, h),
                quantity=big,
            )
            for h in range(3)
        ]
    )
    assert usage_totals(org=org, start=at(2026, 9, 1), end=at(2026, 10, 1)) == {
        ("storage", "tier=archive"): 3 * big
    }


def test_late_events_scattered_over_months_roll_up_exactly(org):
    """Exercises the sparse path (hour by hour on PostgreSQL) and the range path elsewhere."""
    hours = [at(2026, 1, 5, 3), at(2026, 3, 9, 14), at(2026, 6, 20, 23)]
    for i, hour in enumerate(hours):
        for minute in (1, 30):
            record_usage(
                org=org,
                meter="egress.bytes",
                quantity=1000 + i,
                at=hour + timedelta(minutes=minute),
                idempotency_key=f"s{i}{minute}",
            )
    record_usage(
        org=org, meter="egress.bytes", quantity=5, at=at(2026, 4, 1, 0, 5), idempotency_key="noise"
    )
    rollup_run(now=at(2026, 7, 1))
    got = dict(
        Rollup.objects.for_org(org).filter(meter="egress.bytes").values_list("hour", "quantity")
    )
    assert got == {hours[0]: 2000, hours[1]: 2002, hours[2]: 2004, at(2026, 4, 1, 0): 5}
