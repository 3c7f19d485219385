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
ignore it for the same reason (``archive.index.services.access_record``). Counting them would make old
studies look read and keep them hot for nothing.

All counting happens in SQL: each study (per modality: its series of that modality, grouped) is
joined once with the time of its latest read, then conditional aggregates count the observed and
the re-read studies and bytes per horizon. Per modality, a study counts under each modality of
its series, with the bytes of those series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from archive.models import AccessEvent, Series, Study
from tenants.models import Organization

HORIZONS: tuple[int, ...] = (7, 30, 90, 180, 365)
# (The partial index of reads, migration 0007, lists the same kinds.)
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


def latest_reads_sql(*, org: Organization, whole_study: bool = False) -> tuple[str, list[Any]]:
    """A SELECT of the latest read of each of the organization's studies read at all:
    ``study_id`` and ``last_read`` (any read of the study or of one of its series), and with
    ``whole_study`` also ``study_read`` (the latest read of the study as a whole; NULL when
    only series of it were read); and its parameters.

    The reads come in study order (the ORDER BY), so that they are grouped as they stream
    from the partial index of reads by study and time (migration 0007) instead of into a hash
    table of every study read."""
    access_t = AccessEvent._meta.db_table
    whole = ", MAX(a.at) FILTER (WHERE a.series_id IS NULL) AS study_read" if whole_study else ""
    # Only table names, parameter markers and fixed SQL are interpolated; values are parameters.
    sql = (
        f"SELECT a.study_id AS study_id, MAX(a.at) AS last_read{whole} FROM ("  # noqa: S608
        f"SELECT a.study_id AS study_id, a.at AS at, a.series_id AS series_id FROM {access_t} a "
        f"WHERE a.organization_id = %s AND a.kind IN ({', '.join(['%s'] * len(READ_KINDS))}) "
        "ORDER BY a.study_id) a GROUP BY a.study_id"
    )
    return sql, [org.pk, *READ_KINDS]


def curve_buckets_sql(
    *, ref: str, last_read: str, today: date, horizons: tuple[int, ...] = HORIZONS
) -> tuple[str, list[Any]]:
    """The select-list SQL of a study's two buckets, ``age_b`` (how many horizons its age
    reaches) and ``gap_b`` (how many its latest read reaches), from its reference date ``ref``
    and the time of its latest read ``last_read`` (NULL: never read); and its parameters."""
    cuts = tuple(sorted(int(h) for h in horizons))
    gap = _day_gap_sql(last_read, ref)
    age = _day_gap_sql("%s", ref, later_is_date=True)
    day = today if _postgres() else today.isoformat()
    # (SQLite repeats the age expression in its CASE ladder, with its parameter.)
    params = [day] if _postgres() else [day] * (len(cuts) + 1)
    return f"{_bucket_sql(age, cuts)} AS age_b, {_bucket_sql(gap, cuts)} AS gap_b", params


def curve_counts_sql(*, studies: str, org: Organization) -> tuple[str, list[Any]]:
    """Two grouped SELECTs (UNION ALL) over ``studies``, a relation of the organization's
    studies with columns ``id``, ``nbytes``, ``age_b`` and ``gap_b`` (see
    ``curve_buckets_sql``): rows (part, modality, age_b, gap_b, studies, bytes), part 0 for all
    studies (modality ''), part 1 per modality (a study under each modality of its series, with
    the bytes of those series, grouped in the order of the index of series by study and
    modality, migration 0007); and its parameters. ``curve_from_rows`` reads them."""
    series_t = Series._meta.db_table
    # Only table and relation names and fixed SQL are interpolated; values are parameters.
    sql = (
        "SELECT 0 AS part, '' AS modality, t.age_b AS age_b, t.gap_b AS gap_b, "  # noqa: S608
        f"COUNT(*) AS studies, SUM(t.nbytes) AS bytes FROM {studies} t GROUP BY t.age_b, t.gap_b "
        "UNION ALL SELECT 1 AS part, m.modality AS modality, t.age_b AS age_b, t.gap_b AS gap_b, "
        "COUNT(*) AS studies, SUM(m.nbytes) AS bytes FROM (SELECT se.study_id AS study_id, "
        f"se.modality AS modality, SUM(se.total_bytes) AS nbytes FROM {series_t} se "
        "WHERE se.organization_id = %s GROUP BY se.study_id, se.modality) m "
        f"JOIN {studies} t ON t.id = m.study_id GROUP BY m.modality, t.age_b, t.gap_b"
    )
    return sql, [org.pk]


def curve_from_rows(
    rows: Iterable[tuple[Any, ...]], *, now: datetime, horizons: tuple[int, ...] = HORIZONS
) -> AccessCurve:
    """The curve from the rows of ``curve_counts_sql``."""
    overall: dict[tuple[int, int], tuple[int, int]] = {}
    per_modality: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
    for part, modality, age_b, gap_b, n, nbytes in rows:
        counts = overall if part == 0 else per_modality.setdefault(str(modality or ""), {})
        counts[(int(age_b), int(gap_b))] = (int(n or 0), int(nbytes or 0))
    return AccessCurve(
        as_of=now,
        horizons=horizons,
        overall=_points(overall, horizons),
        by_modality={m: _points(c, horizons) for m, c in sorted(per_modality.items())},
    )


def access_curve(
    *, org: Organization, now: datetime | None = None, horizons: tuple[int, ...] = HORIZONS
) -> AccessCurve:
    """The organization's re-read curve, overall and per modality (see the module docstring).

    One statement. The latest read of every study comes from one grouped pass over the access
    log, joined once to the studies; each study gets the number of horizons its age reaches and
    the number its latest read reaches, and the studies (overall, and per modality the series
    grouped per study and modality) are counted per pair of those, a few dozen rows summed up
    here per horizon. (The cost simulator runs the same counts in its inventory statement,
    sharing its pass over the access log.)
    """
    now = now or timezone.now()
    study_t = Study._meta.db_table
    ref = f"COALESCE(s.study_date, {_received_date_sql('s.created_at')})"
    buckets, bucket_params = curve_buckets_sql(
        ref=ref, last_read="r.last_read", today=now.date(), horizons=horizons
    )
    counts, count_params = curve_counts_sql(studies="st", org=org)
    latest, latest_params = latest_reads_sql(org=org)
    # Only table names, parameter markers, integers and fixed SQL are interpolated; values are
    # parameters.
    sql = (
        f"WITH latest AS ({latest}), "  # noqa: S608
        f"st AS (SELECT s.id AS id, s.total_bytes AS nbytes, {buckets} "
        f"FROM {study_t} s LEFT JOIN latest r ON r.study_id = s.id "
        f"WHERE s.organization_id = %s) {counts}"
    )
    params = [*latest_params, *bucket_params, org.pk, *count_params]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A one-off aggregate: compiling it costs more than it saves, and its hash tables
            # (one entry per study) should stay in memory.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return curve_from_rows(rows, now=now, horizons=horizons)


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
