"""Access analytics: how much of an organization's images is read again, and how long after.

The access curve answers, for horizons of 7, 30, 90, 180 and 365 days: of the studies (and of their
bytes) old enough to be observed at that horizon, what fraction was read again on or after that
many days from the study's reference date. The reference date is the study date, or the day the
study was received when the study date is missing. "Old enough" means the reference date is at
least the horizon in the past: a study of last week says nothing about reads after 90 days.

What counts as a read: the access log's ``retrieve`` (WADO-RS) and ``download`` (portal) events.
WADO-RS ``metadata`` requests do not count: viewers fetch the metadata of a patient's priors to lay
out hanging protocols without anyone looking at the pixels, the metadata is served from the index
(it never needs a restore and carries no image bytes), and the index's own last-access times
ignore it for the same reason (``archive.services.access_record``). Counting them would make old
studies look read and keep them hot for nothing.

All counting happens in SQL: each study (per modality: its series of that modality, grouped) is
joined once with the time of its latest read, then conditional aggregates count the observed and
the re-read studies and bytes per horizon. Per modality, a study counts under each modality of
its series, with the bytes of those series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from archive.models import AccessEvent, Series, Study
from tenants.models import Organization

HORIZONS: tuple[int, ...] = (7, 30, 90, 180, 365)
READ_KINDS: tuple[str, ...] = (AccessEvent.Kind.RETRIEVE, AccessEvent.Kind.DOWNLOAD)


@dataclass(frozen=True)
class CurvePoint:
    """One horizon: how many studies (bytes) were observable, how many were read again."""

    days: int
    studies_observed: int
    studies_read: int
    bytes_observed: int
    bytes_read: int

    @property
    def study_fraction(self) -> float | None:
        return self.studies_read / self.studies_observed if self.studies_observed else None

    @property
    def bytes_fraction(self) -> float | None:
        return self.bytes_read / self.bytes_observed if self.bytes_observed else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "studies_observed": self.studies_observed,
            "studies_read": self.studies_read,
            "study_fraction": self.study_fraction,
            "bytes_observed": self.bytes_observed,
            "bytes_read": self.bytes_read,
            "bytes_fraction": self.bytes_fraction,
        }


@dataclass
class AccessCurve:
    as_of: datetime
    horizons: tuple[int, ...]
    overall: list[CurvePoint]
    by_modality: dict[str, list[CurvePoint]] = field(default_factory=dict)

    def points(self, modality: str | None = None) -> list[CurvePoint]:
        if modality is None:
            return self.overall
        return self.by_modality.get(modality, [])

    def point(self, days: int, modality: str | None = None) -> CurvePoint | None:
        return next((p for p in self.points(modality) if p.days == days), None)

    @property
    def has_data(self) -> bool:
        return any(p.studies_observed for p in self.overall)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _day_gap_sql(later: str, earlier: str, *, later_is_date: bool = False) -> str:
    """Whole days from the date ``earlier`` to the date of the timestamp ``later`` (or to the
    date ``later``)."""
    if _postgres():
        if later_is_date:
            return f"({later}::date - ({earlier}))"
        return f"(({later}) AT TIME ZONE 'UTC')::date - ({earlier})"
    inner = later if later_is_date else f"date({later})"
    return f"CAST(julianday({inner}) - julianday({earlier}) AS INTEGER)"


def _received_date_sql(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"(({column}) AT TIME ZONE 'UTC')::date"
    return f"date({column})"


def _aggregates(horizons: tuple[int, ...]) -> str:
    """Conditional aggregates per horizon over rows (one per study) of ``(nbytes, age, gap)``:
    the study's age in days and the days from its reference date to its latest read (NULL when
    never read); observed and re-read studies and bytes. Horizons are integers from the code."""
    parts: list[str] = []
    for h in (int(h) for h in horizons):
        observed = f"t.age >= {h}"
        read = f"t.age >= {h} AND t.gap >= {h}"
        parts += [
            f"COALESCE(SUM(CASE WHEN {observed} THEN 1 ELSE 0 END), 0)",
            f"COALESCE(SUM(CASE WHEN {read} THEN 1 ELSE 0 END), 0)",
            f"COALESCE(SUM(CASE WHEN {observed} THEN t.nbytes ELSE 0 END), 0)",
            f"COALESCE(SUM(CASE WHEN {read} THEN t.nbytes ELSE 0 END), 0)",
        ]
    return ", ".join(parts)


def _points(row: tuple[Any, ...], horizons: tuple[int, ...]) -> list[CurvePoint]:
    values = [int(v or 0) for v in row] or [0] * (4 * len(horizons))
    return [
        CurvePoint(h, values[4 * i], values[4 * i + 1], values[4 * i + 2], values[4 * i + 3])
        for i, h in enumerate(horizons)
    ]


def access_curve(
    *, org: Organization, now: datetime | None = None, horizons: tuple[int, ...] = HORIZONS
) -> AccessCurve:
    """The organization's re-read curve, overall and per modality (see the module docstring).

    One statement. The latest read of every study comes from one grouped pass over the access
    log, joined once to the studies; the overall aggregates run over those rows, the per-modality
    ones over the series grouped per study and modality joined to them.
    """
    now = now or timezone.now()
    today = now.date()
    study_t = Study._meta.db_table
    series_t = Series._meta.db_table
    access_t = AccessEvent._meta.db_table
    ref = f"COALESCE(s.study_date, {_received_date_sql('s.created_at')})"
    aggregates = _aggregates(horizons)
    gap = _day_gap_sql("r.last_read", ref)
    age = _day_gap_sql("%s", ref, later_is_date=True)
    # Only table names, placeholders, integers and fixed SQL are interpolated; values are
    # parameters.
    sql = (
        f"WITH latest AS (SELECT a.study_id AS study_id, MAX(a.at) AS last_read "  # noqa: S608
        f"FROM {access_t} a WHERE a.organization_id = %s "
        f"AND a.kind IN ({', '.join(['%s'] * len(READ_KINDS))}) GROUP BY a.study_id), "
        f"st AS (SELECT s.id AS id, s.total_bytes AS nbytes, {age} AS age, {gap} AS gap "
        f"FROM {study_t} s LEFT JOIN latest r ON r.study_id = s.id "
        "WHERE s.organization_id = %s) "
        f"SELECT 0 AS part, '' AS modality, {aggregates} FROM st t "
        f"UNION ALL SELECT 1 AS part, t.modality AS modality, {aggregates} FROM ("
        "SELECT m.modality AS modality, m.nbytes AS nbytes, st.age AS age, st.gap AS gap "
        "FROM (SELECT se.study_id AS study_id, se.modality AS modality, "
        f"SUM(se.total_bytes) AS nbytes FROM {series_t} se WHERE se.organization_id = %s "
        "GROUP BY se.study_id, se.modality) m JOIN st ON st.id = m.study_id) t "
        "GROUP BY t.modality"
    )
    params = [org.pk, *READ_KINDS, today if _postgres() else today.isoformat(), org.pk, org.pk]
    overall: list[CurvePoint] = _points((), horizons)
    by_modality: dict[str, list[CurvePoint]] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A one-off aggregate: compiling it costs more than it saves, and its hash tables
            # (one entry per study) should stay in memory.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        for row in cursor.fetchall():
            if row[0] == 0:
                overall = _points(row[2:], horizons)
            else:
                by_modality[str(row[1] or "")] = _points(row[2:], horizons)
    by_modality = dict(sorted(by_modality.items()))
    return AccessCurve(as_of=now, horizons=horizons, overall=overall, by_modality=by_modality)


def monthly_read_probability(fractions: dict[int, float], age_days: float) -> float:
    """The expected share of bytes of age ``age_days`` read in one month, from a curve.

    The curve says which share is read again on or after each horizon; the drop between two
    horizons is the share whose re-reads end in that interval, spread evenly over its months.
    Past the last horizon, its share is spread over the following year, month after month (the
    last rate observed carries on). Before the first horizon (the first week's reads, the same
    whatever the policy) nothing is counted.
    """
    points = sorted((d, f) for d, f in fractions.items() if f is not None)
    if not points or age_days < points[0][0]:
        return 0.0
    for (d0, f0), (d1, f1) in zip(points, points[1:], strict=False):
        if d0 <= age_days < d1:
            return max(f0 - f1, 0.0) * 30.0 / (d1 - d0)
    return max(points[-1][1], 0.0) / 12.0
