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
  (bytes), see ``archive.analytics.monthly_read_probability``; every re-read is egress, and a
  re-read of archive-tier bytes is also a restore of those bytes. Re-reads are priced but do not
  reset a bucket's last-access clock (at the rates seen, a few percent a month at most, this errs
  towards moving slightly more than the engine will).
- Growth: new images arrive at the organization's rate of the last 90 days (bytes and instances
  per modality, from the index), land hot, are stored half of their first month on average and
  then age like the rest. Ingest (``ingest.bytes``/``ingest.instances``) is priced too: the same
  in every scenario, it keeps the totals comparable with the invoices.
- Prices: the organization's plan in force now (its subscription, or the default plan), exactly
  as an invoice prices each meter and tier (allowances, graduated tiers); each month's component
  is rounded once, like an invoice line. Minimum commitments, API requests and compute are left
  out: no policy changes them.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, Count, F, IntegerField, Sum, Value, When
from django.db.models.functions import Coalesce, ExtractYear, TruncDate
from django.utils import timezone

from archive.analytics import (
    READ_KINDS,
    AccessCurve,
    access_curve,
    curve_buckets_sql,
    curve_counts_sql,
    curve_from_rows,
    latest_reads_sql,
    monthly_read_probability,
)
from archive.models import (
    AccessEvent,
    ArchiveSettings,
    Instance,
    Series,
    StorageLocation,
    Study,
)
from archive.tiers import TIER_CATALOG, is_colder, location_serves
from billing.meters import GIB, METERS
from billing.periods import month_start, next_month
from billing.pricing import PriceSpec, price, round_money
from tenants.models import Organization

logger = logging.getLogger(__name__)

TIERS = tuple(TIER_CATALOG)
MONTHS = 12
INGEST_WINDOW_DAYS = 90
# Day ranges of the inventory buckets (rule thresholds are added to these).
DAY_EDGES = (7, 30, 60, 90, 120, 180, 240, 300, 365, 455, 545, 730, 1095, 1460, 1825, 3650)
# Days in the current tier matter only for the minimum storage durations: cut at each of them.
TIER_DAY_EDGES = tuple(
    sorted({t.minimum_storage_days for t in TIER_CATALOG.values() if t.minimum_storage_days > 0})
)
# The recommendation: move once so little is read again that the tier's trade-off pays.
RECOMMEND_SHARE = {"warm": 0.25, "cold": 0.10, "archive": 0.02}
RECOMMEND_DAYS = {"warm": (30, 90), "cold": (30, 90, 180), "archive": (180, 365)}
MIN_OBSERVED_STUDIES = 10
MAX_RECOMMENDED_MODALITIES = 6

