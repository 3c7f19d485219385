"""The cost simulator: what an organization's archive will cost over the next 12 months under a
policy, priced with its own plan, from its real inventory and its real access curve.

Scenarios: (a) everything stays hot, (b) the active policy, (c) a candidate policy (the one being
edited), (d) a policy recommended here from the access curve. The model, month by month (the next
12 calendar months, each evaluated at its first instant):

- Inventory: the index aggregated in SQL into small buckets (modality of the series x current tier
  x days since the study date x days since the last read x days in the current tier, plus SOP
  class, study description, patient age or legal hold when a rule looks at them). Day ranges are
  cut at every threshold the rules use, so today's decisions are exact; a bucket ages as a whole
  and is represented by the middle of its range.
- Policy: at each month's start every bucket is evaluated with the rule semantics of the engine:
  the first matching move rule decides the target, data only ever moves colder; delete rules
  trash whole buckets whose retention has passed (never under legal hold) and the bytes go after
  the trash grace period. Moves cost a transition per instance (by target tier); leaving a tier
  before its minimum storage duration costs early deletion for the days still owed.
- Reads: the share of a bucket's bytes read in a month comes from the modality's access curve
  (bytes), see ``archive.analytics.curve.monthly_read_probability``; every re-read is egress, and a
  re-read of archive-tier bytes is also a restore of those bytes. Re-reads are priced but do not
  reset a bucket's last-access clock (at the rates seen, a few percent a month at most, this errs
  towards moving slightly more than the engine will).
- Growth: new images arrive at the organization's rate of the last 90 days (bytes and instances
  per modality, from the index), land hot, are stored half of their first month on average and
  then age like the rest. Ingest (``ingest.bytes``/``ingest.instances``) is priced too: the same
  in every scenario, it keeps the totals comparable with the invoices.
- Prefetches: a scenario whose policy has a prefetch rule restores the priors it names as new
  studies arrive. Each month: the studies expected (the last 90 days' arrival rate, the window of
  growth) times the archive-tier bytes the rule's priors of one new study have today (the policy
  preview's estimate, ``archive.policies.preview.prefetch_estimate``), scaled by the scenario's
  share of bytes in the archive tier that month against today's share (a scenario that never
  archives restores nothing); priced as ``restore.bytes`` on top of the re-reads' restores, at
  most the rule's monthly cap; its own component, "Prefetches". Everything hot has none; the
  candidate uses its own rule; the recommended policy keeps the active policy's. The scaling is an
  honest limit: it assumes priors are archived like everything else (they are often recent), and
  with nothing archived today it projects nothing; see ``prefetch``.
- Prices: the organization's plan in force now (its subscription, or the default plan), exactly
  as an invoice prices each meter and tier (allowances, graduated tiers); each month's component
  is rounded once, like an invoice line. Minimum commitments, API requests and compute are left
  out: no policy changes them.

The package: ``inventory`` (the index as buckets, in SQL, and the ingest rate), ``pricing`` (the
plan in force, a month's usage priced), ``prefetch`` (a scenario's prefetch rule as restores each
month), ``projection`` (the rules on the buckets, month by month),
``recommendation`` (rules from the access curve) and ``results`` (what a simulation returns, and
amounts as shown); ``simulate`` here ties them together. Names with a leading underscore are the
package's own: its modules share them, nothing outside the package imports them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from archive.analytics.curve import access_curve
from archive.analytics.simulator.inventory import Bucket, _inventory, ingest_rate
from archive.analytics.simulator.prefetch import (
    ARCHIVE,
    _Prefetches,
    _PrefetchModel,
    prefetch_rule_of,
)
from archive.analytics.simulator.pricing import _Usage, plan_prices
from archive.analytics.simulator.projection import _project, _RuleEffect
from archive.analytics.simulator.recommendation import (
    _cheapest_variant,
    _Declined,
    _read_shares,
    recommend,
)
from archive.analytics.simulator.results import (
    MONTHS,
    SCENARIO_LABELS,
    TIERS,
    MonthCost,
    PrefetchBasis,
    Recommendation,
    Scenario,
    Simulation,
    _money,
)
from archive.index.selectors import archive_settings_get
from archive.models import ArchiveSettings, StorageLocation
from billing.pricing import GIB, month_start, next_month, round_money
from tenants.labels import bytes_label
from tenants.models import Organization

logger = logging.getLogger(__name__)

# A scenario's prefetch rule in the projection and as the results show it; None: no rule.
_Prefetch = tuple[_PrefetchModel, PrefetchBasis] | None


def _policy_rules(org: Organization) -> tuple[list[dict[str, Any]] | None, ArchiveSettings]:
    settings = archive_settings_get(org=org)
    if settings.active_policy is None:
        return None, settings
    return list(settings.active_policy.rules or []), settings


def simulate(
    *,
    org: Organization,
    candidate_rules: list[dict[str, Any]] | None = None,
    months: int = MONTHS,
    now: datetime | None = None,
) -> Simulation:
    """Project the next ``months`` calendar months under the four scenarios (see the module
    docstring). ``candidate_rules`` must already be validated (``archive.policies.validate.rules_validate``)."""
    started = time.perf_counter()
    now = now or timezone.now()
    active_rules, settings = _policy_rules(org)
    grace = settings.trash_grace_days
    location = (
        StorageLocation.objects.for_org(org).filter(role=StorageLocation.Role.PRIMARY).first()
    )
    prices = plan_prices(org=org, now=now)
    rate = ingest_rate(org=org, now=now)

    # The recommended rules' thresholds are horizons, already among the buckets' cuts.
    all_rules = [*(active_rules or []), *(candidate_rules or [])]
    buckets, instances, total_bytes, shared_curve = _inventory(
        org=org, now=now, rules=all_rules, with_curve=True
    )
    curve = shared_curve if shared_curve is not None else access_curve(org=org, now=now)
    modality_bytes: dict[str, int] = defaultdict(int)
    modality_instances: dict[str, int] = defaultdict(int)
    for b in buckets:
        modality_bytes[b.modality] += b.bytes
        modality_instances[b.modality] += b.instances
    declined: list[_Declined] = []
    recommended_rules, chosen = recommend(
        curve=curve,
        prices=prices,
        location=location,
        modality_bytes=modality_bytes,
        modality_instances=modality_instances,
        declined=declined,
    )

    starts: list[datetime] = []
    cursor = next_month(month_start(now))
    for _ in range(months):
        starts.append(cursor)
        cursor = next_month(cursor)
    shifts = [(s - now).total_seconds() / 86400 for s in starts]
    cohorts = [
        Bucket(
            modality=m,
            tier="hot",
            age=-(shifts[k] + 15),
            idle=-(shifts[k] + 15),
            in_tier=-(shifts[k] + 15),
            bytes=b,
            instances=n,
            arrives=k,
        )
        for k in range(months)
        for m, (b, n) in rate.items()
        if b or n
    ]
    # Cohorts' unknown attributes (description, age...) match no rule that asks for them.
    everything = buckets + cohorts
    read_share = _read_shares(curve)
    probabilities: dict[tuple[str, float], float] = {}

    def project(
        rules: list[dict[str, Any]] | None,
        *,
        all_hot: bool = False,
        prefetch: _PrefetchModel | None = None,
    ) -> tuple[list[tuple[_Usage, dict[str, Decimal], dict[str, Decimal]]], dict[int, _RuleEffect]]:
        return _project(
            rules=rules,
            buckets=everything,
            shifts=shifts,
            read_share=read_share,
            prices=prices,
            grace_days=grace,
            all_hot=all_hot,
            probability_cache=probabilities,
            prefetch=prefetch,
        )

    # Each scenario's prefetch rule: the active policy's, the candidate's own, and for the
    # recommended policy the active policy's, kept (the access curve says nothing about priors).
    prefetches = _Prefetches(
        org=org,
        now=now,
        archive_bytes=sum(b.bytes for b in buckets if b.tier == ARCHIVE),
        total_bytes=total_bytes,
        currency=prices.currency,
    )
    active_prefetch = prefetches.model(active_rules)
    active_prefetch_rule = prefetch_rule_of(active_rules)
    recommended_rules, chosen = _cheapest_variant(
        recommended_rules,
        chosen,
        lambda rules: project(rules, prefetch=active_prefetch and active_prefetch[0])[0],
    )

    scenarios: list[Scenario] = []
    effects_recommended: dict[int, _RuleEffect] = {}
    recommended_note = (
        "" if recommended_rules else "Not enough access history to recommend moves yet."
    )
    if active_prefetch_rule is not None:
        # Appended after the move rules, whose indices the explanations below use.
        recommended_rules = [*recommended_rules, active_prefetch_rule]
        recommended_note = f"{recommended_note} Keeps the active policy's prefetch rule.".lstrip()
    plan: list[tuple[str, list[dict[str, Any]] | None, str, _Prefetch]] = [
        ("all_hot", None, "Nothing moves; every byte is billed as hot storage.", None),
        (
            "active",
            active_rules or [],
            "" if active_rules is not None else "No policy is active: nothing moves.",
            active_prefetch,
        ),
    ]
    if candidate_rules is not None:
        plan.append(("candidate", candidate_rules, "", prefetches.model(candidate_rules)))
    plan.append(("recommended", recommended_rules, recommended_note, active_prefetch))
    for key, rules, note, prefetch in plan:
        projected, effects = project(
            rules, all_hot=key == "all_hot", prefetch=prefetch[0] if prefetch else None
        )
        if key == "recommended":
            effects_recommended = effects
        scenario = Scenario(
            key=key,
            label=SCENARIO_LABELS[key],
            rules=rules,
            note=note,
            prefetch=prefetch[1] if prefetch else None,
        )
        for start, (usage, components, exact) in zip(starts, projected, strict=True):
            scenario.months.append(
                MonthCost(
                    start=start.date(),
                    components=components,
                    exact=exact,
                    bytes_by_tier={t: round(usage.storage.get(t, 0)) for t in TIERS},
                    prefetch_bytes=usage.prefetch,
                )
            )
        scenarios.append(scenario)

    recommendations = []
    gib = Decimal(GIB)
    hot_price = prices.unit("storage", "hot")
    for index, (modality, tier, days, share) in enumerate(chosen):
        effect = effects_recommended.get(index, _RuleEffect())
        saving = (
            Decimal(round(effect.byte_months / months))
            / gib
            * (hot_price - prices.unit("storage", tier))
        )
        restore = Decimal(round(effect.restore_bytes / months)) / gib * prices.unit("restore.bytes")
        restore_text = (
            f"restores would cost {_money(restore, prices.currency)}/month"
            if tier == "archive"
            else f"no restores needed ({tier} is read instantly)"
        )
        recommendations.append(
            Recommendation(
                modality=modality,
                tier=tier,
                days=days,
                reread_share=share,
                saving_per_month=round_money(saving),
                restore_per_month=round_money(restore),
                text=(
                    f"{modality or 'Other'} older than {days} days is read again "
                    f"{share * 100:.0f}% of the time: moving it to {tier} saves "
                    f"{_money(saving, prices.currency)}/month, {restore_text}."
                ),
            )
        )
    recommended_modalities = {modality for modality, _, _, _ in chosen}
    explained: set[str] = set()
    for d in declined:
        # One line per modality left hot: its warmest refused move, the cheapest to make.
        if d.modality in recommended_modalities or d.modality in explained:
            continue
        explained.add(d.modality)
        recommendations.append(
            Recommendation(
                modality=d.modality,
                tier="hot",
                days=d.days,
                reread_share=d.share,
                saving_per_month=Decimal(0),
                restore_per_month=Decimal(0),
                text=(
                    f"{d.modality or 'Other'} older than {d.days} days is read again "
                    f"{d.share * 100:.0f}% of the time, but its images average "
                    f"{bytes_label(d.average_bytes)}: moving 1,000 of them to {d.tier} would save "
                    f"{_money(d.saving_per_month, prices.currency)}/month and cost "
                    f"{_money(d.transition_fee, prices.currency)} in transition fees, more than "
                    "a year of savings. Keeping them hot is cheaper."
                ),
            )
        )
    simulation = Simulation(
        as_of=now,
        currency=prices.currency,
        plan_code=prices.plan_code,
        month_starts=[s.date() for s in starts],
        scenarios=scenarios,
        recommendations=recommendations,
        curve=curve,
        instances=instances,
        bytes=total_bytes,
        buckets=len(buckets),
        ingest_bytes_per_month=sum(b for b, _ in rate.values()),
    )
    simulation.seconds = time.perf_counter() - started
    logger.info(
        "simulated org %s: %d buckets, %d instances in %.3f s",
        org.pk,
        len(buckets),
        instances,
        simulation.seconds,
    )
    return simulation
