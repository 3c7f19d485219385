"""The simulator's results: the scenarios' monthly costs, the recommendations, the verdict, and
amounts as the portal and the API show them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from archive.analytics.charts import simulation_chart
from archive.analytics.curve import AccessCurve
from archive.storage.tiers import TIER_CATALOG
from billing.pricing import round_money
from tenants.labels import money_label

TIERS = tuple(TIER_CATALOG)
MONTHS = 12

COMPONENTS: dict[str, str] = {
    **{f"storage_{t}": f"Storage ({t})" for t in TIERS},
    "transitions": "Tier transitions",
    "restores": "Restores",
    "prefetches": "Prefetches",
    "early_deletion": "Early deletion",
    "egress": "Egress",
    "ingest": "Ingest",
}
SCENARIO_LABELS = {
    "all_hot": "Everything hot",
    "active": "Active policy",
    "candidate": "Candidate policy",
    "recommended": "Recommended policy",
}


SUBCENT = Decimal("0.0001")


def money_text(amount: Decimal, exact: Decimal | None = None) -> str:
    """An amount for display: to the cent, like an invoice; when that shows 0.00 but the exact
    figure is not zero (tiny images), the exact figure to 4 decimals ("0.0032"), or "<0.0001"."""
    rounded = round_money(amount)
    exact = amount if exact is None else exact
    if rounded or not exact:
        return money_label(rounded)
    small = exact.quantize(SUBCENT, rounding=ROUND_HALF_UP)
    if small:
        return money_label(small, places=4)
    return "<0.0001" if exact > 0 else "-<0.0001"


def money_cell(amount: Decimal, exact: Decimal, currency: str) -> dict[str, str]:
    """Text and tooltip of a table cell: the amount as billed, the exact one in the title."""
    return {
        "text": money_text(amount, exact),
        "title": f"{exact:,.6f} {currency} before each month's rounding to the cent",
    }


@dataclass(frozen=True)
class PrefetchBasis:
    """What a scenario's prefetch rule is projected from (``archive.analytics.simulator.prefetch``):
    the studies arriving a month, the archive-tier bytes of the priors the rule names for one of
    them today, their product (the policy preview's figure), and the archive tier's share of
    today's bytes, against which each month's share of the scenario scales it."""

    monthly_cap: Decimal
    studies_per_month: float
    archive_bytes_per_study: int
    bytes_per_month: int
    archive_share_today: float
    note: str


@dataclass
class MonthCost:
    start: date
    components: dict[str, Decimal]
    bytes_by_tier: dict[str, int]
    # The components before the rounding to the cent (for display of sub-cent amounts).
    exact: dict[str, Decimal] = field(default_factory=dict)
    # Archive-tier bytes the prefetch rule is expected to restore this month (before the cap).
    prefetch_bytes: int = 0

    @property
    def total(self) -> Decimal:
        return sum(self.components.values(), Decimal("0.00"))

    @property
    def exact_total(self) -> Decimal:
        return sum((self.exact or self.components).values(), Decimal(0))

    @property
    def shown_total(self) -> Decimal:
        """The month's cost as the chart plots and labels it: as billed (``total``, each
        component rounded to the cent, like the API's ``total`` and the table), or the exact
        figure when that is 0.00 but not zero, so that ``money_text`` shows it as the table does
        (``money_text(total, exact_total)``)."""
        return self.total if self.total or not self.exact_total else self.exact_total


@dataclass
class Scenario:
    key: str
    label: str
    rules: list[dict[str, Any]] | None
    months: list[MonthCost] = field(default_factory=list)
    note: str = ""
    prefetch: PrefetchBasis | None = None  # None: no prefetch rule (or everything hot)

    @property
    def totals(self) -> dict[str, Decimal]:
        out = {c: Decimal("0.00") for c in COMPONENTS}
        for month in self.months:
            for c, amount in month.components.items():
                out[c] += amount
        return out

    @property
    def total(self) -> Decimal:
        return sum((m.total for m in self.months), Decimal("0.00"))

    @property
    def monthly_average(self) -> Decimal:
        return round_money(self.total / len(self.months)) if self.months else Decimal("0.00")

    @property
    def exact_totals(self) -> dict[str, Decimal]:
        out = {c: Decimal(0) for c in COMPONENTS}
        for month in self.months:
            for c, amount in (month.exact or month.components).items():
                out[c] += amount
        return out

    @property
    def exact_total(self) -> Decimal:
        return sum((m.exact_total for m in self.months), Decimal(0))

    @property
    def exact_monthly_average(self) -> Decimal:
        return self.exact_total / len(self.months) if self.months else Decimal(0)


@dataclass
class Recommendation:
    modality: str
    tier: str
    days: int
    reread_share: float
    saving_per_month: Decimal
    restore_per_month: Decimal
    text: str


@dataclass
class Simulation:
    as_of: datetime
    currency: str
    plan_code: str
    month_starts: list[date]
    scenarios: list[Scenario]
    recommendations: list[Recommendation]
    curve: AccessCurve
    instances: int
    bytes: int
    buckets: int
    ingest_bytes_per_month: int
    seconds: float = 0.0

    def scenario(self, key: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.key == key), None)

    @property
    def verdict(self) -> str:
        """How the policies compare, per month on average: the candidate against the active
        policy (or everything hot when none is active), and the recommended rules against the
        active policy, which may already be the cheaper choice."""
        hot, active = self.scenario("all_hot"), self.scenario("active")
        candidate, recommended = self.scenario("candidate"), self.scenario("recommended")
        baseline, baseline_name = (
            (active, "the active policy")
            if active is not None and active.rules is not None and active.note == ""
            else (hot, "keeping everything hot")
        )
        if baseline is None:
            return ""

        def money(amount: Decimal) -> str:
            # To the cent, or to 4 decimals when that shows 0.00 (tiny inventories).
            return _money(amount, self.currency)

        def against(s: Scenario, name: str) -> str:
            amount, base = s.exact_monthly_average, baseline.exact_monthly_average
            difference = amount - base
            cost = f"{name} would cost {money(amount)}/month on average"
            # The same when the difference would not show at the precision of the amounts.
            shown = Decimal("0.005") if max(amount, base) >= Decimal("0.005") else SUBCENT / 2
            if abs(difference) < shown:
                return f"{cost}, the same as {baseline_name}."
            more_or_less = "less" if difference < 0 else "more"
            return f"{cost}, {money(abs(difference))}/month {more_or_less} than {baseline_name}."

        sentences = []
        if candidate is not None:
            sentences.append(against(candidate, "The policy being edited"))
        if recommended is not None and _moves_or_deletes(recommended.rules):
            if (
                baseline is active
                and recommended.exact_monthly_average >= baseline.exact_monthly_average
            ):
                sentences.append(
                    f"The active policy already costs {money(baseline.exact_monthly_average)}"
                    f"/month on average, no more than the recommended rules "
                    f"({money(recommended.exact_monthly_average)}/month): keeping it is the "
                    "cheaper choice."
                )
            else:
                sentences.append(against(recommended, "The recommended policy"))
        return " ".join(sentences)

    @property
    def components(self) -> list[tuple[str, str]]:
        return list(COMPONENTS.items())

    def component_rows(self) -> list[dict[str, Any]]:
        """12-month totals per component (rows) and scenario (columns), for the table: ``values``
        as billed (rounded each month) and ``cells`` for display (see ``money_cell``)."""
        totals = {s.key: s.totals for s in self.scenarios}
        exact = {s.key: s.exact_totals for s in self.scenarios}
        rows = []
        for key, label in COMPONENTS.items():
            values = [totals[s.key][key] for s in self.scenarios]
            exacts = [exact[s.key][key] for s in self.scenarios]
            if any(values) or any(exacts):
                cells = [
                    money_cell(v, e, self.currency) for v, e in zip(values, exacts, strict=True)
                ]
                rows.append({"key": key, "label": label, "values": values, "cells": cells})
        return rows

    def prefetch_notes(self) -> list[dict[str, str]]:
        """How the prefetches were projected, one line per basis, naming the scenarios that
        share it (the active and the candidate policy often carry the same rule)."""
        notes: dict[str, list[str]] = {}
        for s in self.scenarios:
            if s.prefetch is not None:
                notes.setdefault(s.prefetch.note, []).append(s.label)
        return [{"scenarios": ", ".join(labels), "note": note} for note, labels in notes.items()]

    def total_cells(self) -> list[dict[str, str]]:
        return [
            {"key": s.key, **money_cell(s.total, s.exact_total, self.currency)}
            for s in self.scenarios
        ]

    def average_cells(self) -> list[dict[str, str]]:
        return [
            {"key": s.key, **money_cell(s.monthly_average, s.exact_monthly_average, self.currency)}
            for s in self.scenarios
        ]

    def saving(self, key: str) -> Decimal | None:
        """12-month saving of a scenario against everything hot."""
        base, other = self.scenario("all_hot"), self.scenario(key)
        if base is None or other is None:
            return None
        return base.total - other.total

    @property
    def chart(self) -> Any:
        """The monthly cost per scenario (``archive.analytics.charts.simulation_chart``)."""
        return simulation_chart(
            currency=self.currency,
            month_starts=self.month_starts,
            lines=[
                (
                    s.key,
                    s.label,
                    [float(m.shown_total) for m in s.months],
                    money_text(s.total, s.exact_total),
                )
                for s in self.scenarios
            ],
            money=lambda v: money_text(Decimal(str(v))),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "currency": self.currency,
            "plan": self.plan_code,
            "months": [m.isoformat() for m in self.month_starts],
            "inventory": {
                "instances": self.instances,
                "bytes": self.bytes,
                "buckets": self.buckets,
                "ingest_bytes_per_month": self.ingest_bytes_per_month,
            },
            "scenarios": [
                {
                    "key": s.key,
                    "title": s.label,
                    "rules": s.rules,
                    "note": s.note,
                    "total": str(s.total),
                    "totals": {k: str(v) for k, v in s.totals.items()},
                    "prefetch": _prefetch_dict(s.prefetch),
                    "months": [
                        {
                            "month": m.start.isoformat(),
                            "total": str(m.total),
                            "components": {k: str(v) for k, v in m.components.items()},
                            "bytes_by_tier": m.bytes_by_tier,
                            "prefetch_bytes": m.prefetch_bytes,
                        }
                        for m in s.months
                    ],
                }
                for s in self.scenarios
            ],
            "recommendations": [
                {
                    "modality": r.modality,
                    "tier": r.tier,
                    "days": r.days,
                    "reread_share": r.reread_share,
                    "saving_per_month": str(r.saving_per_month),
                    "restore_per_month": str(r.restore_per_month),
                    "text": r.text,
                }
                for r in self.recommendations
            ],
            "verdict": self.verdict,
            "seconds": round(self.seconds, 3),
        }


def _moves_or_deletes(rules: list[dict[str, Any]] | None) -> bool:
    """Rules that change where data is (a prefetch rule alone moves nothing)."""
    return any(r.get("action", {}).get("type") in ("move", "delete") for r in rules or [])


def _prefetch_dict(basis: PrefetchBasis | None) -> dict[str, Any] | None:
    if basis is None:
        return None
    return {
        "monthly_cap": str(basis.monthly_cap),
        "studies_per_month": basis.studies_per_month,
        "archive_bytes_per_study": basis.archive_bytes_per_study,
        "bytes_per_month": basis.bytes_per_month,
        "archive_share_today": basis.archive_share_today,
        "note": basis.note,
    }


def _money(amount: Decimal, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    text = money_text(amount)
    if text.startswith("<"):
        return f"less than {symbol}0.0001" if symbol else f"less than 0.0001 {currency}"
    return f"{symbol}{text}" if symbol else f"{text} {currency}"
