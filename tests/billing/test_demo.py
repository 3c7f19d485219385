"""The demo usage generator and ``manage.py seed_usage``, on a small hospital over two months."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F, Sum

from billing.demo import DemoResult, demo_history, generate_usage
from billing.invoicing import invoice_compute
from billing.meters import GIB, LEDGER_METERS, METERS, STORAGE, TIERS
from billing.models import Rollup, RollupMark, StorageDelta, UsageEvent
from billing.selectors import storage_balance_now
from tenants.models import Organization

pytestmark = pytest.mark.django_db

START = datetime(2026, 1, 5, tzinfo=UTC)
END = datetime(2026, 3, 5, tzinfo=UTC)
SCALE = 0.05  # ~7,500 studies a year, ~20 a day
SEED = 7

Rows = tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]


def generate(org: Organization, *, end: datetime = END, seed: int = SEED) -> DemoResult:
    return generate_usage(org=org, start=START, end=end, seed=seed, scale=SCALE)


def recorded(org: Organization) -> Rows:
    usage = UsageEvent.objects.for_org(org).values_list(
        "meter", "quantity", "at", "idempotency_key", "dimension_key"
    )
    deltas = StorageDelta.objects.for_org(org).values_list(
        "tier", "delta_bytes", "at", "idempotency_key"
    )
    return set(usage), set(deltas)


@pytest.fixture(scope="module")
def history(
    django_db_setup: None, django_db_blocker: Any
) -> Iterator[tuple[Organization, DemoResult]]:
    """One generated history shared by the module (each test's own writes are rolled back)."""
    with django_db_blocker.unblock():
        org = Organization.objects.create(name="Demo Test Hospital", slug="demo-test-hospital")
        result = generate(org)
        # As if recorded an hour ago: later rollups in the module need not read these rows again.
        for source in (UsageEvent, StorageDelta):
            source.objects.for_org(org).update(recorded_at=F("recorded_at") - timedelta(hours=1))
    yield org, result
    with django_db_blocker.unblock():
        Rollup.objects.for_org(org).delete()
        UsageEvent.objects.for_org(org).delete()
        StorageDelta.objects.for_org(org).delete()
        RollupMark.objects.all().delete()
        org.delete()


def test_a_rerun_records_nothing_new(history):
    org, first = history
    before = recorded(org)
    assert first.new_usage_events == first.usage_events == len(before[0]) > 1000
    assert first.new_ledger_deltas == first.ledger_deltas == len(before[1]) > 500
    second = generate(org)
    assert (second.new_usage_events, second.new_ledger_deltas) == (0, 0)
    assert recorded(org) == before
    assert (second.totals, second.balances) == (first.totals, first.balances)


def test_rows_offered_again_are_no_ops(history):
    org, first = history
    before = recorded(org)
    # Without its hourly API events the history looks unwritten, so all of it is offered again.
    removed, _ = UsageEvent.objects.for_org(org).filter(meter="api.requests").delete()
    again = generate(org)
    assert (again.usage_events, again.ledger_deltas) == (first.usage_events, first.ledger_deltas)
    assert (again.new_usage_events, again.new_ledger_deltas) == (removed, 0)
    assert recorded(org) == before


def test_the_same_seed_gives_the_same_history_also_when_extended_later(history, other_org):
    org, _ = history
    partial = generate(other_org, end=datetime(2026, 1, 20, 7, 30, tzinfo=UTC))
    assert partial.end == datetime(2026, 1, 20, 7, tzinfo=UTC)  # whole hours only
    cut = datetime(2026, 2, 1, tzinfo=UTC)
    extended = generate(other_org, end=cut)
    assert extended.new_usage_events > 0
    ours = recorded(org)
    assert recorded(other_org) == (
        {row for row in ours[0] if row[2] < cut},
        {row for row in ours[1] if row[2] < cut},
    )


def test_another_seed_gives_another_history(history, other_org):
    org, _ = history
    generate(other_org, end=START + timedelta(days=2), seed=SEED + 1)
    ours = {row[:3] for row in recorded(org)[0] if row[2] < START + timedelta(days=2)}
    assert {row[:3] for row in recorded(other_org)[0]} != ours


def test_every_meter_is_metered_and_storage_ends_in_every_tier(history):
    org, result = history
    meters = set(UsageEvent.objects.for_org(org).values_list("meter", flat=True))
    assert meters == set(METERS) - set(LEDGER_METERS)
    # The ledger, the simulation and the rollups agree on what is stored at the end.
    ledger = dict(
        StorageDelta.objects.for_org(org).values_list("tier").annotate(s=Sum("delta_bytes"))
    )
    assert ledger == result.balances
    assert storage_balance_now(org=org) == result.balances
    assert all(result.balances[tier] > 0 for tier in TIERS)
    assert not Rollup.objects.for_org(org).filter(meter=STORAGE, balance_bytes__lt=0).exists()
    # Thirty days of ~20 studies a day at ~82 MB a study stay hot: about 50 GB.
    assert 35 * GIB < result.balances["hot"] < 65 * GIB
    assert 1_000 < result.studies < 1_450  # 59 days at ~20.5 a day
    assert 13_000 < result.migrated_studies < 17_000  # two years of priors


def test_a_months_draft_invoice_is_plausible(history):
    org, _ = history
    draft = invoice_compute(org=org, period_start=datetime(2026, 2, 1, tzinfo=UTC))
    lines = {(ln.meter, ln.tier): ln for ln in draft.lines}
    assert all(lines[(STORAGE, tier)].amount > 0 for tier in TIERS)
    assert lines[("egress.bytes", "")].quantity > 20  # GiB
    assert lines[("tier.transitions", "warm")].amount > 0
    for meter in ("ingest.instances", "compute.seconds", "api.requests", "restore.bytes"):
        assert lines[(meter, "")].quantity > 0
    # A twentieth of a mid-size hospital, which pays ~300 USD a month once settled.
    assert Decimal(5) < draft.total < Decimal(60)


def test_seed_usage_prints_the_draft_and_a_rerun_extends_the_history(org):
    out = StringIO()
    call_command("seed_usage", org=org.slug, months=1, scale=SCALE, seed=3, stdout=out)
    assert "Draft invoice for" in out.getvalue()
    found = demo_history(org=org)
    assert found is not None and (found.seed, found.scale) == (3, SCALE)
    count = UsageEvent.objects.for_org(org).count()
    again = StringIO()
    call_command("seed_usage", org=org.slug, stdout=again)
    assert "extending it to now" in again.getvalue()
    assert UsageEvent.objects.for_org(org).count() - count <= 12  # at most the hour since
    with pytest.raises(CommandError, match="--seed 3"):
        call_command("seed_usage", org=org.slug, seed=4, stdout=StringIO())


def test_seed_usage_needs_a_known_organization(db):
    with pytest.raises(CommandError, match="No organization"):
        call_command("seed_usage", org="nope", stdout=StringIO())
