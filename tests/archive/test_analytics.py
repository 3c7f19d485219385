"""The access curve on a small hand-made access log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archive.analytics.curve import access_curve, monthly_read_probability
from tests.archive.analytics_helpers import add_study, read

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _day(days_ago: int):
    return (NOW - timedelta(days=days_ago)).date()


@pytest.fixture
def log(org, other_org):
    """Four CT studies of 100 bytes and two MR studies of 1,000 bytes, of known ages and reads."""
    at = NOW - timedelta(days=400)
    # CT, 400 days old: read on day 2, day 100 and day 370 -> read again after 7..365.
    a = add_study(org, study_date=_day(400), received=at, series=[("CT", 1, 100)])
    read(org, a, NOW - timedelta(days=398))
    read(org, a, NOW - timedelta(days=300))
    read(org, a, NOW - timedelta(days=30))
    # CT, 400 days old: read on day 40 only -> after 7 and 30, not after 90.
    b = add_study(org, study_date=_day(400), received=at, series=[("CT", 1, 100)])
    read(org, b, NOW - timedelta(days=360))
    # CT, 100 days old, never read; observed at 7, 30, 90.
    add_study(org, study_date=_day(100), received=at, series=[("CT", 1, 100)])
    # CT without a study date, received 10 days ago, read on day 8: observed at 7 only, read.
    d = add_study(org, study_date=None, received=NOW - timedelta(days=10), series=[("CT", 1, 100)])
    read(org, d, NOW - timedelta(days=2))
    # MR, 200 days old: metadata read on day 190 (not a read), download on day 31.
    e = add_study(org, study_date=_day(200), received=at, series=[("MR", 2, 500)])
    read(org, e, NOW - timedelta(days=10), kind="metadata")
    read(org, e, NOW - timedelta(days=169), kind="download")
    # MR, 5 days old: observed nowhere.
    f = add_study(org, study_date=_day(5), received=at, series=[("MR", 2, 500)])
    read(org, f, NOW - timedelta(days=1))
    # Another organization's busy reads never count.
    x = add_study(other_org, study_date=_day(400), received=at, series=[("CT", 1, 100)])
    read(other_org, x, NOW)
    return org


def _fractions(points):
    return {
        p.days: (p.studies_read, p.studies_observed, p.bytes_read, p.bytes_observed) for p in points
    }


def test_overall_curve_counts_observed_and_reread_studies_and_bytes(log):
    curve = access_curve(org=log, now=NOW)
    assert _fractions(curve.overall) == {
        7: (4, 5, 1300, 1400),  # a, b, d, e read after 7 days; c not; f too young
        30: (3, 4, 1200, 1300),  # a, b, e; d too young
        90: (1, 4, 100, 1300),  # a only; e's download was on day 31, its metadata read ignored
        180: (1, 3, 100, 1200),  # a (day 370); e observed, not read again; c too young
        365: (1, 2, 100, 200),  # a, b observed; a read on day 370
    }
    assert curve.point(90).study_fraction == pytest.approx(0.25)
    assert curve.point(365).bytes_fraction == pytest.approx(0.5)


def test_curve_by_modality(log):
    curve = access_curve(org=log, now=NOW)
    assert set(curve.by_modality) == {"CT", "MR"}
    assert _fractions(curve.points("CT"))[90] == (1, 3, 100, 300)
    assert _fractions(curve.points("MR")) == {
        7: (1, 1, 1000, 1000),
        30: (1, 1, 1000, 1000),
        90: (0, 1, 0, 1000),
        180: (0, 1, 0, 1000),
        365: (0, 0, 0, 0),
    }
    assert curve.point(365, "MR").study_fraction is None


def test_empty_organization_has_no_data(other_org):
    curve = access_curve(org=other_org, now=NOW)
    assert not curve.has_data
    assert all(p.studies_observed == 0 for p in curve.overall)


def test_monthly_read_probability_spreads_the_curve_over_months():
    curve = {7: 0.5, 30: 0.2, 90: 0.08, 180: 0.05, 365: 0.02}
    assert monthly_read_probability(curve, 3) == 0
    assert monthly_read_probability(curve, 60) == pytest.approx((0.2 - 0.08) * 30 / 60)
    assert monthly_read_probability(curve, 400) == pytest.approx(0.02 / 12)
