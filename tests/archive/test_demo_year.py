"""The demo hospital's year (``saas.demo``): one story in the index, the objects, the storage
ledger, the usage events, the access log, the rollups and the invoices."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum

from archive.analytics.curve import access_curve
from archive.analytics.simulator import simulate
from archive.demo import INITIAL_POLICY, go_live_for
from archive.models import (
    AccessEvent,
    ArchiveSettings,
    Instance,
    RestoreRequest,
    Study,
    TierMove,
)
from billing.metering import storage_balances
from billing.models import Invoice, Rollup, Subscription, UsageEvent
from billing.periods import month_start
from saas.demo import AGREEMENT_CODE, DemoYear, demo_year
from tenants.models import Organization
from tests.archive.reconcile_helpers import assert_reconciled

pytestmark = pytest.mark.django_db


def test_go_live_leaves_eleven_months_to_invoice() -> None:
    assert go_live_for(datetime(2026, 12, 7, 18, tzinfo=UTC)) == datetime(2026, 1, 5, 8, tzinfo=UTC)
    assert go_live_for(datetime(2026, 1, 31, tzinfo=UTC)) == datetime(2025, 2, 5, 8, tzinfo=UTC)
    assert go_live_for(datetime(2026, 11, 1, tzinfo=UTC)) == datetime(2025, 12, 5, 8, tzinfo=UTC)


def _the_year_reconciles_index_ledger_and_store(org: Organization, year: DemoYear) -> None:
    assert year.studies == 30 and not year.skipped
    assert Study.objects.for_org(org).count() == 30
    run = assert_reconciled(org)
    by_tier = {row["tier"]: row["index_bytes"] for row in run.totals if row["meter"] == "storage"}
    # The policy moved studies out of hot: the year reaches more than one tier.
    assert year.moved > 0 and sum(1 for b in by_tier.values() if b) >= 2
    balances = storage_balances(org=org)
    for tier in ("hot", "warm", "cold", "archive"):
        index_bytes = (
            Instance.objects.for_org(org).filter(tier=tier).aggregate(s=Sum("size_bytes"))["s"] or 0
        )
        assert balances.get(("storage", tier), 0) == index_bytes


def _every_row_carries_the_time_it_describes(org: Organization, year: DemoYear) -> None:
    go_live = year.go_live
    studies = Study.objects.for_org(org)
    assert min(s.created_at for s in studies) >= go_live
    org.refresh_from_db()
    assert org.created_at < go_live
    # Imported priors were acquired before go-live and reached Strata after it.
    assert studies.filter(study_date__lt=go_live.date()).exists()
    # The ledger's first delta is the first study's arrival, not the day the demo was seeded.
    first_usage = UsageEvent.objects.for_org(org).order_by("at").values_list("at", flat=True)[0]
    assert go_live <= first_usage < go_live + timedelta(days=22)
    moves = TierMove.objects.for_org(org).filter(state=TierMove.State.DONE)
    assert moves.exists() and all(
        m.finished_at and m.finished_at < datetime.now(UTC) - timedelta(hours=1) for m in moves[:20]
    )


def _reads_are_the_access_log_and_the_egress(org: Organization, year: DemoYear) -> None:
    reads = AccessEvent.objects.for_org(org)
    assert reads.count() == year.reads > 0
    # Reads of archived priors waited for their restores, which were metered.
    restores = RestoreRequest.objects.for_org(org)
    assert restores.count() == year.restores
    if year.restores:
        assert restores.filter(state=RestoreRequest.State.READY).exists()
        assert UsageEvent.objects.for_org(org).filter(meter="restore.bytes").exists()
    egress = UsageEvent.objects.for_org(org).filter(meter="egress.bytes")
    assert egress.aggregate(s=Sum("quantity"))["s"] == reads.aggregate(s=Sum("bytes"))["s"]
    curve = access_curve(org=org)
    week, year_point = curve.point(7), curve.point(365)
    assert week is not None and week.studies_read > 0
    assert year_point is not None and (week.study_fraction or 0) > (year_point.study_fraction or 0)
    # The cost simulator has something to work on: the active policy costs less than all hot.
    sim = simulate(org=org)
    active, hot = sim.scenario("active"), sim.scenario("all_hot")
    assert active is not None and hot is not None and active.total <= hot.total


def _past_months_are_finalized_invoices_and_the_current_month_a_draft(
    org: Organization, year
) -> None:
    invoices = Invoice.objects.for_org(org).filter(status=Invoice.Status.FINALIZED)
    assert year.invoices == invoices.count() == 11
    months = sorted(i.period_start for i in invoices)
    assert months[0] == month_start(year.go_live)
    assert not invoices.filter(period_start=month_start(datetime.now(UTC))).exists()
    # Every month's invoice bills what the month used: storage in the tiers the index held.
    assert all(i.lines.filter(meter="storage", quantity__gt=0).exists() for i in invoices)
    # Each invoice was finalized after its month's grace days, at that time.
    assert all(i.finalized_at > i.period_start + timedelta(days=28) for i in invoices)
    assert all(i.finalized_at < i.period_start + timedelta(days=40) for i in invoices)
    # Rolled up to now: the chart's last point is today's balance.
    assert (
        Rollup.objects.for_org(org)
        .filter(hour__gte=datetime.now(UTC) - timedelta(hours=3))
        .exists()
    )


def _the_plan_history_has_the_standard_plan_then_the_agreement(
    org: Organization, year: DemoYear
) -> None:
    plans = list(
        Subscription.objects.for_org(org)
        .order_by("starts_at")
        .values_list("plan__code", "starts_at", "ends_at")
    )
    assert [p[0] for p in plans] == ["standard", AGREEMENT_CODE]
    assert plans[0][1] == month_start(year.go_live) and plans[0][2] == plans[1][1]
    assert plans[1][2] is None


def _the_policy_is_active_from_go_live(org: Organization, year: DemoYear) -> None:
    settings = ArchiveSettings.objects.get(organization=org)
    assert settings.active_policy is not None and settings.active_policy.rules == INITIAL_POLICY
    assert settings.active_policy.created_at < year.go_live


def test_the_demo_year_tells_one_story(org: Organization) -> None:
    """One replay (it takes seconds), every part of the story checked against the others."""
    year = demo_year(org=org, studies=30)
    _the_year_reconciles_index_ledger_and_store(org, year)
    _every_row_carries_the_time_it_describes(org, year)
    _reads_are_the_access_log_and_the_egress(org, year)
    _past_months_are_finalized_invoices_and_the_current_month_a_draft(org, year)
    _the_plan_history_has_the_standard_plan_then_the_agreement(org, year)
    _the_policy_is_active_from_go_live(org, year)


def test_the_year_is_replayed_once_and_never_under_a_simulated_ledger(org: Organization) -> None:
    assert not demo_year(org=org, studies=5).skipped
    counts = (Study.objects.for_org(org).count(), AccessEvent.objects.for_org(org).count())
    again = demo_year(org=org, studies=30)
    assert again.skipped
    assert (Study.objects.for_org(org).count(), AccessEvent.objects.for_org(org).count()) == counts

    with pytest.raises(CommandError, match="never on top of an archive"):
        call_command("seed_usage", org=org.slug, months=1, stdout=io.StringIO())
    assert not UsageEvent.objects.for_org(org).filter(idempotency_key__startswith="demo:").exists()
