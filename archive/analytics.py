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


def _bucket_sql(value: str, horizons: tuple[int, ...]) -> str:
    """How many horizons are at or below ``value`` (0 when it is NULL: never read)."""
    cuts = [int(h) for h in horizons]
    if _postgres():
        return f"COALESCE(width_bucket({value}, ARRAY[{', '.join(map(str, cuts))}]), 0)"
    whens = " ".join(f"WHEN ({value}) < {h} THEN {k}" for k, h in enumerate(cuts))
    return f"(CASE WHEN ({value}) IS NULL THEN 0 {whens} ELSE {len(cuts)} END)"


def _points(
    counts: dict[tuple[int, int], tuple[int, int]], horizons: tuple[int, ...]
) -> list[CurvePoint]:
    """The curve from studies (and bytes) counted per (age bucket, read bucket): a study is
    observed at the k-th horizon when its age reaches it (bucket > k), read again when its
    latest read is that many days past its reference date too."""
    cuts = sorted(int(h) for h in horizons)
    points = []
    for h in horizons:
        k = cuts.index(int(h))
        observed = [(n, b) for (age_b, _), (n, b) in counts.items() if age_b > k]
        read = [(n, b) for (age_b, gap_b), (n, b) in counts.items() if age_b > k and gap_b > k]
        points.append(
            CurvePoint(
                h,
                sum(n for n, _ in observed),
                sum(n for n, _ in read),
                sum(b for _, b in observed),
                sum(b for _, b in read),
            )
        )
    return points


def access_curve(
    *, org: Organization, now: datetime | None = None, horizons: tuple[int, ...] = HORIZONS
) -> AccessCurve:
    """The organization's re-read curve, overall and per modality (see the module docstring).

    One statement. The latest read of every study comes from one grouped pass over the access
    log, joined once to the studies; each study gets the number of horizons its age reaches and
    the number its latest read reaches, and the studies (overall, and per modality the series
    grouped per study and modality) are counted per pair of those, a few dozen rows summed up
    here per horizon.
    """
    now = now or timezone.now()
    today = now.date()
    study_t = Study._meta.db_table
    series_t = Series._meta.db_table
    access_t = AccessEvent._meta.db_table
    cuts = tuple(sorted(int(h) for h in horizons))
    ref = f"COALESCE(s.study_date, {_received_date_sql('s.created_at')})"
    gap = _day_gap_sql("r.last_read", ref)
    age = _day_gap_sql("%s", ref, later_is_date=True)
    # Only table names, parameter markers, integers and fixed SQL are interpolated; values are
    # parameters.
    sql = (
        f"WITH latest AS (SELECT a.study_id AS study_id, MAX(a.at) AS last_read "  # noqa: S608
        f"FROM {access_t} a WHERE a.organization_id = %s "
        f"AND a.kind IN ({', '.join(['%s'] * len(READ_KINDS))}) GROUP BY a.study_id), "
        f"st AS (SELECT s.id AS id, s.total_bytes AS nbytes, {_bucket_sql(age, cuts)} AS "
        f"age_b, {_bucket_sql(gap, cuts)} AS gap_b "
        f"FROM {study_t} s LEFT JOIN latest r ON r.study_id = s.id "
        "WHERE s.organization_id = %s) "
        "SELECT 0 AS part, '' AS modality, t.age_b, t.gap_b, COUNT(*), SUM(t.nbytes) FROM st t "
        "GROUP BY t.age_b, t.gap_b "
        "UNION ALL SELECT 1 AS part, m.modality AS modality, st.age_b, st.gap_b, COUNT(*), "
        "SUM(m.nbytes) FROM (SELECT se.study_id AS study_id, se.modality AS modality, "
        f"SUM(se.total_bytes) AS nbytes FROM {series_t} se WHERE se.organization_id = %s "
        "GROUP BY se.study_id, se.modality) m JOIN st ON st.id = m.study_id "
        "GROUP BY m.modality, st.age_b, st.gap_b"
    )
    day = today if _postgres() else today.isoformat()
    # (SQLite repeats the age expression in its CASE ladder, with its parameter.)
    age_params = [day] if _postgres() else [day] * (len(cuts) + 1)
    params = [org.pk, *READ_KINDS, *age_params, org.pk, org.pk]
    overall: dict[tuple[int, int], tuple[int, int]] = {}
    per_modality: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A one-off aggregate: compiling it costs more than it saves, and its hash tables
            # (one entry per study) should stay in memory.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        for part, modality, age_b, gap_b, n, nbytes in cursor.fetchall():
            counts = overall if part == 0 else per_modality.setdefault(str(modality or ""), {})
            counts[(int(age_b), int(gap_b))] = (int(n or 0), int(nbytes or 0))
    return AccessCurve(
        as_of=now,
        horizons=horizons,
        overall=_points(overall, horizons),
        by_modality={m: _points(c, horizons) for m, c in sorted(per_modality.items())},
    )


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
