"""Reads of metering and billing, always for one organization, always from rollups."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import F, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDay

from billing.meters import STORAGE, TIERS
from billing.models import Budget, BudgetAlert, Invoice, InvoiceLine, Rollup, StorageDelta
from tenants.errors import NotFound
from tenants.models import Organization

# SQLite's SUM() overflows past 2^63 (a month of byte-seconds of ~3.1 TiB in one tier); summing
# quotient and remainder by 10^9 separately keeps both small and the total exact everywhere.
_SPLIT = 10**9
HOUR = timedelta(hours=1)


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


def stored_bytes_now(*, org: Organization, now: datetime) -> dict[str, int]:
    """The images' bytes stored per tier at ``now``: the storage ledger's balance (every delta at
    or before ``now``), so that bytes stored or moved within the hour show at once, as they do in
    the archive index (the two agree when every byte was metered: ``manage.py reconcile``).
    Thumbnails (``storage.derived``) are left out, as the index leaves them out. Tiers without a
    delta are absent (a balance of 0).

    Read as the last complete rolled-up hour's balance plus the deltas from the end of that hour
    to ``now`` (a range of the ledger's (organization, tier, at) index, not the whole ledger); a
    delta recorded late for an hour already rolled up shows with the next rollup run.

    What every page showing "stored now" from the ledger reads: the *Usage & billing* overview
    and the last point of the stored-bytes chart (there and on the dashboard).
    """
    dimension = {f"tier={t}": t for t in TIERS}
    rolled_hours = (
        Rollup.objects.for_org(org)
        .filter(meter=STORAGE, dimension_key__in=dimension, hour__lte=now - HOUR)
        .values("dimension_key")
        .annotate(last=Max("hour"))
    )
    wanted = {(row["dimension_key"], row["last"]) for row in rolled_hours}
    balances: dict[str, int] = {}
    since = Q()
    if wanted:
        rows = (
            Rollup.objects.for_org(org)
            .filter(meter=STORAGE, hour__in={hour for _, hour in wanted})
            .values_list("dimension_key", "hour", "balance_bytes")
        )
        for dim, hour, balance in rows:
            if (dim, hour) in wanted:
                tier = dimension[dim]
                balances[tier] = int(balance or 0)
                since |= Q(tier=tier, at__gte=hour + HOUR)
    # Rolled tiers from the end of their last rolled hour, the others (not rolled yet) whole.
    later = since | ~Q(tier__in=list(balances)) if balances else Q()
    deltas = (
        StorageDelta.objects.for_org(org)
        .filter(later, meter=STORAGE, at__lte=now)
        .values("tier")
        .annotate(total=Sum("delta_bytes"))
        .order_by()
    )
    for row in deltas:
        tier = str(row["tier"])
        balances[tier] = balances.get(tier, 0) + int(row["total"] or 0)
    return balances


def storage_balance_now(*, org: Organization) -> dict[str, int]:
    """Bytes per tier at the end of the last rolled-up hour (what pages show as stored now, and
    what the forecast carries forward, is ``stored_bytes_now``: the balance at this moment)."""
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
