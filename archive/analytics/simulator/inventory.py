"""The simulator's inventory: the organization's stored instances aggregated in SQL into small
buckets (modality x tier x days since the study date x days since the last read x days in the
tier, plus what the rules look at), and its ingest rate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import (
    Case,
    Count,
    ExpressionWrapper,
    F,
    FloatField,
    IntegerField,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Floor, TruncDate

from archive.analytics.curve import (
    READ_KINDS,
    AccessCurve,
    curve_buckets_sql,
    curve_counts_sql,
    curve_from_rows,
    latest_reads_sql,
)
from archive.analytics.simulator.results import TIERS
from archive.models import AccessEvent, Instance, Series, Study
from archive.policies.sql import _age_code
from archive.storage.tiers import TIER_CATALOG
from tenants.models import Organization

INGEST_WINDOW_DAYS = 90
# Day ranges of the inventory buckets (rule thresholds are added to these).
DAY_EDGES = (7, 30, 60, 90, 120, 180, 240, 300, 365, 455, 545, 730, 1095, 1460, 1825, 3650)
# Days in the current tier matter only for the minimum storage durations: cut at each of them.
TIER_DAY_EDGES = tuple(
    sorted({t.minimum_storage_days for t in TIER_CATALOG.values() if t.minimum_storage_days > 0})
)


@dataclass
class Bucket:
    modality: str
    tier: str
    age: float  # days since the study date, now (negative: dated, or arriving, in the future)
    idle: float  # days since the last read (or receipt); negative when that lies in the future
    in_tier: float  # days in the current tier
    bytes: int
    instances: int
    sop_class: str = ""
    description: str = ""
    patient_age: float | None = None  # whole years at the study date (None: unknown)
    held: bool = False
    arrives: int = -1  # month index of arrival for new ingest; -1: stored already


# What stands for the days of the bucket below 0 (a study date, or a last access, in the future;
# typically a study dated by a site east of UTC, already tomorrow there): a day ahead.
FUTURE_DAYS = -1.0


def _edges(base: tuple[int, ...], extra: set[int]) -> list[int]:
    """The day cuts of the inventory: always 0 (the planner counts days before a date in the
    future as negative, and no rule range reaches below 0), then ``base`` and the rules'
    thresholds ``extra``."""
    return sorted({0, *(e for e in (*base, *extra) if e > 0)})


def _rep(edges: list[int], index: int) -> float:
    """The middle of bucket ``index`` of ``edges``: the first runs from 0 days, or, when the first
    edge is 0 (``_edges``), holds the days below 0 and is ``FUTURE_DAYS``; the last, open one is a
    fifth past its start."""
    if index == 0 and edges[0] == 0:
        return FUTURE_DAYS
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


def _sql_age_years(day: str, birth: str) -> str:
    """The patient's age in whole years on the date ``day`` (the study date, or the day the study
    arrived), as the planner takes it (``archive.policies.sql._age_code``): both dates as
    YYYYMMDD numbers, their difference divided by 10000 and rounded down (a birthday not yet
    reached that year takes a year off; NULL when the birth date is unknown).

    On PostgreSQL with ``date_part`` (double precision: whole numbers this small are exact, and a
    quotient by 10000 of a whole number short of a multiple of 10000 stays short of it), about
    twice as fast as ``EXTRACT``'s numeric."""

    def number(date_sql: str) -> str:
        if _pg():
            return (
                f"(date_part('year', {date_sql}) * 10000 + date_part('month', {date_sql}) * 100 "
                f"+ date_part('day', {date_sql}))"
            )
        return f"CAST(strftime('%%Y%%m%%d', {date_sql}) AS INTEGER)"

    return f"CAST(FLOOR(({number(day)} - {number(birth)}) / 10000.0) AS INTEGER)"


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
    ``with_curve`` also the access curve (``archive.analytics.curve``) as of ``now``.

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
    counts (``archive.analytics.curve.curve_counts_sql``) read the same studies, in more rows of the
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
        "page": _sql_age_years(ref, "s.patient_birth_date"),
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
        # The planner's own expression (study date minus birth date as YYYYMMDD numbers), in
        # whole years rounded down.
        years = ExpressionWrapper(_age_code("study__") / 10000.0, output_field=FloatField())
        qs = qs.annotate(page=Cast(Floor(years), IntegerField()))
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
        "page": _sql_age_years(ref, "s.patient_birth_date"),
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
