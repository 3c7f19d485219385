"""Month-end forecast: storage carried forward at its current level, other meters on their trend.

For the month containing ``now``: storage byte-seconds so far plus the balance per tier now
(``billing.selectors.stored_bytes_now``, what "Stored now" shows) times the hours left; every other
meter's month-to-date quantity scaled by total hours / elapsed hours (its average hourly rate so
far). The projection is priced exactly like an invoice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.invoicing import DraftLine, usage_lines
from billing.meters import STORAGE
from billing.periods import hours_between, month_bounds
from billing.rollups import HOUR, floor_hour
from billing.selectors import stored_bytes_now, usage_totals
from tenants.models import Organization


@dataclass
class Forecast:
    period_start: datetime
    period_end: datetime
    as_of: datetime
    currency: str
    actual: list[DraftLine]
    projected: list[DraftLine]

    @property
    def actual_total(self) -> Decimal:
        return sum((ln.amount for ln in self.actual), Decimal("0.00"))

    @property
    def projected_total(self) -> Decimal:
        return sum((ln.amount for ln in self.projected), Decimal("0.00"))

    def per_meter(self) -> list[dict[str, object]]:
        rows: dict[tuple[str, str], dict[str, object]] = {}
        for kind, lines in (("actual", self.actual), ("forecast", self.projected)):
            for ln in lines:
                key = (ln.meter or ln.kind, ln.tier)
                row = rows.setdefault(
                    key,
                    {
                        "meter": key[0],
                        "tier": key[1],
                        "actual": Decimal("0.00"),
                        "forecast": Decimal("0.00"),
                    },
                )
                row[kind] = row[kind] + ln.amount  # type: ignore[operator]
        return list(rows.values())


def forecast_month(*, org: Organization, now: datetime) -> Forecast:
    start, end = month_bounds(now)
    as_of = min(max(floor_hour(now), start), end)
    # Storage at its level now, as "Stored now" and the archive index say it, including what was
    # stored or moved since the last complete hour (the actual lines stop at that hour).
    balances = stored_bytes_now(org=org, now=now)

    def projected_totals(seg_start: datetime, seg_end: datetime) -> dict[tuple[str, str], int]:
        so_far = usage_totals(org=org, start=seg_start, end=min(seg_end, as_of))
        seg_elapsed = max(hours_between(seg_start, min(seg_end, as_of)), 0)
        seg_hours = hours_between(seg_start, seg_end)
        remaining = max(seg_hours - seg_elapsed, 0)
        # Events of the current, unfinished hour are already rolled up (and billed as actual
        # usage): they are added once, not extrapolated, so the projection never falls below it.
        current = (
            usage_totals(org=org, start=as_of, end=min(seg_end, as_of + HOUR))
            if seg_start <= as_of < seg_end
            else {}
        )
        out: dict[tuple[str, str], int] = {}
        for meter, dim in set(so_far) | set(current):
            if meter == STORAGE:
                continue
            qty = so_far.get((meter, dim), 0)
            trend = qty * seg_hours // seg_elapsed if seg_elapsed else qty
            out[(meter, dim)] = trend + current.get((meter, dim), 0)
        for tier, balance in balances.items():
            key = (STORAGE, f"tier={tier}")
            out[key] = so_far.get(key, 0) + balance * remaining * 3600
        return out

    actual, currency = usage_lines(org=org, period_start=start, period_end=end)
    projector: Callable[[datetime, datetime], dict[tuple[str, str], int]] = projected_totals
    projected, _ = usage_lines(
        org=org, period_start=start, period_end=end, totals_by_segment=projector
    )
    return Forecast(start, end, as_of, currency, actual, projected)
