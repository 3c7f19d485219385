"""The simulator's projection: the rules evaluated on the inventory's buckets month by month (the
engine's semantics), and each month's usage priced."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from archive.analytics.curve import monthly_read_probability
from archive.analytics.simulator.inventory import Bucket
from archive.analytics.simulator.prefetch import _PrefetchModel
from archive.analytics.simulator.pricing import _price_month, _Prices, _Usage
from archive.policies.python import CompiledRule
from archive.storage.tiers import TIER_CATALOG, is_colder


@dataclass
class _RuleEffect:
    """What one rule did in a scenario, summed over the months (for the explanations)."""

    byte_months: float = 0.0
    restore_bytes: float = 0.0


def _project(
    *,
    rules: list[dict[str, Any]] | None,
    buckets: list[Bucket],
    shifts: list[float],
    read_share: dict[str, dict[int, float]],
    prices: _Prices,
    grace_days: int,
    all_hot: bool = False,
    probability_cache: dict[tuple[str, float], float] | None = None,
    prefetch: _PrefetchModel | None = None,
) -> tuple[list[tuple[_Usage, dict[str, Decimal], dict[str, Decimal]]], dict[int, _RuleEffect]]:
    """Each month's usage and its price under ``rules`` (``all_hot``: none, nothing leaves hot).
    ``prefetch``: the scenario's prefetch rule, whose restores follow each month's archive-tier
    share of the bytes (``archive.analytics.simulator.prefetch``)."""
    compiled = [CompiledRule(i, r) for i, r in enumerate(rules or [])]
    # Buckets of one modality and age share their read probability, in every scenario.
    probabilities = probability_cache if probability_cache is not None else {}

    def read_probability(modality: str, age: float) -> float:
        key = (modality, age)
        if key not in probabilities:
            share = read_share.get(modality) or read_share.get("*") or {}
            probabilities[key] = monthly_read_probability(share, age)
        return probabilities[key]

    moves = [c for c in compiled if c.action.get("type") == "move"]
    deletes = [c for c in compiled if c.action.get("type") == "delete"]
    # Per bucket, the rules whose conditions that time does not change it meets (in their
    # order: the first matching move rule decides); each month compares only days and years.
    moves_of = [[r for r in moves if r.matches_always(b)] for b in buckets]
    deletes_of = [[r for r in deletes if r.matches_always(b)] for b in buckets]
    # Per bucket: tier, day of entering it (relative to now), trashed-at shift.
    tier = ["hot" if all_hot else b.tier for b in buckets]
    entered = [-b.in_tier for b in buckets]
    trashed: list[float | None] = [None] * len(buckets)
    gone = [False] * len(buckets)
    effects: dict[int, _RuleEffect] = defaultdict(_RuleEffect)
    months: list[tuple[_Usage, dict[str, Decimal], dict[str, Decimal]]] = []
    for k, shift in enumerate(shifts):
        usage = _Usage()
        for i, b in enumerate(buckets):
            if gone[i] or (b.arrives > k):
                continue
            if b.arrives == k:
                usage.storage["hot"] += b.bytes / 2
                usage.ingest_bytes += b.bytes
                usage.ingest_instances += b.instances
                continue
            minimum = TIER_CATALOG[tier[i]].minimum_storage_days
            stayed = shift - entered[i]
            t_at = trashed[i]
            if t_at is not None and shift >= t_at + grace_days:
                usage.early[tier[i]] += b.bytes * max(minimum - stayed, 0)
                gone[i] = True
                continue
            if t_at is None and not b.held:
                for rule in deletes_of[i]:
                    after = rule.action.get("after_days", 0)
                    if b.age + shift >= after and rule.matches_at(b, shift):
                        trashed[i] = shift
                        break
            target: CompiledRule | None = None
            for rule in moves_of[i]:
                if rule.matches_at(b, shift):
                    target = rule
                    break
            if target is not None and is_colder(target.action["tier"], tier[i]):
                usage.early[tier[i]] += b.bytes * max(minimum - stayed, 0)
                usage.transitions[target.action["tier"]] += b.instances
                tier[i] = target.action["tier"]
                entered[i] = shift
            usage.storage[tier[i]] += b.bytes
            reads = b.bytes * read_probability(b.modality, b.age + shift + 15)
            usage.egress += reads
            if tier[i] == "archive":
                usage.restore += reads
            if target is not None and tier[i] == target.action["tier"]:
                # The rule that keeps these bytes where they are (moved now or before).
                effect = effects[target.index]
                effect.byte_months += b.bytes
                if tier[i] == "archive":
                    effect.restore_bytes += reads
        cap = None
        if prefetch is not None and not all_hot:
            usage.prefetch = prefetch.bytes_in(usage)
            cap = prefetch.monthly_cap
        months.append((usage, *_price_month(prices, usage, prefetch_cap=cap)))
    return months, effects
