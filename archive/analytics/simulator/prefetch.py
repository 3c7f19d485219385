"""The simulator's prefetches: the archive-tier priors a scenario's prefetch rule restores each
month, ahead of the reads.

The basis is the policy preview's own estimate (``archive.policies.preview.prefetch_estimate``):
the rule replayed on the studies that arrived in the last 90 days (the window the growth's ingest
rate is taken from) gives the archive-tier bytes of the priors it names for one new study at
today's tiers, and those arrivals per 30 days the studies expected each month; their product is
what a month of arrivals brings back, the preview's figure. A scenario's rules keep more or fewer
bytes in the archive tier than there are today: each month that figure is scaled by the
scenario's archive-tier share of the bytes (its average over the month) against today's share.
Priced as ``restore.bytes`` on top of the re-reads' restores, each month at most the rule's
monthly cap (``pricing._price_month``).

Honest limits: the scaling assumes the priors a rule names are archived in the same proportion as
everything else, while priors are often recent studies and a policy may archive only some
modalities; with nothing in the archive tier today there is no archived prior to replay the rule
on, so no prefetch cost is projected even for a policy that would archive (the note says so);
arrivals keep the last 90 days' rate, like growth; orders posted by integrations, and copies
still readable from an earlier restore, are left to the preview's own limits (not counted, and
counted as needing a restore); the re-reads of prefetched priors are still counted as restores in
"Restores", so a scenario with a prefetch rule errs towards costing more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from archive.analytics.simulator.pricing import _Usage
from archive.analytics.simulator.results import PrefetchBasis, _money
from archive.policies.preview import PREFETCH_WINDOW_DAYS, prefetch_estimate
from archive.restores.selectors import PrefetchRule, prefetch_rule_parse
from tenants.labels import bytes_label
from tenants.models import Organization

# The tier whose bytes a prefetch restores (the estimate counts a prior's bytes in it).
ARCHIVE = "archive"


@dataclass(frozen=True)
class _PrefetchModel:
    """A scenario's prefetch rule in the projection: ``bytes_per_month`` at today's archive-tier
    share ``share_today``, cut each month at ``monthly_cap``."""

    bytes_per_month: int
    share_today: float
    monthly_cap: Decimal

    def bytes_in(self, usage: _Usage) -> int:
        """The month's prefetched bytes at the scenario's archive-tier share that month."""
        total = sum(usage.storage.values())
        if total <= 0 or self.share_today <= 0 or not self.bytes_per_month:
            return 0
        share = usage.storage.get(ARCHIVE, 0) / total
        return round(self.bytes_per_month * share / self.share_today)


def prefetch_rule_of(rules: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The prefetch rule among ``rules`` (a policy has one at most), as stored."""
    return next((r for r in rules or [] if prefetch_rule_parse(r) is not None), None)


class _Prefetches:
    """The scenarios' prefetch models; the estimate (a hundred small queries at most) runs once
    per distinct choice of priors, however many scenarios carry the rule."""

    def __init__(
        self,
        *,
        org: Organization,
        now: datetime,
        archive_bytes: int,
        total_bytes: int,
        currency: str,
    ) -> None:
        self.org = org
        self.now = now
        self.share_today = archive_bytes / total_bytes if total_bytes > 0 else 0.0
        self.currency = currency
        self._estimates: dict[PrefetchRule, tuple[int, int, int, int]] = {}

    def model(
        self, rules: list[dict[str, Any]] | None
    ) -> tuple[_PrefetchModel, PrefetchBasis] | None:
        """None when ``rules`` have no prefetch rule."""
        rule = prefetch_rule_parse(prefetch_rule_of(rules))
        if rule is None:
            return None
        # The priors depend on the conditions only, not on the name, the days or the cap.
        key = replace(rule, name="", keep_days=0, monthly_cap=Decimal(0))
        if key not in self._estimates:
            self._estimates[key] = prefetch_estimate(org=self.org, rule=rule, now=self.now)
        arrivals, sampled, per_study, per_month = self._estimates[key]
        studies_per_month = arrivals * 30 / PREFETCH_WINDOW_DAYS
        cap = _money(rule.monthly_cap, self.currency)
        if self.share_today <= 0:
            note = (
                "Prefetches: nothing is in the archive tier today, so there is no archived "
                "prior to replay the prefetch rule on and no prefetch cost is projected "
                f"(the rule would stop at {cap} a month)."
            )
        else:
            note = (
                f"Prefetches: {studies_per_month:,.1f} new studies a month (the rate of the last "
                f"{PREFETCH_WINDOW_DAYS} days), each bringing back "
                f"{bytes_label(per_study)} of archived priors at today's tiers (the prefetch rule "
                f"replayed on the latest {sampled:,} arrivals), scaled each month by the "
                "policy's share of bytes in the archive tier against today's "
                f"{self.share_today:.1%}; at most {cap} a month."
            )
        basis = PrefetchBasis(
            monthly_cap=rule.monthly_cap,
            studies_per_month=round(studies_per_month, 2),
            archive_bytes_per_study=per_study,
            bytes_per_month=per_month,
            archive_share_today=round(self.share_today, 6),
            note=note,
        )
        return _PrefetchModel(per_month, self.share_today, rule.monthly_cap), basis
