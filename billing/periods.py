"""Billing periods: calendar months in UTC, half-open [start, end)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.utils import timezone

from tenants.errors import ValidationFailed


def month_start(t: datetime | date) -> datetime:
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)


def month_bounds(t: datetime | date) -> tuple[datetime, datetime]:
    start = month_start(t)
    return start, next_month(start)


def hours_between(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds()) // 3600


def hours_in_month(t: datetime | date) -> int:
    start, end = month_bounds(t)
    return hours_between(start, end)


def require_aware(value: datetime, name: str) -> datetime:
    if timezone.is_naive(value):
        raise ValidationFailed(
            f"'{name}' must include a timezone (UTC).",
            fields={name: ["Naive datetimes are ambiguous; add Z or +00:00."]},
        )
    return value.astimezone(UTC)


def check_range(
    start: datetime, end: datetime, *, max_days: int = 400
) -> tuple[datetime, datetime]:
    start = require_aware(start, "start")
    end = require_aware(end, "end")
    if end <= start:
        raise ValidationFailed(
            "The range is reversed or empty: 'end' must be after 'start'.",
            fields={"end": ["Must be after start."]},
        )
    if end - start > timedelta(days=max_days):
        raise ValidationFailed(
            f"The range is longer than {max_days} days.",
            fields={"end": [f"At most {max_days} days after start."]},
        )
    return start, end
