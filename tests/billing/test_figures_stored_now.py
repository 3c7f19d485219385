"""What *Usage & billing* and the dashboard show as stored now: the storage ledger's balance at
this moment (as the archive index counts bytes at once), and each point of the stored-bytes chart
written as every other page writes a size. See test_figures_agree.py for the demo's pages."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.forecast import forecast_month
from billing.metering import storage_delta
from billing.meters import DERIVED_STORAGE, GIB, STORAGE
from billing.models import StorageDelta
from billing.periods import hours_between, month_bounds
from billing.rollups import rollup_run
from billing.selectors import storage_balance_now, stored_bytes_now, usage_totals
from tenants.labels import bytes_label
from tenants.models import Membership, Organization
from tests.billing.figures import (
    TOTAL,
    Element,
    chart_last_point,
    chart_table,
    page,
    tier_figures,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """A minute ahead of the clock: rows stamped by model defaults are before it."""
    fixed = (timezone.now() + timedelta(minutes=1)).replace(microsecond=0)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    return fixed


def _billing_page(owner: Membership, org: Organization) -> Element:
    client = Client()
    client.force_login(owner.user)
    response = client.get(f"/o/{org.slug}/billing/")
    assert response.status_code == 200
    return page(response.content)


def test_stored_now_and_the_charts_last_point_include_bytes_stored_within_the_hour(
    fixed_now: datetime, org: Organization, owner: Membership
) -> None:
    """ "Stored now" and the chart's last point are the ledger's balance now, as the index counts
    bytes at once: not the last complete hour's, which misses what arrived since (and is nothing
    at all before the first hour is rolled up)."""
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=5 * GIB,
        at=fixed_now - timedelta(days=2),
        idempotency_key="a",
    )
    rollup_run(now=fixed_now)
    # Within the current hour: in the ledger, not in any complete hour's rollup.
    storage_delta(org=org, tier="hot", delta_bytes=3 * GIB, at=fixed_now, idempotency_key="b")
    storage_delta(org=org, tier="cold", delta_bytes=2 * GIB, at=fixed_now, idempotency_key="c")
    # Thumbnails are not images (the index leaves them out too); the future is not stored yet.
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=GIB,
        at=fixed_now,
        idempotency_key="d",
        meter=DERIVED_STORAGE,
    )
    storage_delta(
        org=org, tier="hot", delta_bytes=GIB, at=fixed_now + timedelta(hours=2), idempotency_key="e"
    )
    assert storage_balance_now(org=org) == {"hot": 5 * GIB}  # the last complete hour's
    assert stored_bytes_now(org=org, now=fixed_now) == {"hot": 8 * GIB, "cold": 2 * GIB}

    doc = _billing_page(owner, org)
    stored = doc.by_id("stat-stored")
    assert stored.find(class_="stat-value").text == "10 GiB"
    assert tier_figures(stored.find(class_="stat-foot").text) == {"hot": "8 GiB", "cold": "2 GiB"}
    last = chart_last_point(doc.by_id("storage-chart"))
    assert last == {
        "hot": "8 GiB",
        "warm": "0 B",
        "cold": "2 GiB",
        "archive": "0 B",
        TOTAL: "10 GiB",
    }
    # The days before keep the rolled-up balances.
    _, rows = chart_table(doc.by_id("storage-chart"))
    assert rows[-2][1:] == ["5 GiB", "0 B", "5 GiB"]


def test_the_storage_charts_points_are_sizes_as_every_page_shows_them(
    fixed_now: datetime, org: Organization, owner: Membership
) -> None:
    """The axis is in the peak's unit (TiB here), but each point reads as ``bytes_label`` reads
    that size (the tiles and "Stored now"): ``1,014 GiB``, not ``0.99 TiB``; ``1.8 TiB``, not
    ``1.84 TiB``."""
    hot, warm = 1014 * GIB, int(1.84 * 1024 * GIB)
    storage_delta(
        org=org, tier="hot", delta_bytes=hot, at=fixed_now - timedelta(days=3), idempotency_key="h"
    )
    storage_delta(
        org=org,
        tier="warm",
        delta_bytes=warm,
        at=fixed_now - timedelta(days=3),
        idempotency_key="w",
    )
    rollup_run(now=fixed_now)
    doc = _billing_page(owner, org)
    chart = doc.by_id("storage-chart")
    assert "in TiB" in chart.find("svg").attrs["aria-label"]
    assert chart_last_point(chart) == {
        "hot": bytes_label(hot),
        "warm": bytes_label(warm),
        "cold": "0 B",
        "archive": "0 B",
        TOTAL: bytes_label(hot + warm),
    }
    assert (bytes_label(hot), bytes_label(warm)) == ("1,014 GiB", "1.8 TiB")
    tips = [c.own_title for c in chart.find_all("circle")]
    assert any(t.endswith(f": {bytes_label(hot)}") and t.startswith("Hot") for t in tips)
    assert tier_figures(doc.by_id("stat-stored").find(class_="stat-foot").text) == {
        "hot": bytes_label(hot),
        "warm": bytes_label(warm),
    }


def _ledger_now(org: Organization, now: datetime) -> dict[str, int]:
    """The whole ledger summed up to ``now``: what ``stored_bytes_now`` reads faster."""
    totals: dict[str, int] = {}
    for delta in StorageDelta.objects.for_org(org).filter(meter=STORAGE, at__lte=now):
        totals[delta.tier] = totals.get(delta.tier, 0) + delta.delta_bytes
    return totals


def test_stored_bytes_now_is_the_whole_ledgers_balance_whatever_was_rolled_up(
    fixed_now: datetime, org: Organization
) -> None:
    day = timedelta(days=1)
    # Nothing rolled up yet: the ledger itself.
    storage_delta(
        org=org, tier="hot", delta_bytes=7 * GIB, at=fixed_now - 3 * day, idempotency_key="1"
    )
    storage_delta(
        org=org, tier="warm", delta_bytes=GIB, at=fixed_now - 3 * day, idempotency_key="2"
    )
    assert stored_bytes_now(org=org, now=fixed_now) == _ledger_now(org, fixed_now)
    # Rolled up to the last complete hour, then a move and a new tier within this hour.
    rollup_run(now=fixed_now)
    for key, tier, delta in (("3", "hot", -2), ("4", "cold", 2), ("5", "warm", -1)):
        storage_delta(
            org=org, tier=tier, delta_bytes=delta * GIB, at=fixed_now, idempotency_key=key
        )
    assert (
        stored_bytes_now(org=org, now=fixed_now)
        == _ledger_now(org, fixed_now)
        == {
            "hot": 5 * GIB,
            "warm": 0,
            "cold": 2 * GIB,
        }
    )
    # Asked about an earlier moment than the rollups reach: the rollups after it are not used.
    earlier = fixed_now - 2 * day
    assert stored_bytes_now(org=org, now=earlier) == _ledger_now(org, earlier)
    assert stored_bytes_now(org=org, now=fixed_now - 4 * day) == {}


def test_the_forecast_carries_forward_what_is_stored_now(
    fixed_now: datetime, org: Organization
) -> None:
    """ "Storage at today's level": the level now, bytes stored within the hour included, as the
    archive index and "Stored now" count them; not the last complete hour's."""
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=5 * GIB,
        at=fixed_now - timedelta(days=2),
        idempotency_key="a",
    )
    rollup_run(now=fixed_now)
    storage_delta(org=org, tier="hot", delta_bytes=3 * GIB, at=fixed_now, idempotency_key="b")
    forecast = forecast_month(org=org, now=fixed_now)
    start, end = month_bounds(fixed_now)
    so_far = usage_totals(org=org, start=start, end=forecast.as_of)[(STORAGE, "tier=hot")]
    left = hours_between(start, end) - hours_between(start, forecast.as_of)
    (line,) = [ln for ln in forecast.projected if ln.meter == STORAGE]
    assert line.base_quantity == so_far + 8 * GIB * left * 3600
