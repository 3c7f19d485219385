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
from archive.policies.validate import rules_validate
from archive.policies.versions import policy_active
from billing.meters import GIB
from billing.models import PlanPrice, PricePlan, Subscription
from billing.pricing import round_money
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


# --- prefetches ---------------------------------------------------------------------------------
#
# The case: PAT-1 has a CT prior of 1 GiB in the archive tier (400 days old); in the last 90 days
# PAT-1 got a new CT study of 2 GiB and PAT-2 one of 1 GiB (both hot, no prior). Replayed, the rule
# names 1 GiB of archived priors for one arrival of two: GIB // 2 bytes per new study; 2 arrivals
# in 90 days are 2/3 of a study a month: (GIB // 2) x 2 x 30 // 90 bytes a month at today's tiers,
# where 1 GiB of 4 is archived (a share of 1/4). Growth: 3 GiB in 90 days, 1 GiB a month, hot,
# half of it in its first month. Restores cost 30 a GiB; nothing is read again (no access log).

RESTORE_PRICE = D("30")
PER_MONTH = (GIB // 2) * 2 * 30 // 90


def prefetch_rule(cap: str = "1000.00", **conditions) -> dict:
    return {
        "name": "Priors",
        "conditions": conditions or {"same_modality": True, "last_studies": 3},
        "action": {"type": "prefetch", "keep_days": 14, "monthly_cap": cap},
    }


ARCHIVE_EVERYTHING = {
    "conditions": {"days_since_study_date": {"min": 0}},
    "action": {"type": "move", "tier": "archive"},
}


def _activate(org, rules: list[dict]) -> None:
    version = PolicyVersion.objects.create(
        organization=org,
        number=PolicyVersion.objects.filter(organization=org).count() + 1,
        rules=rules_validate(org=org, rules=rules),
    )
    ArchiveSettings.objects.update_or_create(organization=org, defaults={"active_policy": version})


@pytest.fixture
def priors(org):
    plan = PricePlan.objects.create(code="sim-prefetch", name="Prefetch", currency="USD")
    for meter, tier, unit in [
        ("storage", "hot", "0.02"),
        ("storage", "archive", "0.002"),
        ("restore.bytes", "", str(RESTORE_PRICE)),
    ]:
        PlanPrice.objects.create(plan=plan, meter=meter, tier=tier, unit_price=D(unit))
    Subscription.objects.create(organization=org, plan=plan, starts_at=NOW - timedelta(days=500))
    old = NOW - timedelta(days=400)
    add_study(
        org,
        patient_id="PAT-1",
        study_date=old.date(),
        received=old,
        series=[("CT", 1, GIB)],
        tier="archive",
        tier_changed_at=NOW - timedelta(days=300),
    )
    for patient, days, count in [("PAT-1", 10, 2), ("PAT-2", 20, 1)]:
        at = NOW - timedelta(days=days)
        add_study(
            org, patient_id=patient, study_date=at.date(), received=at, series=[("CT", count, GIB)]
        )
    _activate(org, [prefetch_rule()])
    return org


def _expected_bytes(archive_gib: list[float], total_gib: list[float]) -> list[int]:
    """Each month's prefetched bytes: the preview's figure scaled by the archive share."""
    return [round(PER_MONTH * (a / t) / 0.25) for a, t in zip(archive_gib, total_gib, strict=True)]


def _cost(n: int) -> D:
    return D(n) / D(GIB) * RESTORE_PRICE


def test_the_active_prefetch_rule_is_a_monthly_cost_scaled_by_the_archive_share(priors):
    sim = simulate(org=priors, now=NOW)
    active = sim.scenario("active")

    # Nothing moves: 1 GiB archived of 3 GiB + k earlier months + half of this month's arrivals.
    expected = _expected_bytes([1.0] * 12, [4.5 + k for k in range(12)])
    assert [m.prefetch_bytes for m in active.months] == expected
    for month, n in zip(active.months, expected, strict=True):
        assert abs(month.exact["prefetches"] - _cost(n)) < D("0.000001")
        assert month.components["prefetches"] == round_money(_cost(n))
    assert active.months[0].components["prefetches"] == D("8.89")  # 40 / 4.5
    assert active.totals["prefetches"] == sum((round_money(_cost(n)) for n in expected), D("0.00"))
    assert active.totals["prefetches"] > 0
    assert active.total == sum(active.totals.values(), D("0.00"))
    basis = active.prefetch
    assert basis is not None
    assert (basis.studies_per_month, basis.archive_bytes_per_study) == (0.67, GIB // 2)
    assert (basis.bytes_per_month, basis.archive_share_today) == (PER_MONTH, 0.25)
    assert basis.monthly_cap == D("1000.00")
    assert "0.7 new studies a month" in basis.note and "at most $1,000.00 a month" in basis.note
    # The re-reads' restores are their own line (none here: nothing is read again).
    assert active.totals["restores"] == 0


def test_the_same_estimate_as_the_policy_preview(priors):
    from archive.policies.preview import policy_preview

    preview = policy_preview(org=priors, rules=[prefetch_rule()], now=NOW)
    basis = simulate(org=priors, now=NOW).scenario("active").prefetch
    assert preview.prefetch is not None and basis is not None
    assert preview.prefetch.bytes_per_month == basis.bytes_per_month == PER_MONTH
    assert preview.prefetch.bytes_per_arrival == basis.archive_bytes_per_study


def test_prefetches_stop_at_the_monthly_cap(priors):
    # 40 / 4.5 = 8.89, 7.27, 6.15, 5.33 in the first four months: cut to 5.00; then below it.
    sim = simulate(org=priors, candidate_rules=[prefetch_rule(cap="5.00")], now=NOW)
    candidate = sim.scenario("candidate")
    expected = _expected_bytes([1.0] * 12, [4.5 + k for k in range(12)])
    amounts = [m.components["prefetches"] for m in candidate.months]
    assert amounts == [min(round_money(_cost(n)), D("5.00")) for n in expected]
    assert amounts[:4] == [D("5.00")] * 4 and amounts[4] == D("4.71")
    assert all(m.exact["prefetches"] <= D("5.00") for m in candidate.months)
    # The bytes are what the rule would name; the cap cuts the cost (prefetching stops there).
    assert [m.prefetch_bytes for m in candidate.months] == expected


def test_a_policy_that_archives_more_prefetches_more(priors):
    # Everything archived at each month's start; only this month's arrivals are hot.
    sim = simulate(org=priors, candidate_rules=[ARCHIVE_EVERYTHING, prefetch_rule()], now=NOW)
    candidate, active = sim.scenario("candidate"), sim.scenario("active")
    expected = _expected_bytes([4.0 + k for k in range(12)], [4.5 + k for k in range(12)])
    assert [m.prefetch_bytes for m in candidate.months] == expected
    assert [m.components["prefetches"] for m in candidate.months] == [
        round_money(_cost(n)) for n in expected
    ]
    assert candidate.totals["prefetches"] > active.totals["prefetches"]


def test_everything_hot_and_a_policy_without_a_rule_prefetch_nothing(priors):
    sim = simulate(org=priors, candidate_rules=[ARCHIVE_EVERYTHING], now=NOW)
    hot, candidate = sim.scenario("all_hot"), sim.scenario("candidate")
    for scenario in (hot, candidate):
        assert scenario.prefetch is None
        assert all(m.components["prefetches"] == 0 for m in scenario.months)
        assert all(m.prefetch_bytes == 0 for m in scenario.months)
        assert scenario.totals["prefetches"] == 0
    row = next(r for r in sim.component_rows() if r["key"] == "prefetches")
    assert row["label"] == "Prefetches"
    assert [s.key for s in sim.scenarios] == ["all_hot", "active", "candidate", "recommended"]
    assert row["values"][0] == row["values"][2] == 0 and row["values"][1] > 0


def test_no_prefetch_rule_anywhere_shows_no_prefetch_line(case):
    sim = simulate(org=case, candidate_rules=CANDIDATE, now=NOW)
    assert "prefetches" not in [r["key"] for r in sim.component_rows()]
    assert all(s.prefetch is None and s.totals["prefetches"] == 0 for s in sim.scenarios)
    assert sim.prefetch_notes() == []
    data = sim.as_dict()
    assert all(s["prefetch"] is None for s in data["scenarios"])
    assert data["scenarios"][2]["months"][0]["components"]["prefetches"] == "0.00"


def test_the_recommended_policy_keeps_the_active_prefetch_rule(priors):
    sim = simulate(org=priors, now=NOW)
    active, recommended = sim.scenario("active"), sim.scenario("recommended")
    kept = policy_active(org=priors).rules[-1]
    # Nothing is read: no move to recommend, the prefetch rule is kept (and said to be).
    assert recommended.rules == [kept]
    assert recommended.note == (
        "Not enough access history to recommend moves yet. Keeps the active policy's prefetch rule."
    )
    assert recommended.prefetch == active.prefetch
    assert recommended.totals["prefetches"] == active.totals["prefetches"] > 0
    # A prefetch rule alone is no recommendation to weigh against the active policy.
    assert sim.verdict == ""


def test_the_recommended_moves_come_first_and_the_kept_prefetch_rule_last(case):
    _activate(case, [*ACTIVE, prefetch_rule()])
    sim = simulate(org=case, now=NOW)
    recommended = sim.scenario("recommended")
    assert recommended.rules is not None
    assert [r["action"]["type"] for r in recommended.rules] == ["move", "prefetch"]
    assert recommended.rules[0]["name"] == "MR unread for 30 days to cold"
    assert recommended.note == "Keeps the active policy's prefetch rule."
    # The explanation of the move rule is unchanged by the rule kept after it.
    (rec,) = sim.recommendations
    assert rec.saving_per_month == D("0.03")


def test_nothing_archived_today_projects_no_prefetch_and_says_why(org):
    at = NOW - timedelta(days=10)
    add_study(org, patient_id="P", study_date=at.date(), received=at, series=[("CT", 1, GIB)])
    _activate(org, [prefetch_rule()])
    sim = simulate(org=org, candidate_rules=[ARCHIVE_EVERYTHING, prefetch_rule()], now=NOW)
    candidate = sim.scenario("candidate")
    assert candidate.totals["prefetches"] == 0
    assert candidate.prefetch is not None
    assert candidate.prefetch.note.startswith("Prefetches: nothing is in the archive tier today")
    [note] = sim.prefetch_notes()
    assert note["scenarios"] == "Active policy, Candidate policy, Recommended policy"


def test_the_estimate_runs_once_for_scenarios_sharing_the_rule(priors, monkeypatch):
    from archive.analytics.simulator import prefetch as prefetch_module

    calls = []
    original = prefetch_module.prefetch_estimate

    def counting(**kwargs):
        calls.append(kwargs["rule"])
        return original(**kwargs)

    monkeypatch.setattr(prefetch_module, "prefetch_estimate", counting)
    simulate(org=priors, candidate_rules=[prefetch_rule(cap="5.00")], now=NOW)
    assert len(calls) == 1