COMPONENTS: dict[str, str] = {
    **{f"storage_{t}": f"Storage ({t})" for t in TIERS},
    "transitions": "Tier transitions",
    "restores": "Restores",
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


# --- results -----------------------------------------------------------------------------------


SUBCENT = Decimal("0.0001")


def money_text(amount: Decimal, exact: Decimal | None = None) -> str:
    """An amount for display: to the cent, like an invoice; when that shows 0.00 but the exact
    figure is not zero (tiny images), the exact figure to 4 decimals ("0.0032"), or "<0.0001"."""
    rounded = round_money(amount)
    exact = amount if exact is None else exact
    if rounded or not exact:
        return f"{rounded:,.2f}"
    small = exact.quantize(SUBCENT, rounding=ROUND_HALF_UP)
    if small:
        return f"{small:,.4f}"
    return "<0.0001" if exact > 0 else "-<0.0001"


def money_cell(amount: Decimal, exact: Decimal, currency: str) -> dict[str, str]:
    """Text and tooltip of a table cell: the amount as billed, the exact one in the title."""
    return {
        "text": money_text(amount, exact),
        "title": f"{exact:,.6f} {currency} before each month's rounding to the cent",
    }


@dataclass
class MonthCost:
    start: date
    components: dict[str, Decimal]
    bytes_by_tier: dict[str, int]
    # The components before the rounding to the cent (for display of sub-cent amounts).
    exact: dict[str, Decimal] = field(default_factory=dict)

    @property
    def total(self) -> Decimal:
        return sum(self.components.values(), Decimal("0.00"))

    @property
    def exact_total(self) -> Decimal:
        return sum((self.exact or self.components).values(), Decimal(0))


@dataclass
class Scenario:
    key: str
    label: str
    rules: list[dict[str, Any]] | None
    months: list[MonthCost] = field(default_factory=list)
    note: str = ""

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
        if recommended is not None and recommended.rules:
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
        from archive.analytics_charts import simulation_chart

        return simulation_chart(self)

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
                    "months": [
                        {
                            "month": m.start.isoformat(),
                            "total": str(m.total),
                            "components": {k: str(v) for k, v in m.components.items()},
                            "bytes_by_tier": m.bytes_by_tier,
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


# --- inventory ---------------------------------------------------------------------------------


@dataclass
class Bucket:
    modality: str
    tier: str
    age: float  # days since the study date, now (negative: arrives in the future)
    idle: float  # days since the last read (or receipt)
    in_tier: float  # days in the current tier
    bytes: int
    instances: int
    sop_class: str = ""
    description: str = ""
    patient_age: float | None = None
    held: bool = False
    arrives: int = -1  # month index of arrival for new ingest; -1: stored already


def _edges(base: tuple[int, ...], extra: set[int]) -> list[int]:
    return sorted({e for e in (*base, *extra) if e > 0})


def _rep(edges: list[int], index: int) -> float:
    """The middle of bucket ``index`` of ``edges`` (the last, open one: a fifth past its start)."""
    lo = 0 if index == 0 else edges[index - 1]
    if index >= len(edges):
        return lo * 1.2
    return (lo + edges[index]) / 2


def _thresholds(rules: list[dict[str, Any]], name: str) -> set[int]:
    out: set[int] = set()
    for rule in rules:
        rng = rule.get("conditions", {}).get(name)
        if isinstance(rng, dict):
            if rng.get("min") is not None:
                out.add(int(rng["min"]))
            if rng.get("max") is not None:
                out.add(int(rng["max"]) + 1)
        if name == "days_since_study_date" and rule.get("action", {}).get("type") == "delete":
            out.add(int(rule["action"].get("after_days", 0)))
    return out


def _uses(rules: list[dict[str, Any]], name: str) -> bool:
    return any(name in rule.get("conditions", {}) for rule in rules)


def _ladder(field_name: str, cutoffs: list[Any]) -> Case:
    """Bucket index: 0 when ``field > cutoffs[0]`` (younger than the first edge), and so on."""
    return Case(
        *[When(**{f"{field_name}__gt": c}, then=Value(i)) for i, c in enumerate(cutoffs)],
        default=Value(len(cutoffs)),
        output_field=IntegerField(),
    )


def inventory(
    *, org: Organization, now: datetime, rules: list[dict[str, Any]]
) -> tuple[list[Bucket], int, int]:
    """The organization's stored instances as buckets (one SQL aggregate). Returns
    (buckets, instances, bytes). ``rules`` (all scenarios' rules together) choose the cuts.

    At series granularity (see ``_inventory_series_rows``), unless a rule looks at SOP classes,
    an instance attribute: then every instance row is read (``_inventory_instance_rows``).
    """
    buckets, instances, total, _ = _inventory(org=org, now=now, rules=rules, with_curve=False)
    return buckets, instances, total


def _inventory(
    *, org: Organization, now: datetime, rules: list[dict[str, Any]], with_curve: bool
) -> tuple[list[Bucket], int, int, AccessCurve | None]:
    """``inventory``, and with ``with_curve`` the access curve as of ``now`` from the same
    statement, which then reads the access log once for both (at series granularity; None at
    instance granularity: ``access_curve`` then reads it on its own)."""
    age_edges = _edges(DAY_EDGES, _thresholds(rules, "days_since_study_date"))
    idle_edges = _edges(DAY_EDGES, _thresholds(rules, "days_since_last_access"))
    tier_edges = list(TIER_DAY_EDGES)
    group = ["mod", "tier", "age_b", "idle_b", "tier_b"]
    if _uses(rules, "sop_classes"):
        group.append("sop_class_uid")
    if _uses(rules, "description_pattern"):
        group.append("descr")
    if _uses(rules, "patient_age_years"):
        group.append("page")
    if any(r.get("action", {}).get("type") == "delete" for r in rules):
        group.append("held")
    edges = (age_edges, idle_edges, tier_edges)
    curve: AccessCurve | None = None
    if "sop_class_uid" in group:
        rows = _inventory_instance_rows(org=org, now=now, group=group, edges=edges)
    else:
        rows, curve = _series_statement(
            org=org, now=now, group=group, edges=edges, with_curve=with_curve
        )
    buckets: list[Bucket] = []
    instances = total = 0
    for row in rows:
        n, b = int(row["n"] or 0), int(row["b"] or 0)
        if n <= 0 and b <= 0:
            continue
        instances += n
        total += b
        buckets.append(
            Bucket(
                modality=row["mod"] or "",
                tier=row["tier"],
                age=_rep(age_edges, int(row["age_b"])),
                idle=_rep(idle_edges, int(row["idle_b"])),
                in_tier=_rep(tier_edges, int(row["tier_b"])),
                bytes=b,
                instances=n,
                sop_class=row.get("sop_class_uid") or "",
                description=row.get("descr") or "",
                patient_age=None if row.get("page") is None else float(row["page"]),
                held=bool(row.get("held")),
            )
        )
    return buckets, instances, total, curve


# SQL fragments per database for the series-level inventory. Only fixed expressions, table names
# and integer day edges are interpolated into statements; values are parameters.


def _pg() -> bool:
    return connection.vendor == "postgresql"


def _sql_time(value: datetime) -> Any:
    """A timestamp parameter compared with stored ones (SQLite stores naive UTC text)."""
    if _pg():
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


def _sql_idle(latest: str, now: datetime) -> tuple[str, list[Any]]:
    """The time from the timestamp ``latest`` to ``now``, to be cut by ``_sql_idle_bucket``: SQL
    and its parameters.

    On PostgreSQL an interval: exact, and far cheaper per row than days as the numeric that
    EXTRACT(EPOCH ...) returns. On SQLite fractional days, with ``now`` inlined as a Julian day
    number so that the expression can be repeated in a CASE ladder."""
    if _pg():
        return f"(%s::timestamptz - ({latest}))", [now]
    julian = (now - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() / 86400 + 2440587.5
    return f"({float(julian)!r} - julianday({latest}))", []


def _sql_idle_bucket(value: str, edges: list[int]) -> str:
    """The number of ``edges`` (days) at or below the time ``value`` of ``_sql_idle``."""
    if _pg():
        cuts = ", ".join(f"'{int(e)} days'" for e in edges)
        return f"width_bucket({value}, ARRAY[{cuts}]::interval[])"
    return _sql_bucket(value, edges)


def _sql_ref(alias: str) -> str:
    """A study's reference date: its study date, or the day it was received."""
    if _pg():
        return f"COALESCE({alias}.study_date, ({alias}.created_at AT TIME ZONE 'UTC')::date)"
    return f"COALESCE({alias}.study_date, date({alias}.created_at))"


def _sql_date_days(ref: str) -> str:
    """Whole days from the date ``ref`` to the date parameter."""
    if _pg():
        return f"(%s::date - {ref})"
    return f"CAST(julianday(%s) - julianday({ref}) AS INTEGER)"


def _sql_bucket(value: str, edges: list[int]) -> str:
    """The number of ``edges`` at or below ``value`` (the index of its bucket)."""
    cuts = [int(e) for e in edges]
    if _pg():
        return f"width_bucket(({value})::float8, ARRAY[{', '.join(map(str, cuts))}]::float8[])"
    whens = " ".join(f"WHEN ({value}) < {e} THEN {k}" for k, e in enumerate(cuts))
    return f"(CASE {whens} ELSE {len(cuts)} END)"


def _sql_greatest(*values: str) -> str:
    """The latest of non-null timestamps (the first value must not be null)."""
    if _pg():
        return f"GREATEST({', '.join(values)})"
    first = values[0]
    return f"MAX({', '.join(f'COALESCE({v}, {first})' for v in values)})"


def _sql_years(date_sql: str) -> str:
    if _pg():
        return f"EXTRACT(YEAR FROM {date_sql})"
    return f"CAST(strftime('%%Y', {date_sql}) AS INTEGER)"


def _recent_buckets(tier_edges: list[int]) -> dict[str, int]:
    """Per tier with a minimum storage duration, how many ranges of ``tier_edges`` lie within it:
    the days-in-tier buckets that can still owe early deletion. Past its minimum (and in hot,
    which has none) the bytes owe nothing whatever their days in the tier, so they all take the
    last bucket (``len(tier_edges)``, represented past every minimum)."""
    out: dict[str, int] = {}
    for tier in TIERS:
        minimum = TIER_CATALOG[tier].minimum_storage_days
        if minimum > 0:
            out[tier] = sum(1 for e in tier_edges if e <= minimum)
    return out


def _settle_tier_b(rows: list[dict[str, Any]], tier_edges: list[int]) -> list[dict[str, Any]]:
    """Rows grouped by the raw days-in-tier bucket, with the buckets past the tier's minimum
    storage duration merged into the last one (see ``_recent_buckets``)."""
    recent = _recent_buckets(tier_edges)
    last = len(tier_edges)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        tier_b = int(row["tier_b"])
        if tier_b >= recent.get(row["tier"], 0):
            tier_b = last
        key = tuple((k, v) for k, v in row.items() if k not in ("tier_b", "n", "b")) + (tier_b,)
        n, b = int(row["n"] or 0), int(row["b"] or 0)
        if key in merged:
            merged[key]["n"] += n
            merged[key]["b"] += b
        else:
            merged[key] = {**row, "tier_b": tier_b, "n": n, "b": b}
    return list(merged.values())


def _inventory_series_rows(
    *,
    org: Organization,
    now: datetime,
    group: list[str],
    edges: tuple[list[int], list[int], list[int]],
) -> list[dict[str, Any]]:
    """The inventory rows from the series' aggregates (``_series_statement`` without the
    curve)."""
    rows, _ = _series_statement(org=org, now=now, group=group, edges=edges, with_curve=False)
    return rows


def _series_statement(
    *,
    org: Organization,
    now: datetime,
    group: list[str],
    edges: tuple[list[int], list[int], list[int]],
    with_curve: bool,
) -> tuple[list[dict[str, Any]], AccessCurve | None]:
    """The inventory from the series' aggregates, without reading every instance row; with
    ``with_curve`` also the access curve (``archive.analytics``) as of ``now``.

    A series' bytes per tier come from its ``bytes_<tier>`` counters (kept in the same
    transaction as ingest and tier moves); its instances per tier are apportioned by bytes. The
    last read is the latest read of the access log covering the series (a read of the series or
    of its whole study; ``metadata`` requests do not count, as for ``Instance.last_accessed_at``),
    or the series' receipt when it was read before it arrived or never: instances of a series are
    received together and read together.

    Days in the current tier matter only while the tier's minimum storage duration runs (warm
    30, cold 90, archive 180 days): they are read per instance for the non-hot instances that
    entered their tier within its own minimum (a partial index on tier and entry time covering
    them keeps this lookup to those index entries, migration 0006); the rest of each tier's
    bytes (all of hot) owe no early deletion and take the last bucket (``_recent_buckets``).

    One statement, one row per series: the recent instances pivoted per series (one column per
    tier and bucket), the study's columns and latest reads, the series' own columns carried
    through (one join of the series); grouped by the series-level cuts, then unpivoted here per
    tier and bucket. The studies come from one pass over them joined with one grouped pass over
    the access log (per study its latest read, and its latest read as a whole); the curve's
    counts (``archive.analytics.curve_counts_sql``) read the same studies, in more rows of the
    same statement (``part`` 1 and 2; the inventory's are ``part`` 0).
    """
    age_edges, idle_edges, tier_edges = edges
    instance_t, study_t, series_t, access_t = (
        Instance._meta.db_table,
        Study._meta.db_table,
        Series._meta.db_table,
        AccessEvent._meta.db_table,
    )
    recent_buckets = _recent_buckets(tier_edges)
    last = len(tier_edges)
    kinds = ", ".join(["%s"] * len(READ_KINDS))
    # The access log, once: per study the latest read of any part of it (the curve's) and the
    # latest read of the study as a whole (series reads are grouped per series below).
    reads, reads_params = latest_reads_sql(org=org, whole_study=True)
    # The organization's studies (trashed ones too: the curve counts them, the inventory does
    # not), with their latest reads and the columns the inventory needs of them.
    ref = _sql_ref("s")
    columns = {
        "descr": "s.study_description",
        "page": f"{_sql_years(ref)} - {_sql_years('s.patient_birth_date')}",
        "held": "s.legal_hold",
    }
    extras = [name for name in group if name in columns]
    study_cols = [
        "s.id AS id",
        "s.total_bytes AS nbytes",
        "s.trashed_at IS NULL AS live",
        f"{_sql_date_days(ref)} AS age_d",
        "r.study_read AS study_read",
        *(f"{columns[name]} AS {name}" for name in extras),
    ]
    study_params: list[Any] = [now.date() if _pg() else now.date().isoformat()]
    if with_curve:
        buckets, bucket_params = curve_buckets_sql(
            ref=ref, last_read="r.last_read", today=now.date()
        )
        study_cols.append(buckets)
        study_params += bucket_params
    studies = (
        f"st AS (SELECT {', '.join(study_cols)} FROM {study_t} s "  # noqa: S608
        "LEFT JOIN reads r ON r.study_id = s.id WHERE s.organization_id = %s)"
    )
    study_params.append(org.pk)
    # Non-hot instances still within their tier's minimum, per series, tier and days-in-tier
    # bucket (by the time of their move, or of their receipt when never moved): grouped first
    # (a few rows per series), then pivoted to one row per series. The bucket compares the
    # timestamp with each cut, the column straight from the index. Tier names and numbers,
    # integers and fixed SQL are interpolated; values are parameters.
    selects: list[str] = []
    recent_params: list[Any] = []
    for number, (tier, count) in enumerate(recent_buckets.items()):
        cuts = [_sql_time(now - timedelta(days=e)) for e in tier_edges[:count]]
        for column, condition in (
            ("i.tier_changed_at", "i.tier_changed_at > %s"),
            ("i.received_at", "i.tier_changed_at IS NULL AND i.received_at > %s"),
        ):
            whens = " ".join(f"WHEN {column} > %s THEN {k}" for k in range(count - 1))
            k_sql = f"CASE {whens} ELSE {count - 1} END" if whens else "0"
            selects.append(
                f"SELECT i.series_id AS series_id, {number} AS t, {k_sql} AS k, "  # noqa: S608
                f"i.size_bytes AS size_bytes FROM {instance_t} i WHERE i.organization_id = %s "
                f"AND i.tier = '{tier}' AND {condition}"
            )
            recent_params += [*cuts[: count - 1], org.pk, cuts[-1]]
    # The pivot takes the one row of each tier and bucket (MAX: a plain value per group, where a
    # SUM of bigints keeps a wider state for each).
    pivot: list[str] = []
    cols: list[tuple[str, int, str, str]] = []  # (tier, bucket, instances column, bytes column)
    for number, (tier, count) in enumerate(recent_buckets.items()):
        for k in range(count):
            cond = f"x.t = {number} AND x.k = {k}"
            pivot += [
                f"MAX(CASE WHEN {cond} THEN x.n END) AS n_{tier}_{k}",
                f"MAX(CASE WHEN {cond} THEN x.b END) AS b_{tier}_{k}",
            ]
            cols.append((tier, k, f"n_{tier}_{k}", f"b_{tier}_{k}"))
    recent = (
        f"recent AS (SELECT x.series_id AS series_id, {', '.join(pivot)} FROM (SELECT "  # noqa: S608
        "y.series_id AS series_id, y.t AS t, y.k AS k, COUNT(*) AS n, CAST(SUM(y.size_bytes) AS "
        f"BIGINT) AS b FROM ({' UNION ALL '.join(selects)}) y GROUP BY y.series_id, y.t, y.k) x "
        "GROUP BY x.series_id)"
    )
    recent_cols = [(n_col, b_col) for _, _, n_col, b_col in cols]
    # The latest read of each series read alone.
    series_reads = (
        f"SELECT a.series_id AS series_id, MAX(a.at) AS at FROM {access_t} a "  # noqa: S608
        f"WHERE a.organization_id = %s AND a.kind IN ({kinds}) AND a.series_id IS NOT NULL "
        "GROUP BY a.series_id"
    )
    idle, idle_params = _sql_idle(_sql_greatest("se.created_at", "s.study_read", "xr.at"), now)

    # Per series (computed once per row: the fence keeps PostgreSQL from inlining these columns
    # into every aggregate that uses them): what the recent instances leave of each tier (all of
    # hot), and its instances apportioned to the tiers by bytes, as the series' counters allow.
    def recent_sum(names: list[str]) -> str:
        return "".join(f" - COALESCE(r.{name}, 0)" for name in names)

    per_series = [
        f"se.total_bytes{recent_sum([b for _, b in recent_cols])} AS rest_total",
        f"se.instance_count{recent_sum([n for n, _ in recent_cols])} AS rest_count",
    ]
    parts: list[str] = []
    for tier in TIERS:
        if tier == "hot":
            per_series += [
                "se.bytes_hot AS rest_hot",
                "(se.bytes_hot > 0 OR (se.total_bytes = 0 AND se.instance_count > 0)) AS keep_hot",
            ]
            fallback = "q.rest_count"
        else:
            own = [b for t, k, _, b in cols if t == tier and k < last]
            per_series += [
                f"se.bytes_{tier}{recent_sum(own)} AS rest_{tier}",
                f"(se.bytes_{tier} > 0) AS keep_{tier}",
            ]
            fallback = "0"
        # (The share of all or none of the bytes needs no division: most series are whole.)
        share = (
            f"CASE WHEN q.rest_total <= 0 THEN {fallback} WHEN q.rest_{tier} = q.rest_total "
            f"THEN q.rest_count WHEN q.rest_{tier} = 0 THEN 0 ELSE CAST(ROUND(1.0 * q.rest_count "
            f"* q.rest_{tier} / q.rest_total) AS BIGINT) END"
        )
        parts += [
            f"SUM(CASE WHEN q.keep_{tier} THEN {share} ELSE 0 END) AS n_{tier}_rest",
            f"SUM(CASE WHEN q.keep_{tier} THEN q.rest_{tier} ELSE 0 END) AS b_{tier}_rest",
        ]
        cols.append((tier, last, f"n_{tier}_rest", f"b_{tier}_rest"))
    parts += [f"SUM(q.{n}) AS {n}, SUM(q.{b}) AS {b}" for n, b in recent_cols]
    per_series += [f"COALESCE(r.{c}, 0) AS {c}" for pair in recent_cols for c in pair]
    inner_extras = "".join(f", s.{name} AS {name}" for name in extras)
    inner = (
        f"SELECT se.modality AS mod, s.age_d AS age_d, {idle} AS idle_d"  # noqa: S608
        f"{inner_extras}, {', '.join(per_series)} "
        f"FROM {series_t} se JOIN st s ON s.id = se.study_id "
        "LEFT JOIN recent r ON r.series_id = se.id "
        f"LEFT JOIN ({series_reads}) xr ON xr.series_id = se.id "
        "WHERE se.organization_id = %s AND s.live"
        f"{' OFFSET 0' if _pg() else ''}"
    )
    inner_params: list[Any] = [*idle_params, org.pk, *READ_KINDS, org.pk]
    keys = ["mod", "age_b", "idle_b", *extras]
    curve_cols = ["c_age_b", "c_gap_b", "c_studies", "c_bytes"]
    inventory_sql = (
        f"SELECT 0 AS part, q.mod AS mod, {_sql_bucket('q.age_d', age_edges)} AS age_b, "  # noqa: S608
        f"{_sql_idle_bucket('q.idle_d', idle_edges)} AS idle_b"
        f"{''.join(f', q.{name} AS {name}' for name in extras)}, {', '.join(parts)}"
        f"{''.join(f', NULL AS {c}' for c in curve_cols) if with_curve else ''} "
        f"FROM ({inner}) q GROUP BY {', '.join(str(k + 2) for k in range(len(keys)))}"
    )
    main_params = inner_params
    if with_curve:
        # The curve's rows in the inventory's columns: its buckets and counts in their own.
        counts, counts_params = curve_counts_sql(studies="st", org=org)
        blanks = [*keys[1:], *(c for _, _, n, b in cols for c in (n, b))]
        inventory_sql += (
            " UNION ALL SELECT 1 + c.part AS part, c.modality AS mod"  # noqa: S608
            f"{''.join(f', NULL AS {name}' for name in blanks)}, c.age_b AS c_age_b, "
            f"c.gap_b AS c_gap_b, c.studies AS c_studies, c.bytes AS c_bytes FROM ({counts}) c"
        )
        main_params = [*main_params, *counts_params]
    sql = f"WITH reads AS ({reads}), {studies}, {recent} {inventory_sql}"
    out: list[dict[str, Any]] = []
    curve_rows: list[tuple[Any, ...]] = []
    for row in _fetch_dicts(sql, [*reads_params, *study_params, *recent_params, *main_params]):
        if row["part"]:
            curve_rows.append((row["part"] - 1, row["mod"], *(row[c] for c in curve_cols)))
            continue
        base = {name: row[name] for name in keys}
        for tier, k, n_col, b_col in cols:
            n, b = int(row[n_col] or 0), int(row[b_col] or 0)
            if n > 0 or b > 0:
                out.append({**base, "tier": tier, "tier_b": k, "n": n, "b": b})
    curve = curve_from_rows(curve_rows, now=now) if with_curve else None
    return out, curve


def _fetch_dicts(sql: str, params: list[Any]) -> list[dict[str, Any]]:
    with transaction.atomic(), connection.cursor() as cursor:
        if _pg():
            # A one-off aggregate: compiling it costs more than it saves, and its hash tables
            # (one entry per study or series) should stay in memory.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _inventory_instance_rows(
    *,
    org: Organization,
    now: datetime,
    group: list[str],
    edges: tuple[list[int], list[int], list[int]],
) -> list[dict[str, Any]]:
    """The inventory from every instance row (rules on SOP classes need them)."""
    if _pg():
        rows = _inventory_rows_pg(org=org, now=now, group=group, edges=edges)
    else:
        rows = _inventory_rows_portable(org=org, now=now, group=group, edges=edges)
    return _settle_tier_b(rows, edges[2]) if "tier_b" in group else rows


def _inventory_rows_portable(
    *,
    org: Organization,
    now: datetime,
    group: list[str],
    edges: tuple[list[int], list[int], list[int]],
) -> list[dict[str, Any]]:
    age_edges, idle_edges, tier_edges = edges
    today = now.date()
    qs = (
        Instance.objects.for_org(org)
        .filter(study__trashed_at__isnull=True)
        .annotate(
            ref=Coalesce(F("study__study_date"), TruncDate("study__created_at")),
            seen=Coalesce(F("last_accessed_at"), F("received_at")),
            entered=Coalesce(F("tier_changed_at"), F("received_at")),
        )
        .annotate(
            age_b=_ladder("ref", [today - timedelta(days=e) for e in age_edges]),
            idle_b=_ladder("seen", [now - timedelta(days=e) for e in idle_edges]),
            tier_b=_ladder("entered", [now - timedelta(days=e) for e in tier_edges]),
            mod=F("series__modality"),
        )
    )
    if "descr" in group:
        qs = qs.annotate(descr=F("study__study_description"))
    if "page" in group:
        qs = qs.annotate(page=ExtractYear("ref") - ExtractYear("study__patient_birth_date"))
    if "held" in group:
        qs = qs.annotate(held=F("study__legal_hold"))
    return list(qs.values(*group).annotate(n=Count("id"), b=Sum("size_bytes")).order_by())


def _inventory_rows_pg(
    *,
    org: Organization,
    now: datetime,
    group: list[str],
    edges: tuple[list[int], list[int], list[int]],
) -> list[dict[str, Any]]:
    """The same grouping as the portable query, in one statement that PostgreSQL runs fast over
    millions of rows: ``width_bucket`` finds a bucket by binary search over the cut days (where
    the portable CASE ladder tests them one by one), each date computed once per row."""
    instance_t, study_t, series_t = (
        Instance._meta.db_table,
        Study._meta.db_table,
        Series._meta.db_table,
    )
    ref = "COALESCE(s.study_date, (s.created_at AT TIME ZONE 'UTC')::date)"
    # First the instances alone, per series and instance-level bucket (one pass, no join), then
    # the far fewer groups joined with their series and studies for the study-level cuts.
    inner_columns = {
        "tier": "i.tier",
        "idle_b": "width_bucket(EXTRACT(EPOCH FROM (%s::timestamptz - "
        "COALESCE(i.last_accessed_at, i.received_at))) / 86400.0, %s::float8[])",
        "tier_b": "width_bucket(EXTRACT(EPOCH FROM (%s::timestamptz - "
        "COALESCE(i.tier_changed_at, i.received_at))) / 86400.0, %s::float8[])",
        "sop_class_uid": "i.sop_class_uid",
    }
    outer_columns = {
        "mod": "se.modality",
        "age_b": f"width_bucket(%s::date - {ref}, %s::int[])",
        "descr": "s.study_description",
        "page": f"EXTRACT(YEAR FROM {ref}) - EXTRACT(YEAR FROM s.patient_birth_date)",
        "held": "s.legal_hold",
    }
    age_edges, idle_edges, tier_edges = edges
    inner_names = [n for n in group if n in inner_columns]
    inner_params: list[Any] = []
    for name in inner_names:
        if name == "idle_b":
            inner_params += [now, [float(e) for e in idle_edges]]
        elif name == "tier_b":
            inner_params += [now, [float(e) for e in tier_edges]]
    outer_params: list[Any] = []
    outer_select = []
    for name in group:
        if name in inner_columns:
            outer_select.append(f"g.{name} AS {name}")
        else:
            outer_select.append(f"{outer_columns[name]} AS {name}")
            if name == "age_b":
                outer_params += [now.date(), age_edges]
    inner_select = ", ".join(f"{inner_columns[n]} AS {n}" for n in inner_names)
    inner_group = ", ".join(str(k + 2) for k in range(len(inner_names)))
    # Only fixed column expressions and table names are interpolated; values are parameters.
    sql = (
        f"SELECT {', '.join(outer_select)}, SUM(g.n) AS n, SUM(g.b) AS b FROM ("  # noqa: S608
        f"SELECT i.series_id AS series_id, {inner_select}, COUNT(*) AS n, "
        f"SUM(i.size_bytes) AS b FROM {instance_t} i WHERE i.organization_id = %s "
        f"GROUP BY 1, {inner_group}) g JOIN {series_t} se ON se.id = g.series_id "
        f"JOIN {study_t} s ON s.id = se.study_id WHERE s.trashed_at IS NULL "
        f"GROUP BY {', '.join(str(k + 1) for k in range(len(group)))}"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # Compiling this one-off aggregate costs more than it saves.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, [*outer_params, *inner_params, org.pk])
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def ingest_rate(*, org: Organization, now: datetime) -> dict[str, tuple[int, int]]:
    """Bytes and instances received per month (30 days) by modality, over the last 90 days.

    From the series received in the window (their instances arrive together), with what they
    hold now."""
    rows = (
        Series.objects.for_org(org)
        .filter(created_at__gte=now - timedelta(days=INGEST_WINDOW_DAYS), created_at__lt=now)
        .values(mod=F("modality"))
        .annotate(n=Sum("instance_count"), b=Sum("total_bytes"))
        .order_by()
    )
    months = INGEST_WINDOW_DAYS / 30
    return {
        (r["mod"] or ""): (round(int(r["b"] or 0) / months), round(int(r["n"] or 0) / months))
        for r in rows
    }


# --- rule evaluation on buckets ------------------------------------------------------------------


def _wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL)


def _in_range(value: float | None, rng: dict[str, Any]) -> bool:
    if value is None:
        return False
    lo, hi = rng.get("min"), rng.get("max")
    return (lo is None or value >= lo) and (hi is None or value < hi + 1)


class _Compiled:
    """A rule with its pattern compiled, evaluated on a bucket at ``shift`` days from now."""

    def __init__(self, index: int, rule: dict[str, Any]):
        self.index = index
        self.rule = rule
        self.conditions: dict[str, Any] = rule.get("conditions", {})
        self.action: dict[str, Any] = rule.get("action", {})
        pattern = self.conditions.get("description_pattern")
        self.pattern = _wildcard(pattern) if pattern else None

    def matches_always(self, b: Bucket) -> bool:
        """The conditions that time does not change (modality, SOP class, description)."""
        c = self.conditions
        if "modalities" in c and b.modality not in c["modalities"]:
            return False
        if "sop_classes" in c and b.sop_class not in c["sop_classes"]:
            return False
        return self.pattern is None or bool(self.pattern.match(b.description))

    def matches_at(self, b: Bucket, shift: float) -> bool:
        """The conditions on days and years, at ``shift`` days from now."""
        c = self.conditions
        if "days_since_last_access" in c and not _in_range(
            max(b.idle + shift, 0), c["days_since_last_access"]
        ):
            return False
        if "days_since_study_date" in c and not _in_range(
            max(b.age + shift, 0), c["days_since_study_date"]
        ):
            return False
        if "patient_age_years" in c:
            years = None if b.patient_age is None else b.patient_age + shift / 365.25
            if not _in_range(years, c["patient_age_years"]):
                return False
        return True


# --- pricing -------------------------------------------------------------------------------------


@dataclass
class _Prices:
    currency: str
    plan_code: str
    specs: dict[tuple[str, str], PriceSpec]

    def spec(self, meter: str, tier: str = "") -> PriceSpec | None:
        return self.specs.get((meter, tier)) or self.specs.get((meter, ""))

    def amount(self, meter: str, tier: str, quantity: Decimal) -> Decimal:
        spec = self.spec(meter, tier)
        if spec is None or quantity <= 0:
            return Decimal(0)
        return price(spec, quantity)[0]

    def unit(self, meter: str, tier: str = "") -> Decimal:
        """The price of one more billing unit past the allowance (for explanations only)."""
        spec = self.spec(meter, tier)
        if spec is None:
            return Decimal(0)
        if spec.model == "per_unit":
            return spec.unit_price
        if spec.model == "package":
            return spec.package_price / (spec.package_size or Decimal(1))
        return spec.tiers[0][1] if spec.tiers else Decimal(0)


def plan_prices(*, org: Organization, now: datetime) -> _Prices:
    """The plan in force at ``now`` (billing's own resolution of subscriptions and default)."""
    from billing.invoicing import plan_in_force, price_spec

    plan = plan_in_force(org=org, at=now)
    if plan is None:
        return _Prices("USD", "", {})
    specs = {(pp.meter, pp.tier): price_spec(pp) for pp in plan.prices.all()}
    return _Prices(plan.currency, plan.code, specs)


@dataclass
class _Usage:
    """One simulated month's quantities in base units (bytes, byte-days, counts)."""

    storage: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    transitions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    early: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    egress: float = 0.0
    restore: float = 0.0
    ingest_bytes: int = 0
    ingest_instances: int = 0


def _price_month(prices: _Prices, usage: _Usage) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """A month's components as billed (each rounded once to the cent, like an invoice line) and
    before that rounding."""
    gib = Decimal(GIB)
    exact: dict[str, Decimal] = {}
    out: dict[str, Decimal] = {}
    for tier in TIERS:
        qty = Decimal(round(usage.storage.get(tier, 0))) / gib  # a month's average = GiB-months
        exact[f"storage_{tier}"] = prices.amount("storage", tier, qty)
    per_1000 = Decimal(METERS["tier.transitions"].divisor)
    transitions = [
        prices.amount("tier.transitions", t, Decimal(n) / per_1000)
        for t, n in usage.transitions.items()
    ]
    early = [
        prices.amount("early_deletion", t, Decimal(round(v)) / gib) for t, v in usage.early.items()
    ]
    ingest = [
        prices.amount("ingest.bytes", "", Decimal(usage.ingest_bytes) / gib),
        prices.amount(
            "ingest.instances",
            "",
            Decimal(usage.ingest_instances) / Decimal(METERS["ingest.instances"].divisor),
        ),
    ]
    exact["transitions"] = sum(transitions, Decimal(0))
    exact["restores"] = prices.amount("restore.bytes", "", Decimal(round(usage.restore)) / gib)
    exact["early_deletion"] = sum(early, Decimal(0))
    exact["egress"] = prices.amount("egress.bytes", "", Decimal(round(usage.egress)) / gib)
    exact["ingest"] = sum(ingest, Decimal(0))
    for key in exact:
        out[key] = round_money(exact[key])
    # One rounding per invoice line: per target tier, per meter.
    out["transitions"] = sum((round_money(a) for a in transitions), Decimal("0.00"))
    out["early_deletion"] = sum((round_money(a) for a in early), Decimal("0.00"))
    out["ingest"] = sum((round_money(a) for a in ingest), Decimal("0.00"))
    return out, exact


# --- the projection ------------------------------------------------------------------------------


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
) -> tuple[list[tuple[_Usage, dict[str, Decimal], dict[str, Decimal]]], dict[int, _RuleEffect]]:
    compiled = [_Compiled(i, r) for i, r in enumerate(rules or [])]
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
            target: _Compiled | None = None
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
        months.append((usage, *_price_month(prices, usage)))
    return months, effects


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


def _money(amount: Decimal, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    text = money_text(amount)
    if text.startswith("<"):
        return f"less than {symbol}0.0001" if symbol else f"less than 0.0001 {currency}"
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


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


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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


def _policy_rules(org: Organization) -> tuple[list[dict[str, Any]] | None, ArchiveSettings | None]:
    settings = ArchiveSettings.objects.for_org(org).select_related("active_policy").first()
    if settings is None or settings.active_policy is None:
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
    docstring). ``candidate_rules`` must already be validated (``archive.policies.rules_validate``)."""
    started = time.perf_counter()
    now = now or timezone.now()
    active_rules, settings = _policy_rules(org)
    grace = settings.trash_grace_days if settings else 30
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
        rules: list[dict[str, Any]] | None, *, all_hot: bool = False
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
        )

    recommended_rules, chosen = _cheapest_variant(
        recommended_rules, chosen, lambda rules: project(rules)[0]
    )

    scenarios: list[Scenario] = []
    effects_recommended: dict[int, _RuleEffect] = {}
    plan: list[tuple[str, list[dict[str, Any]] | None, str]] = [
        ("all_hot", None, "Nothing moves; every byte is billed as hot storage."),
        (
            "active",
            active_rules or [],
            "" if active_rules is not None else "No policy is active: nothing moves.",
        ),
    ]
    if candidate_rules is not None:
        plan.append(("candidate", candidate_rules, ""))
    plan.append(
        (
            "recommended",
            recommended_rules,
            "" if recommended_rules else "Not enough access history to recommend moves yet.",
        )
    )
    for key, rules, note in plan:
        projected, effects = project(rules, all_hot=key == "all_hot")
        if key == "recommended":
            effects_recommended = effects
        scenario = Scenario(key=key, label=SCENARIO_LABELS[key], rules=rules, note=note)
        for start, (usage, components, exact) in zip(starts, projected, strict=True):
            scenario.months.append(
                MonthCost(
                    start=start.date(),
                    components=components,
                    exact=exact,
                    bytes_by_tier={t: round(usage.storage.get(t, 0)) for t in TIERS},
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
                    f"{_size(d.average_bytes)}: moving 1,000 of them to {d.tier} would save "
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
