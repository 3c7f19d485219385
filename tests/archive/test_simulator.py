"""The cost simulator against a small case computed by hand (known sizes, dates and prices).

The case (now = 2026-03-10 12:00 UTC; months April 2026 .. March 2027, the first starting 21.5
days from now):

- study A: CT, 4 instances, 1 GiB, hot, study date 400 days ago, read 30 days ago (on day 370);
- study B: MR, 2 instances, 2 GiB, cold since 20 days (bucket "under 30 days", 15 days as its
  middle), study date 100 days ago, never read; nothing received in the last 90 days.

Access curve: CT is read again after every horizon (A on day 370), MR after none; a re-read of
CT older than 365 days is spread over a year: 1/12 of A's bytes a month.

Plan: storage GiB-month hot 0.02, cold 0.004, archive 0.002; transitions 5 per 1,000 (cold and
archive); restore 0.12 / GiB; egress 0.09 / GiB; early deletion (cold) 0.001 / GiB-day.

- Everything hot: 3 GiB x 0.02 = 0.06 a month; egress 1/12 GiB x 0.09 = 0.0075 -> 0.01. 12 months:
  storage 0.72, egress 0.12.
- Active policy "unread for 90 days -> cold": B is cold already; A (idle bucket 30-59 days,
  45 as middle) is at 45 + 21.5 = 66.5 days in April (stays hot), 96.5 in May: moves, 4
  transitions = 0.02. April: hot 1 GiB = 0.02, cold 2 GiB = 0.008 -> 0.01; May on: cold 3 GiB =
  0.012 -> 0.01. Egress 0.01 a month (cold reads are instant).
- Candidate "MR unread 90 days -> archive; anything 365 days past its study date -> archive":
  both move in April: 6 transitions = 0.03; B leaves cold after 15 + 21.5 = 36.5 of its 90 days:
  early deletion 2 GiB x 53.5 days x 0.001 = 0.107 -> 0.11. Archive 3 GiB x 0.002 = 0.006 ->
  0.01 a month; A's reads now need a restore: 1/12 GiB x 0.12 = 0.01 a month, egress 0.01.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from archive.analytics.curve import AccessCurve
from archive.analytics.simulator import recommendation, results, simulate
from archive.models import ArchiveSettings, PolicyVersion
from billing.meters import GIB
from billing.models import PlanPrice, PricePlan, Subscription
from tests.archive.analytics_helpers import add_study, read

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
D = Decimal

ACTIVE = [
    {
        "conditions": {"days_since_last_access": {"min": 90}},
        "action": {"type": "move", "tier": "cold"},
    }
]
CANDIDATE = [
    {
        "conditions": {"days_since_last_access": {"min": 90}, "modalities": ["MR"]},
        "action": {"type": "move", "tier": "archive"},
    },
    {
        "conditions": {"days_since_study_date": {"min": 365}},
        "action": {"type": "move", "tier": "archive"},
    },
]


@pytest.fixture
def case(org, monkeypatch):
    monkeypatch.setattr(recommendation, "MIN_OBSERVED_STUDIES", 1)
    plan = PricePlan.objects.create(code="sim-test", name="Simulator test", currency="USD")
    for meter, tier, unit in [
        ("storage", "hot", "0.02"),
        ("storage", "cold", "0.004"),
        ("storage", "archive", "0.002"),
        ("tier.transitions", "cold", "5"),
        ("tier.transitions", "archive", "5"),
        ("restore.bytes", "", "0.12"),
        ("egress.bytes", "", "0.09"),
        ("early_deletion", "cold", "0.001"),
    ]:
        PlanPrice.objects.create(plan=plan, meter=meter, tier=tier, unit_price=D(unit))
    Subscription.objects.create(organization=org, plan=plan, starts_at=NOW - timedelta(days=500))
    old = NOW - timedelta(days=400)
    a = add_study(
        org,
        study_date=old.date(),
        received=old,
        series=[("CT", 4, GIB // 4)],
        last_accessed_at=NOW - timedelta(days=30),
    )
    read(org, a, NOW - timedelta(days=30))
    b_at = NOW - timedelta(days=100)
    add_study(
        org,
        study_date=b_at.date(),
        received=b_at,
        series=[("MR", 2, GIB)],
        tier="cold",
        tier_changed_at=NOW - timedelta(days=20),
    )
    version = PolicyVersion.objects.create(organization=org, number=1, rules=ACTIVE)
    ArchiveSettings.objects.update_or_create(organization=org, defaults={"active_policy": version})
    return org


def _totals(scenario):
    return {k: v for k, v in scenario.totals.items() if v}


def test_everything_hot(case):
    sim = simulate(org=case, candidate_rules=CANDIDATE, now=NOW)
    hot = sim.scenario("all_hot")
    assert [m.start.isoformat() for m in hot.months][:2] == ["2026-04-01", "2026-05-01"]
    assert len(hot.months) == 12
    assert all(m.components["storage_hot"] == D("0.06") for m in hot.months)
    assert _totals(hot) == {"storage_hot": D("0.72"), "egress": D("0.12")}
    assert hot.total == D("0.84")
    assert sim.currency == "USD" and sim.plan_code == "sim-test"
    assert sim.instances == 6 and sim.bytes == 3 * GIB


def test_active_policy(case):
    active = simulate(org=case, candidate_rules=CANDIDATE, now=NOW).scenario("active")
    april, may = active.months[0], active.months[1]
    assert april.components["storage_hot"] == D("0.02")
    assert april.bytes_by_tier == {"hot": GIB, "warm": 0, "cold": 2 * GIB, "archive": 0}
    assert may.bytes_by_tier["cold"] == 3 * GIB and may.components["transitions"] == D("0.02")
    assert _totals(active) == {
        "storage_hot": D("0.02"),
        "storage_cold": D("0.12"),
        "transitions": D("0.02"),
        "egress": D("0.12"),
    }
    assert active.total == D("0.28")


def test_candidate_policy_pays_early_deletion_and_restores(case):
    sim = simulate(org=case, candidate_rules=CANDIDATE, now=NOW)
    candidate = sim.scenario("candidate")
    assert candidate.months[0].components["early_deletion"] == D("0.11")
    assert _totals(candidate) == {
        "storage_archive": D("0.12"),
        "transitions": D("0.03"),
        "early_deletion": D("0.11"),
        "restores": D("0.12"),
        "egress": D("0.12"),
    }
    assert candidate.total == D("0.50")
    assert sim.saving("candidate") == D("0.34")


def test_recommendation_explains_itself(case):
    sim = simulate(org=case, now=NOW)
    assert sim.scenario("candidate") is None
    recommended = sim.scenario("recommended")
    # CT is read again after a year (100%): it stays hot. MR is never read again after 30 days.
    assert recommended.rules == [
        {
            "name": "MR unread for 30 days to cold",
            "conditions": {"days_since_last_access": {"min": 30}, "modalities": ["MR"]},
            "action": {"type": "move", "tier": "cold"},
        }
    ]
    (rec,) = sim.recommendations
    # 2 GiB kept in cold instead of hot: 2 x (0.02 - 0.004) = 0.032 a month.
    assert rec.saving_per_month == D("0.03")
    assert rec.text == (
        "MR older than 30 days is read again 0% of the time: moving it to cold saves "
        "$0.03/month, no restores needed (cold is read instantly)."
    )


def test_no_active_policy_means_nothing_moves(org):
    sim = simulate(org=org, now=NOW)
    active = sim.scenario("active")
    assert active.note == "No policy is active: nothing moves."
    assert active.total == D("0.00")


def test_new_ingest_arrives_hot_at_the_recent_rate(org, monkeypatch):
    plan = PricePlan.objects.create(code="sim-ingest", name="Ingest", currency="USD")
    PlanPrice.objects.create(plan=plan, meter="storage", tier="hot", unit_price=D("1"))
    Subscription.objects.create(organization=org, plan=plan, starts_at=NOW - timedelta(days=500))
    # 3 GiB received 10 days ago: 1 GiB a month from now on.
    at = NOW - timedelta(days=10)
    add_study(org, study_date=at.date(), received=at, series=[("CT", 3, GIB)])
    hot = simulate(org=org, now=NOW).scenario("all_hot")
    # Month k: 3 GiB + k GiB arrived before + half of this month's GiB.
    assert [m.components["storage_hot"] for m in hot.months[:3]] == [
        D("3.50"),
        D("4.50"),
        D("5.50"),
    ]
    assert hot.total == sum((D("3.5") + k for k in range(12)), D(0))


def test_other_tenant_inventory_is_not_counted(case, other_org):
    add_study(
        other_org,
        study_date=NOW.date(),
        received=NOW - timedelta(days=400),
        series=[("CT", 1, GIB)],
    )
    assert simulate(org=case, now=NOW).bytes == 3 * GIB


def _rule(tier: str, days: int) -> dict:
    return {
        "name": f"CT to {tier}",
        "conditions": {"days_since_last_access": {"min": days}, "modalities": ["CT"]},
        "action": {"type": "move", "tier": tier},
    }


@pytest.mark.parametrize(
    ("costs", "expected"),
    [
        # Stacking warm in front of cold pays its own transitions: cold alone is cheaper.
        ({("cold", "warm"): "120", ("warm",): "150", ("cold",): "100"}, ["cold"]),
        # Both tiers earn their keep.
        ({("cold", "warm"): "90", ("warm",): "150", ("cold",): "100"}, ["cold", "warm"]),
        # A tie keeps the fewer tiers.
        ({("cold", "warm"): "100", ("warm",): "150", ("cold",): "100"}, ["cold"]),
    ],
    ids=["single-tier-cheaper", "stack-cheaper", "tie"],
)
def test_the_recommendation_keeps_only_the_tiers_that_pay(costs, expected):
    rules = [_rule("cold", 90), _rule("warm", 30)]
    chosen = [("CT", "cold", 90, 0.05), ("CT", "warm", 30, 0.2)]
    projected: list[tuple[str, ...]] = []

    def project(subset: list[dict]) -> list:
        tiers = tuple(sorted(r["action"]["tier"] for r in subset))
        projected.append(tiers)
        half = Decimal(costs[tiers]) / 2  # two months, the total split between them
        return [(None, {}, {"storage": half}), (None, {}, {"storage": half})]

    kept_rules, kept = recommendation._cheapest_variant(rules, chosen, project)
    assert sorted(projected) == sorted(costs)
    assert [tier for _, tier, _, _ in kept] == expected
    assert [r["action"]["tier"] for r in kept_rules] == expected


def test_a_single_tier_recommendation_is_not_projected_again():
    rules, chosen = [_rule("cold", 90)], [("CT", "cold", 90, 0.05)]

    def project(subset: list[dict]) -> list:
        raise AssertionError("nothing to compare")

    assert recommendation._cheapest_variant(rules, chosen, project) == (rules, chosen)


def test_verdict_when_the_active_policy_is_already_the_cheaper_choice(case):
    # Candidate 0.419 over 12 months (0.0349/month), active 0.27 (0.0225), recommended (MR to
    # cold; A stays hot) 0.24 + 0.096 + 0.09 = 0.426 (0.0355): exact amounts, before rounding.
    sim = simulate(org=case, candidate_rules=CANDIDATE, now=NOW)
    assert sim.verdict == (
        "The policy being edited would cost $0.03/month on average, $0.01/month more than the "
        "active policy. The active policy already costs $0.02/month on average, no more than "
        "the recommended rules ($0.04/month): keeping it is the cheaper choice."
    )
    assert sim.as_dict()["verdict"] == sim.verdict


def test_verdict_when_the_recommended_policy_is_cheaper_than_the_active_one(case):
    # B (MR, cold for 20 of its 90 days) archived in April: A hot 0.24, B archived 0.048, 2
    # transitions 0.01, early deletion 0.107, egress 0.09 = 0.495 (0.04125/month) against the
    # recommended 0.426 (0.0355/month).
    rules = [
        {
            "conditions": {"days_since_study_date": {"min": 30}, "modalities": ["MR"]},
            "action": {"type": "move", "tier": "archive"},
        }
    ]
    version = PolicyVersion.objects.create(organization=case, number=2, rules=rules)
    ArchiveSettings.objects.filter(organization=case).update(active_policy=version)
    sim = simulate(org=case, now=NOW)
    assert sim.verdict == (
        "The recommended policy would cost $0.04/month on average, $0.01/month less than the "
        "active policy."
    )


def test_verdict_without_an_active_policy_compares_with_everything_hot(case):
    ArchiveSettings.objects.filter(organization=case).update(active_policy=None)
    sim = simulate(org=case, candidate_rules=ACTIVE, now=NOW)
    assert sim.verdict == (
        "The policy being edited would cost $0.02/month on average, $0.05/month less than "
        "keeping everything hot. The recommended policy would cost $0.04/month on average, "
        "$0.03/month less than keeping everything hot."
    )


def test_verdict_on_a_tie_keeps_the_active_policy(case):
    # Rules that move nothing: A stays hot, B stays cold (never warmed), as the recommended
    # rules leave them (B is cold already, A is read again): the same cost.
    version = PolicyVersion.objects.create(organization=case, number=2, rules=[])
    ArchiveSettings.objects.filter(organization=case).update(active_policy=version)
    sim = simulate(org=case, now=NOW)
    assert sim.scenario("active").exact_total == sim.scenario("recommended").exact_total
    assert sim.verdict.startswith("The active policy already costs $0.04/month on average")


def _flat(key: str, rules: list | None, per_month: str) -> results.Scenario:
    month = results.MonthCost(
        start=NOW.date(),
        components={"storage_hot": D("0.00")},
        exact={"storage_hot": D(per_month)},
        bytes_by_tier={},
    )
    return results.Scenario(key=key, label=key, rules=rules, months=[month] * 12)


def _verdict(*scenarios: results.Scenario) -> str:
    return results.Simulation(
        as_of=NOW,
        currency="USD",
        plan_code="p",
        month_starts=[NOW.date()] * 12,
        scenarios=list(scenarios),
        recommendations=[],
        curve=AccessCurve(as_of=NOW, horizons=(), overall=[]),
        instances=0,
        bytes=0,
        buckets=0,
        ingest_bytes_per_month=0,
    ).verdict


@pytest.mark.parametrize(
    ("hot", "active", "recommended", "verdict"),
    [
        # A tiny inventory: fractions of a cent, to 4 decimals.
        (
            "0.0055",
            "0.0031",
            "0.0027",
            "The recommended policy would cost $0.0027/month on average, $0.0004/month less "
            "than the active policy.",
        ),
        # A difference below the cent shown is no difference.
        (
            "500",
            "412.751",
            "412.748",
            "The recommended policy would cost $412.75/month on average, the same as the active "
            "policy.",
        ),
    ],
)
def test_verdict_speaks_at_the_precision_of_the_amounts(hot, active, recommended, verdict):
    assert (
        _verdict(
            _flat("all_hot", None, hot),
            _flat("active", ACTIVE, active),
            _flat("recommended", ACTIVE, recommended),
        )
        == verdict
    )
