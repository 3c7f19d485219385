"""Reads of metering and billing, always for one organization, always from rollups."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, Max, QuerySet, Sum
from django.db.models.functions import TruncDay

from billing.models import Budget, BudgetAlert, Invoice, InvoiceLine, Rollup
from tenants.errors import NotFound
from tenants.models import Organization

# SQLite's SUM() overflows past 2^63 (a month of byte-seconds of ~3.1 TiB in one tier); summing
# quotient and remainder by 10^9 separately keeps both small and the total exact everywhere.
_SPLIT = 10**9


def usage_totals(
    *, org: Organization, start: datetime, end: datetime
) -> dict[tuple[str, str], int]:
    """Base-unit totals per (meter, dimension_key) for hours in [start, end)."""
    rows = (
        Rollup.objects.for_org(org)
        .filter(hour__gte=start, hour__lt=end)
        .values_list("meter", "dimension_key")
        .annotate(
            high=Sum(F("quantity") / _SPLIT),
            low=Sum(F("quantity") - F("quantity") / _SPLIT * _SPLIT),
        )
    )
    return {(meter, dim): int(high or 0) * _SPLIT + int(low or 0) for meter, dim, high, low in rows}


def usage_daily(*, org: Organization, start: datetime, end: datetime) -> list[dict[str, object]]:
    """Per day, meter and dimension: base-unit totals (storage: byte-seconds)."""
    rows = (
        Rollup.objects.for_org(org)
        .filter(hour__gte=start, hour__lt=end)
        .annotate(day=TruncDay("hour"))
        .values("day", "meter", "dimension_key")
        .annotate(total=Sum("quantity"))
        .order_by("day", "meter", "dimension_key")
    )
    return list(rows)


def storage_balance_daily(
    *, org: Organization, start: datetime, end: datetime
) -> list[dict[str, object]]:
    """Stored bytes per tier at the end of each day (from the last rolled hour of the day)."""
    last_hours = (
        Rollup.objects.for_org(org)
        .filter(meter="storage", hour__gte=start, hour__lt=end)
        .annotate(day=TruncDay("hour"))
        .values("day", "dimension_key")
        .annotate(last=Max("hour"))
    )
    wanted = {(row["dimension_key"], row["last"]): row["day"] for row in last_hours}
    if not wanted:
        return []
    rows = (
        Rollup.objects.for_org(org)
        .filter(meter="storage", hour__in={h for _, h in wanted})
        .values_list("dimension_key", "hour", "balance_bytes")
    )
    out = [
        {"day": wanted[(dim, hour)], "tier": dim.removeprefix("tier="), "bytes": int(balance or 0)}
        for dim, hour, balance in rows
        if (dim, hour) in wanted
    ]
    return sorted(out, key=lambda r: (str(r["day"]), str(r["tier"])))


def storage_balance_now(*, org: Organization) -> dict[str, int]:
    """Bytes per tier at the end of the last rolled-up hour."""
    latest = (
        Rollup.objects.for_org(org)
        .filter(meter="storage")
        .values("dimension_key")
        .annotate(last=Max("hour"))
    )
    out: dict[str, int] = {}
    for row in latest:
        balance = (
            Rollup.objects.for_org(org)
            .filter(meter="storage", dimension_key=row["dimension_key"], hour=row["last"])
            .values_list("balance_bytes", flat=True)
            .first()
        )
        out[str(row["dimension_key"]).removeprefix("tier=")] = int(balance or 0)
    return out


def rollups_for_line(
    *, org: Organization, meter: str, dimension_key: str, start: datetime, end: datetime
) -> QuerySet[Rollup]:
    """The rollup rows an invoice line was computed from, for tracing an amount."""
    return (
        Rollup.objects.for_org(org)
        .filter(meter=meter, dimension_key=dimension_key, hour__gte=start, hour__lt=end)
        .order_by("hour")
    )


def invoice_list(*, org: Organization) -> QuerySet[Invoice]:
    return Invoice.objects.for_org(org).order_by("-id")


def invoice_get(*, org: Organization, invoice_id: int) -> Invoice:
    """One invoice of ``org`` with its lines and credit notes; another tenant's id is NotFound."""
    invoice = (
        Invoice.objects.for_org(org)
        .select_related("organization")
        .prefetch_related("lines", "credit_notes")
        .filter(pk=invoice_id)
        .first()
    )
    if invoice is None:
        raise NotFound("Invoice not found.")
    return invoice


def invoice_line_get(*, org: Organization, invoice_id: int, line_id: int) -> InvoiceLine:
    line = (
        InvoiceLine.objects.for_org(org)
        .select_related("invoice")
        .filter(pk=line_id, invoice_id=invoice_id)
        .first()
    )
    if line is None:
        raise NotFound("Invoice line not found.")
    return line


def budget_get(*, org: Organization) -> Budget | None:
    return Budget.objects.for_org(org).first()


def budget_alert_list(*, org: Organization) -> QuerySet[BudgetAlert]:
    return BudgetAlert.objects.for_org(org).order_by("-id")
