"""The simulator's recommendation: rules drawn from the access curve, per modality, that pay for
their own fees, and the cheapest of their tiers' combinations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from archive.analytics.curve import AccessCurve, monthly_read_probability
from archive.analytics.simulator.pricing import _Prices, _Usage
from archive.analytics.simulator.results import MONTHS, TIERS
from archive.models import StorageLocation
from archive.storage.tiers import location_serves
from billing.pricing import GIB

# The recommendation: move once so little is read again that the tier's trade-off pays.
RECOMMEND_SHARE = {"warm": 0.25, "cold": 0.10, "archive": 0.02}
RECOMMEND_DAYS = {"warm": (30, 90), "cold": (30, 90, 180), "archive": (180, 365)}
MIN_OBSERVED_STUDIES = 10
MAX_RECOMMENDED_MODALITIES = 6


def _read_shares(curve: AccessCurve) -> dict[str, dict[int, float]]:
    """Bytes re-read shares per modality (with enough observations), and overall under "*"."""

    def shares(points: list[Any]) -> dict[int, float]:
        return {
            p.days: p.bytes_fraction
            for p in points
            if p.bytes_fraction is not None and p.studies_observed >= MIN_OBSERVED_STUDIES
        }

    out = {m: s for m, pts in curve.by_modality.items() if (s := shares(pts))}
    overall = shares(curve.overall)
    if overall:
        out["*"] = overall
    return out


@dataclass(frozen=True)
class _Declined:
    """A move the access curve allows but the fees do not: it would not pay back in a year."""

    modality: str
    tier: str
    days: int
    share: float
    average_bytes: int
    # Per 1,000 images of the modality's average size.
    saving_per_month: Decimal
    transition_fee: Decimal


def recommend(
    *,
    curve: AccessCurve,
    prices: _Prices,
    location: StorageLocation | None,
    modality_bytes: dict[str, int],
    modality_instances: dict[str, int] | None = None,
    declined: list[_Declined] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, float]]]:
    """Rules from the access curve: per modality (largest first), the earliest horizon after
    which few enough bytes are read again for each colder tier; the coldest tier comes first.

    A tier is chosen once the bytes re-read after the horizon fall below its share (warm 25%,
    cold 10%, archive 2%: the colder, the rarer reads must be, since the plan does not price the
    slower and costlier reads of the instant cold tiers and archive reads wait for a restore);
    archive must also pay: its storage saving per GiB must exceed the expected restore fees.
    And every move must pay back its own fees: a transition is charged per object, so for small
    images (a few hundred KB) the storage saved in a year can be less than the transition fee;
    such a move is not recommended and is reported in ``declined`` instead.
    Returns (rules, [(modality, tier, days, share)]).
    """
    served = [
        t for t in ("archive", "cold", "warm") if location is None or location_serves(location, t)
    ]
    shares_by = _read_shares(curve)
    hot_price = prices.unit("storage", "hot")
    rules: list[dict[str, Any]] = []
    chosen: list[tuple[str, str, int, float]] = []
    modalities = sorted(
        (m for m in modality_bytes if m in shares_by), key=lambda m: -modality_bytes[m]
    )[:MAX_RECOMMENDED_MODALITIES]
    for modality in modalities:
        shares = shares_by[modality]
        picked: list[tuple[str, int, float]] = []
        later = math.inf
        for tier in served:  # coldest first, each earlier than the colder one
            options = [
                d
                for d in RECOMMEND_DAYS[tier]
                if d < later and d in shares and shares[d] <= RECOMMEND_SHARE[tier]
            ]
            if not options:
                continue
            days = min(options)
            saving = hot_price - prices.unit("storage", tier)
            restore = Decimal(0)
            if tier == "archive":
                restore = Decimal(str(monthly_read_probability(shares, days + 15))) * (
                    prices.unit("restore.bytes")
                )
                if saving <= restore:
                    continue
            count = (modality_instances or {}).get(modality, 0)
            if count:
                # Per object of the modality's average size: a year of net saving against the
                # one transition fee (priced per 1,000 objects).
                average = Decimal(modality_bytes[modality]) / Decimal(count)
                monthly = average / Decimal(GIB) * (saving - restore)
                fee = prices.unit("tier.transitions", tier) / Decimal(1000)
                if monthly * MONTHS <= fee:
                    if declined is not None:
                        declined.append(
                            _Declined(
                                modality=modality,
                                tier=tier,
                                days=days,
                                share=shares[days],
                                average_bytes=int(average),
                                saving_per_month=monthly * 1000,
                                transition_fee=fee * 1000,
                            )
                        )
                    continue
            picked.append((tier, days, shares[days]))
            later = days
        for tier, days, share in picked:
            rules.append(
                {
                    "name": f"{modality} unread for {days} days to {tier}",
                    "conditions": {
                        "days_since_last_access": {"min": days},
                        "modalities": [modality],
                    },
                    "action": {"type": "move", "tier": tier},
                }
            )
            chosen.append((modality, tier, days, share))
    return rules, chosen


def _cheapest_variant(
    rules: list[dict[str, Any]],
    chosen: list[tuple[str, str, int, float]],
    project: Callable[
        [list[dict[str, Any]]], list[tuple[_Usage, dict[str, Decimal], dict[str, Decimal]]]
    ],
) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, float]]]:
    """Of the recommended rules and the policies made of only some of their tiers (say cold
    alone instead of warm, then cold, then archive), the one whose projection costs least.

    Each tier a rule stacks in front of a colder one costs its own transitions and minimum
    duration; whether that pays depends on the plan's prices and the inventory, so it is
    projected, not assumed. ``rules`` and ``chosen`` are parallel; ties keep the fewer tiers.
    """
    tiers = sorted({tier for _, tier, _, _ in chosen}, key=TIERS.index)
    if len(tiers) < 2:
        return rules, chosen
    best: tuple[Decimal, int, list[int]] | None = None
    for size in range(1, len(tiers) + 1):
        for subset in itertools.combinations(tiers, size):
            keep = [n for n, (_, tier, _, _) in enumerate(chosen) if tier in subset]
            months = project([rules[n] for n in keep])
            total = sum((sum(exact.values(), Decimal(0)) for _, _, exact in months), Decimal(0))
            if best is None or (total, size) < (best[0], best[1]):
                best = (total, size, keep)
    assert best is not None
    return [rules[n] for n in best[2]], [chosen[n] for n in best[2]]
