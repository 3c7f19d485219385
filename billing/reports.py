"""Usage reports and invoice documents: JSON-ready rows, CSV and PDF.

Everything here is a read. Usage comes only from rollups (``billing.selectors``), never from raw
events or the ledger, so a report agrees with the invoice computed from the same rollups.

Conventions every document states:

- Base quantities are exact integers in the meter's base unit (storage: byte-seconds).
- Billing quantities are derived from them exactly and shown to 9 decimal places (as invoice
  lines store them). Storage: ``GiB-months = byte-hours / 2^30 / hours in the calendar month``,
  so a range that spans months converts each month's usage with that month's hours.
- Money: each invoice line is rounded half-up to the cent once; every total is the sum of the
  rounded lines.
- Times are UTC; a billing period and a report range are half-open ``[start, end)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from billing.forecast import Forecast, forecast_month
from billing.invoicing import InvoiceDraft, invoice_compute, usage_lines
from billing.meters import METERS, STORAGE, TIERS, ShownQuantity, billing_quantity, shown_quantity
from billing.models import Budget, Invoice
from billing.periods import check_range, hours_in_month, month_bounds, month_start
from billing.pricing import round_money
from billing.selectors import usage_daily
from tenants import labels
from tenants.csvexport import csv_lines, csv_text
from tenants.errors import ValidationFailed
from tenants.labels import money_label, rate_label
from tenants.models import Organization

GROUPINGS = ("meter", "tier", "day")
QUANTITY_STEP = Decimal("0.000000001")  # 9 places, as InvoiceLine.quantity stores them
ISSUER = "Strata"
ROUNDING_NOTE = (
    "Amounts: each line is rounded half-up to the cent once; every total is the sum of the "
    "rounded lines."
)
COST_NOTE = (
    "Cost: each month's invoice amount of a meter and tier (month to date for the current "
    "month; minimum commitment and adjustments excluded) shared among the rows in proportion to "
    "their usage, each row rounded to the cent."
)
QUANTITY_NOTE = (
    "Quantities are shown rounded (GiB units and hours to 3 decimals, counts whole); the CSV "
    "has them exact."
)
STORAGE_NOTE = (
    "Storage: GiB-month = byte-hours / 2^30 / hours in the month. "
    "Times are UTC; periods are half-open [start, end)."
)


# Room for byte-hours of petabytes over a year plus 9 places; the default 28 digits is not.
_WIDE = Context(prec=60, rounding=ROUND_HALF_EVEN)


def quantity_shown(value: Decimal) -> Decimal:
    """A billing quantity as documents show it: 9 decimal places, rounded as ``invoice_finalize``
    stores line quantities (the default context's half-even)."""
    return value.quantize(QUANTITY_STEP, context=_WIDE)


def tier_of(dimension_key: str) -> str:
    """The tier named in a dimension key (``tier=hot`` -> ``hot``), or ``""``."""
    for part in dimension_key.split(","):
        name, _, value = part.partition("=")
        if name == "tier":
            return value
    return ""


# --- usage report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    meter: str
    label: str
    # None when the rows are not split by tier, or the meter has no tier dimension.
    tier: str | None
    # None when the rows are not split by day.
    day: date | None
    base_quantity: int
    base_unit: str
    quantity: Decimal
    unit: str
    # Storage only: byte-seconds / 3600, to 9 decimal places.
    byte_hours: Decimal | None
    # The row's share of its months' invoice amounts (``usage_costs``), rounded to the cent;
    # None when no plan prices the meter.
    cost: Decimal | None = None


@dataclass(frozen=True)
class UsageReport:
    organization: Organization
    start: datetime
    end: datetime
    group_by: tuple[str, ...]
    rows: list[UsageRow]
    generated_at: datetime
    currency: str = "USD"

    @property
    def total_cost(self) -> Decimal:
        """The sum of the rows' (rounded) costs."""
        return sum((r.cost for r in self.rows if r.cost is not None), Decimal("0.00"))


def group_by_clean(group_by: Iterable[str]) -> tuple[str, ...]:
    """Validate the groupings; returns them in canonical order, deduplicated, always with meter."""
    wanted = [g.strip() for g in group_by if g.strip()]
    unknown = [g for g in wanted if g not in GROUPINGS]
    if unknown:
        raise ValidationFailed(
            "Unknown grouping.",
            fields={
                "group_by": [
                    f"Unknown grouping {g!r}; choose any of {', '.join(GROUPINGS)}."
                    for g in unknown
                ]
            },
        )
    return tuple(g for g in GROUPINGS if g == "meter" or g in wanted)


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _int(value: object) -> int:
    # SUM over a bigint column is an int on SQLite and a Decimal (numeric) on PostgreSQL.
    if value is None:
        return 0
    if isinstance(value, int | Decimal):
        return int(value)
    raise TypeError(f"Unexpected rollup total {value!r}.")


def usage_report(
    *, org: Organization, start: datetime, end: datetime, group_by: Iterable[str]
) -> UsageReport:
    """Usage of ``org`` over the hours that start in ``[start, end)``, read from rollups.

    Rows are always per meter: quantities of different meters have different units and are never
    added up, so ``meter`` is implied. ``tier`` splits rows by tier, ``day`` by UTC day.
    Raises ``ValidationFailed`` for an unknown grouping, a naive, reversed or empty range, or one
    longer than ``settings.BILLING_MAX_REPORT_DAYS``.
    """
    groups = group_by_clean(group_by)
    start, end = check_range(start, end, max_days=settings.BILLING_MAX_REPORT_DAYS)
    by_tier = "tier" in groups
    by_day = "day" in groups
    # Base quantities per row, calendar month and dimension: storage converts with its own
    # month's hours, and costs are shared out per month and dimension (``usage_costs``).
    acc: dict[tuple[date | None, str, str | None], dict[tuple[datetime, str], int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for row in usage_daily(org=org, start=start, end=end):
        meter_key = str(row["meter"])
        if meter_key not in METERS:
            continue
        row_day = _day(row["day"])
        tier = (tier_of(str(row["dimension_key"])) or None) if by_tier else None
        key = (row_day if by_day else None, meter_key, tier)
        acc[key][(month_start(row_day), str(row["dimension_key"]))] += _int(row["total"])
    costs = usage_costs(org=org, months={month for parts in acc.values() for month, _ in parts})
    rows: list[UsageRow] = []
    for (day, meter_key, tier), parts in acc.items():
        base = sum(parts.values())
        if not base:
            continue
        meter = METERS[meter_key]
        quantity = sum(
            (
                billing_quantity(meter, qty, hours_in_month=hours_in_month(month))
                for (month, _), qty in parts.items()
            ),
            Decimal(0),
        )
        shares = [costs.share(month, meter_key, dim, qty) for (month, dim), qty in parts.items()]
        priced = [share for share in shares if share is not None]
        rows.append(
            UsageRow(
                meter=meter_key,
                label=meter.label,
                tier=tier,
                day=day,
                base_quantity=base,
                base_unit=meter.base_unit,
                quantity=quantity_shown(quantity),
                unit=meter.billing_unit,
                byte_hours=(
                    quantity_shown(_WIDE.divide(Decimal(base), Decimal(3600)))
                    if meter_key == STORAGE
                    else None
                ),
                cost=round_money(sum(priced, Decimal(0))) if priced else None,
            )
        )
    meter_order = {k: i for i, k in enumerate(METERS)}
    tier_order = {t: i for i, t in enumerate(TIERS)}
    rows.sort(
        key=lambda r: (
            r.day or date.min,
            meter_order[r.meter],
            -1 if r.tier is None else tier_order.get(r.tier, len(TIERS)),
        )
    )
    return UsageReport(
        organization=org,
        start=start,
        end=end,
        group_by=groups,
        rows=rows,
        generated_at=timezone.now(),
        currency=costs.currency,
    )


@dataclass(frozen=True)
class MonthCosts:
    """Each month's usage lines, as the invoice of that month prices them: per (month, meter,
    dimension) the unrounded amount and the base quantity it was priced from."""

    lines: dict[tuple[datetime, str, str], tuple[Decimal, int]]
    currency: str

    def share(self, month: datetime, meter: str, dimension_key: str, base: int) -> Decimal | None:
        """What ``base`` units of the month's usage cost: the line's amount in proportion to
        them (an allowance or a tier discount shared evenly); None when nothing priced them."""
        found = self.lines.get((month, meter, dimension_key))
        if found is None or not found[1]:
            return None
        amount, total = found
        return amount * base / total


def usage_costs(*, org: Organization, months: Iterable[datetime]) -> MonthCosts:
    """The usage lines of each of ``months`` (month-to-date for the current one), computed by the
    invoice (``billing.invoicing.usage_lines``), so that a report's costs are the invoices'.
    Minimum commitments and late-usage adjustments belong to no meter and are left out."""
    lines: dict[tuple[datetime, str, str], tuple[Decimal, int]] = {}
    currency = ""
    for month in sorted(set(months)):
        start, end = month_bounds(month)
        month_lines, month_currency = usage_lines(org=org, period_start=start, period_end=end)
        currency = currency or month_currency
        for line in month_lines:
            if line.kind != "usage":
                continue
            key = (month, line.meter, line.dimension_key)
            amount, base = lines.get(key, (Decimal(0), 0))
            # A month split by a plan change has a line per plan: their sum is the month's.
            lines[key] = (amount + line.unrounded_amount, base + line.base_quantity)
    return MonthCosts(lines=lines, currency=currency or "USD")


# --- invoice documents -----------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentLine:
    position: int
    kind: str  # usage | minimum | adjustment
    description: str
    meter: str
    tier: str
    quantity: Decimal
    unit: str
    amount: Decimal
    # How the amount was priced (``billing.pricing.price``'s breakdown, as the line stores it).
    breakdown: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class DocumentCredit:
    number: str
    created_at: datetime
    reason: str
    amount: Decimal


@dataclass(frozen=True)
class InvoiceDocument:
    """A finalized or void invoice, or a live draft, in the one shape CSV and PDF are made from."""

    organization: Organization
    number: str | None  # None: a live draft
    status: str  # draft | finalized | void
    period_start: datetime
    period_end: datetime
    currency: str
    issued_at: datetime  # finalization time, or when the draft was computed
    lines: list[DocumentLine]
    subtotal: Decimal
    minimum_adjustment: Decimal
    adjustments: Decimal
    total: Decimal
    credit_notes: list[DocumentCredit] = field(default_factory=list)
    voided_at: datetime | None = None
    void_reason: str = ""

    @property
    def is_draft(self) -> bool:
        return self.number is None

    @property
    def credited(self) -> Decimal:
        return sum((c.amount for c in self.credit_notes), Decimal("0.00"))


def _sum(lines: Iterable[DocumentLine], kind: str) -> Decimal:
    return sum((ln.amount for ln in lines if ln.kind == kind), Decimal("0.00"))


def invoice_document(
    source: Invoice | InvoiceDraft, *, as_of: datetime | None = None
) -> InvoiceDocument:
    """Normalize a stored invoice (with its lines and credit notes) or a draft.

    A stored invoice's totals are the ones of record; they equal the sums of its lines because
    ``invoice_finalize`` stores both from the same draft and neither can change afterwards.
    """
    if isinstance(source, InvoiceDraft):
        lines = [
            DocumentLine(
                position=i,
                kind=ln.kind,
                description=ln.description,
                meter=ln.meter,
                tier=ln.tier,
                quantity=quantity_shown(ln.quantity),
                unit=ln.unit,
                amount=ln.amount,
                breakdown=list(ln.breakdown),
            )
            for i, ln in enumerate(source.lines, start=1)
        ]
        return InvoiceDocument(
            organization=source.organization,
            number=None,
            status="draft",
            period_start=source.period_start,
            period_end=source.period_end,
            currency=source.currency,
            issued_at=as_of or timezone.now(),
            lines=lines,
            subtotal=source.subtotal,
            minimum_adjustment=source.minimum_adjustment,
            adjustments=_sum(lines, "adjustment"),
            total=source.total,
        )
    lines = [
        DocumentLine(
            position=ln.position,
            kind=ln.kind,
            description=ln.description,
            meter=ln.meter,
            tier=tier_of(ln.dimension_key),
            quantity=quantity_shown(ln.quantity),
            unit=ln.unit,
            amount=ln.amount,
            breakdown=list(ln.breakdown or []),
        )
        for ln in sorted(source.lines.all(), key=lambda ln: ln.position)
    ]
    credits = [
        DocumentCredit(number=c.number, created_at=c.created_at, reason=c.reason, amount=c.amount)
        for c in sorted(source.credit_notes.all(), key=lambda c: (c.created_at, c.pk))
    ]
    return InvoiceDocument(
        organization=source.organization,
        number=source.number,
        status=source.status,
        period_start=source.period_start,
        period_end=source.period_end,
        currency=source.currency,
        issued_at=source.finalized_at,
        lines=lines,
        subtotal=source.subtotal,
        minimum_adjustment=source.minimum_adjustment,
        adjustments=_sum(lines, "adjustment"),
        total=source.total,
        credit_notes=credits,
        voided_at=source.voided_at,
        void_reason=source.void_reason,
    )


# --- how a line reads: quantity, unit, unit price -----------------------------------------------


@dataclass(frozen=True)
class LineFigures:
    """An invoice line's columns as the portal, the PDF and the CSV show them.

    ``quantity`` is rounded for reading (``billing.meters.shown_quantity``); ``exact`` is the same
    figure unrounded (to the 9 places lines store), in the same ``unit``. ``unit_price`` is one
    rate (``0.023 / GiB-month``) or, for an allowance, tiers, packages or a minimum, one entry
    per slice of the breakdown the amount was priced from.
    """

    quantity: str
    exact: str
    unit: str
    unit_price: list[str]


def _exact_text(value: Decimal) -> str:
    text = format(quantity_shown(value).normalize(_WIDE), "f")
    return text if text not in ("-0", "") else "0"


def _decimal(raw: object) -> Decimal | None:
    try:
        return Decimal(str(raw))
    except ArithmeticError:
        return None


def _slice_text(entry: dict[str, str], unit: str) -> str:
    """One breakdown entry: ``1,024.000 GiB-month at 0.023 / GiB-month``."""
    label = str(entry.get("label", ""))
    quantity = _decimal(entry.get("quantity", ""))
    rate = _decimal(entry.get("unit_price", ""))
    flat = _decimal(entry.get("flat_fee", "0")) or Decimal(0)
    shown = shown_quantity(unit, quantity) if quantity is not None and unit else None
    amount_text = f"{quantity_number(shown)} {shown.unit}" if shown is not None else ""
    if label == "included":
        return f"{amount_text} included"
    if label == "minimum":
        return (
            f"minimum {money_label(_decimal(entry.get('amount')))}, usage "
            f"{money_label(_decimal(entry.get('usage')))}"
        )
    if label in ("recomputed", "billed"):
        return f"{label} {money_label(_decimal(entry.get('amount')))}"
    if rate is None or shown is None:
        return label
    text = f"{amount_text} at {rate_label(rate)} / {shown.per}"
    if label.startswith("volume tier"):
        bound = label.removeprefix("volume tier up to ").strip()
        scope = (
            f"volume tier up to {quantity_number(shown_quantity(unit, Decimal(bound)))}"
            if bound
            else "top volume tier"
        )
        text += f" ({scope})"
    elif "package" in label:
        text = f"{label} ({amount_text}) at {rate_label(rate)} each"
    elif label != "per unit":
        lower, _, upper = label.partition("-")
        low = Decimal(lower or "0")
        low_text = quantity_number(shown_quantity(unit, low))
        high_text = quantity_number(shown_quantity(unit, Decimal(upper))) if upper else ""
        scope = (
            f"over {low_text}"
            if not upper
            else f"up to {high_text}"
            if not low
            else f"{low_text}–{high_text}"
        )
        text = f"{scope}: {text}"
    if flat:
        text += f" + {rate_label(flat)} flat"
    return text


def quantity_number(shown: ShownQuantity) -> str:
    """The rounded figure of a shown quantity: ``1,024.000``, ``25,000``."""
    return labels.quantity_label(shown.value, shown.places)


def line_figures(line: DocumentLine) -> LineFigures:
    """The quantity, unit and unit price columns of ``line`` (see ``LineFigures``)."""
    return figures_of(quantity=line.quantity, unit=line.unit, breakdown=line.breakdown)


def figures_of(*, quantity: Decimal, unit: str, breakdown: Iterable[object]) -> LineFigures:
    """``line_figures`` of any line: a document's, a stored one's or a draft's."""
    entries = [e for e in breakdown if isinstance(e, dict)]
    if not unit:
        return LineFigures("", "", "", [_slice_text(e, "") for e in entries])
    shown = shown_quantity(unit, quantity)
    if len(entries) == 1 and entries[0].get("label") == "per unit":
        rate = _decimal(entries[0].get("unit_price", ""))
        prices = [f"{rate_label(rate)} / {shown.per}"] if rate is not None else []
    elif len(entries) == 1 and str(entries[0].get("label", "")).startswith("not charged"):
        prices = ["not charged on this plan"]
    else:
        prices = [_slice_text(e, unit) for e in entries]
    return LineFigures(
        quantity=quantity_number(shown),
        exact=_exact_text(shown.value),
        unit=shown.unit,
        unit_price=prices,
    )


def invoice_columns(currency: str) -> list[str]:
    """The columns of an invoice's lines, the same in the PDF, the CSV and the portal."""
    return [
        "#",
        "Description",
        "Quantity",
        "Unit",
        f"Unit price ({currency})",
        f"Amount ({currency})",
    ]


# --- the current month ----------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """A budget against the figures its alerts compare (``budget_check``): spend so far and the
    month-end forecast, both usage plus minimum commitment."""

    monthly_amount: Decimal
    thresholds: list[int]
    updated_at: datetime
    spent: Decimal
    percent_used: Decimal
    forecast: Decimal
    forecast_percent: Decimal


@dataclass(frozen=True)
class DraftOverview:
    draft: InvoiceDraft
    as_of: datetime
    forecast: Forecast
    budget: BudgetStatus | None


def _percent(part: Decimal, whole: Decimal) -> Decimal:
    # A display figure, not money: one decimal place.
    return (part * 100 / whole).quantize(Decimal("0.1")) if whole else Decimal("0.0")


def draft_overview(*, org: Organization, now: datetime) -> DraftOverview:
    """The live invoice of the month containing ``now``, its forecast and the budget if set."""
    draft = invoice_compute(org=org, period_start=month_start(now))
    forecast = forecast_month(org=org, now=now)
    budget = Budget.objects.for_org(org).first()
    status = None
    if budget is not None:
        status = BudgetStatus(
            monthly_amount=budget.monthly_amount,
            thresholds=[int(t) for t in budget.thresholds],
            updated_at=budget.updated_at,
            spent=forecast.actual_total,
            percent_used=_percent(forecast.actual_total, budget.monthly_amount),
            forecast=forecast.projected_total,
            forecast_percent=_percent(forecast.projected_total, budget.monthly_amount),
        )
    return DraftOverview(draft=draft, as_of=now, forecast=forecast, budget=status)


def draft_document(*, org: Organization, now: datetime) -> InvoiceDocument:
    """The live draft of the month containing ``now`` as a document."""
    return invoice_document(invoice_compute(org=org, period_start=month_start(now)), as_of=now)


# --- CSV -------------------------------------------------------------------------------------

# Organization names and reasons are typed by people, so text cells go through ``csv_text``;
# numbers are left alone (a credit of -1.00 stays a number).


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def usage_report_csv(report: UsageReport) -> Iterator[str]:
    """CSV lines: a few ``key,value`` header lines, a blank line, then one row per report row."""
    return csv_lines(_usage_report_rows(report))


def _usage_report_rows(report: UsageReport) -> Iterator[list[Any]]:
    org = report.organization
    yield ["Organization", csv_text(org.name), org.slug]
    yield ["Start (UTC, inclusive)", _iso(report.start)]
    yield ["End (UTC, exclusive)", _iso(report.end)]
    yield ["Grouped by", ", ".join(report.group_by)]
    yield ["Generated at", _iso(report.generated_at)]
    yield ["Currency", report.currency]
    yield ["Cost", COST_NOTE]
    yield []
    by_tier = "tier" in report.group_by
    by_day = "day" in report.group_by
    columns = [
        *(["day"] if by_day else []),
        "meter",
        "description",
        *(["tier"] if by_tier else []),
        "base_quantity",
        "base_unit",
        "byte_hours",
        "quantity",
        "unit",
        "cost",
    ]
    yield columns
    for row in report.rows:
        yield [
            *([row.day.isoformat() if row.day else ""] if by_day else []),
            row.meter,
            row.label,
            *([row.tier or ""] if by_tier else []),
            row.base_quantity,
            row.base_unit,
            "" if row.byte_hours is None else row.byte_hours,
            row.quantity,
            row.unit,
            "" if row.cost is None else row.cost,
        ]
    yield []
    yield ["Total cost", *[""] * (len(columns) - 2), report.total_cost]


def invoice_csv(doc: InvoiceDocument) -> Iterator[str]:
    """CSV lines: header lines, one row per line in the PDF's columns (``invoice_columns``; the
    quantity exact rather than rounded, the unit price's slices joined by ``; ``), then subtotal,
    minimum, adjustments and total in the amount column (each the sum of its lines), then credit
    notes if any."""
    return csv_lines(_invoice_rows(doc))


def _invoice_rows(doc: InvoiceDocument) -> Iterator[list[Any]]:
    org = doc.organization
    columns = invoice_columns(doc.currency)
    blank = [""] * (len(columns) - 2)
    yield ["Issuer", ISSUER]
    yield ["Organization", csv_text(org.name), org.slug]
    yield ["Invoice", doc.number or "DRAFT"]
    yield ["Status", doc.status]
    yield ["Period start (UTC, inclusive)", _iso(doc.period_start)]
    yield ["Period end (UTC, exclusive)", _iso(doc.period_end)]
    yield ["Issued" if not doc.is_draft else "As of", _iso(doc.issued_at)]
    yield ["Currency", doc.currency]
    if doc.status == "void":
        yield ["Voided at", _iso(doc.voided_at)]
        yield ["Void reason", csv_text(doc.void_reason)]
    yield []
    yield columns
    for ln in doc.lines:
        figures = line_figures(ln)
        yield [
            ln.position,
            csv_text(ln.description),
            figures.exact,
            figures.unit,
            csv_text("; ".join(figures.unit_price)),
            ln.amount,
        ]
    yield []
    yield ["Subtotal", *blank, doc.subtotal]
    yield ["Minimum commitment", *blank, doc.minimum_adjustment]
    yield ["Adjustments", *blank, doc.adjustments]
    yield ["Total", *blank, doc.total]
    if doc.credit_notes:
        yield []
        yield ["Credit note", "Reason", "Created at (UTC)", "", "", f"Amount ({doc.currency})"]
        for note in doc.credit_notes:
            yield [note.number, csv_text(note.reason), _iso(note.created_at), "", "", note.amount]
        yield ["Total after credit notes", *blank, doc.total - doc.credited]


# --- PDF -------------------------------------------------------------------------------------


def day_label(value: date) -> str:
    """``1 Apr 2026``: no leading zero, unambiguous in every locale."""
    return f"{value.day} {value:%b %Y}"


def period_label(start: datetime, end: datetime) -> str:
    """A half-open range as people read it: whole days inclusive, otherwise times (end excluded)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    midnight = datetime.min.time()
    if start.time() == midnight and end.time() == midnight:
        last = (end - timedelta(days=1)).date()
        return f"{day_label(start.date())} – {day_label(last)}"
    return f"{day_label(start.date())} {start:%H:%M} – {day_label(end.date())} {end:%H:%M} UTC (end excluded)"


def quantity_label(value: Decimal) -> str:
    """9 places at most, trailing zeros dropped, thousands separated: ``10``, ``0.333333333``."""
    text = format(quantity_shown(value).normalize(_WIDE), ",f")
    return text if text not in ("-0", "") else "0"


def amount_of_unit(value: Decimal, unit: str) -> str:
    """``10 GiB-month``; a unit that is itself a count reads as a multiple: ``5 × 1,000 requests``."""
    if not unit:
        return ""
    joiner = " × " if unit[:1].isdigit() else " "
    return f"{quantity_label(value)}{joiner}{unit}"


def invoice_pdf(doc: InvoiceDocument) -> bytes:
    """A filing-grade invoice (or clearly marked draft) as PDF bytes; documents are small."""
    # reportlab (some 15 MB) loads with the first PDF a process makes (billing.reports_pdf), not
    # in every web worker.
    from billing import reports_pdf

    return reports_pdf.invoice_pdf(doc)


def usage_report_pdf(report: UsageReport) -> bytes:
    """The usage report as a table (by meter, and tier/day as grouped) in PDF bytes."""
    from billing import reports_pdf

    return reports_pdf.usage_report_pdf(report)
