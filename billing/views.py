"""Portal pages of "Usage & billing": the month so far against forecast and budget, invoices (the
live draft and finalized or void ones) with CSV/PDF downloads and rollup traces, the budget, and
usage reports.

Thin views: forms check shape, ``billing.services`` writes (audited), ``billing.selectors``,
``billing.forecast`` and ``billing.reports`` read. Every invoice is looked up through the
organization in the URL, so another tenant's invoice id answers 404.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from billing import plans, reports, selectors, services
from billing.forecast import Forecast, forecast_month
from billing.forms import BudgetForm, UsageReportForm
from billing.invoicing import DraftLine, invoice_compute
from billing.meters import METERS, STORAGE, TIERS, Meter, billing_quantity
from billing.models import Budget, BudgetAlert, Invoice, Rollup
from billing.periods import hours_in_month, month_start
from tenants import charts
from tenants.errors import NotFound, ServiceError
from tenants.forms import form_apply_service_error
from tenants.labels import byte_scale, bytes_label, money_label
from tenants.models import Organization
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

USAGE_DAYS = 30
STORAGE_DAYS = 90
INVOICES_PAGE_SIZE = 24
REPORT_PREVIEW_ROWS = 500


def _context(ctx: PortalContext, tab: str, **extra: Any) -> dict[str, Any]:
    return {"ctx": ctx, "active_section": "billing", "billing_tab": tab, **extra}


def _now() -> datetime:
    return timezone.now().astimezone(UTC)


def _as_day(value: object) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _days(end: datetime, count: int) -> list[date]:
    last = end.date()
    return [last - timedelta(days=count - 1 - i) for i in range(count)]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def display_unit(meter: Meter) -> str:
    """The billing unit as a chart axis says it: ``1,000 instances`` -> ``thousand instances``."""
    unit = meter.billing_unit
    return "thousand " + unit.removeprefix("1,000 ") if unit.startswith("1,000 ") else unit


def _tier_series(values: dict[str, list[float]]) -> list[charts.Series]:
    """Series in tier order (hot at the bottom); tiers with nothing in them are left out."""
    return [
        charts.Series(tier, tier.capitalize(), values[tier], charts.TIER_COLORS[tier])
        for tier in TIERS
        if any(values.get(tier, []))
    ]


# --- overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsagePanel:
    meter: Meter
    unit: str
    total_value: str
    chart: charts.Chart


def usage_panels(*, org: Organization, now: datetime) -> list[UsagePanel]:
    """Daily usage per meter over the last ``USAGE_DAYS`` days, one small chart per meter, in
    billing units (storage: GiB-months accrued per day; tiered meters stacked by tier)."""
    days = _days(now, USAGE_DAYS)
    values: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0] * USAGE_DAYS)
    )
    for row in selectors.usage_daily(org=org, start=_day_start(days[0]), end=now):
        meter = METERS.get(str(row["meter"]))
        if meter is None:
            continue
        day = _as_day(row["day"])
        index = (day - days[0]).days
        if not 0 <= index < USAGE_DAYS:
            continue
        total = row["total"]
        base = int(total) if isinstance(total, int | Decimal) else 0
        quantity = billing_quantity(meter, base, hours_in_month=hours_in_month(day))
        tier = reports.tier_of(str(row["dimension_key"])) if meter.by_tier else ""
        values[meter.key][tier][index] += float(quantity)
    panels: list[UsagePanel] = []
    for key, meter in METERS.items():
        if key not in values:
            continue
        unit = display_unit(meter)
        if meter.by_tier:
            series = _tier_series(values[key])
        else:
            series = [charts.Series(key, meter.label, values[key][""], charts.ACCENT)]
        if not series:
            continue
        total = sum(sum(s.values) for s in series)

        def fmt(value: float, unit: str = unit) -> str:
            return f"{charts.number_label(value)} {unit}"

        chart = charts.bar_chart(
            label=(
                f"{meter.label} per day, last {USAGE_DAYS} days, in {unit}"
                f"{' by tier' if len(series) > 1 else ''}; total {fmt(total)}."
            ),
            days=days,
            series=series,
            fmt=fmt,
            fmt_tick=charts.number_label,
            legend=meter.by_tier,
        )
        panels.append(
            UsagePanel(meter=meter, unit=unit, total_value=charts.number_label(total), chart=chart)
        )
    return panels


def storage_chart(*, org: Organization, now: datetime) -> charts.Chart | None:
    """Bytes stored per tier at the end of each day over the last ``STORAGE_DAYS`` days; the last
    day (today) is what is stored now (``selectors.stored_bytes_now``, as "Stored now" shows it).
    Points are labelled as every stored size is (``bytes_label``), whatever the axis unit."""
    days = _days(now, STORAGE_DAYS)
    values: dict[str, list[float]] = defaultdict(lambda: [0.0] * STORAGE_DAYS)
    last = -1  # the last day with a rolled-up hour
    for row in selectors.storage_balance_daily(org=org, start=_day_start(days[0]), end=now):
        index = (_as_day(row["day"]) - days[0]).days
        tier = str(row["tier"])
        if 0 <= index < STORAGE_DAYS and tier in TIERS:
            values[tier][index] = float(str(row["bytes"]))
            last = max(last, index)
    # Rollups hold a row for every complete hour while anything is stored, so a day without one
    # stored nothing, except the days after the last rolled hour (today before its first hour
    # is complete, or while the rollup is behind): they hold the last balance known.
    if last >= 0:
        for tier_values in values.values():
            tier_values[last + 1 :] = [tier_values[last]] * (STORAGE_DAYS - 1 - last)
    # Today ends later: its point is the ledger's balance now, not its last complete hour's.
    current = selectors.stored_bytes_now(org=org, now=now)
    for tier in {*values, *current} & set(TIERS):
        values[tier][-1] = float(current.get(tier, 0))
    series = _tier_series(values)
    if not series:
        return None
    peak = max(sum(s.values[i] for s in series) for i in range(STORAGE_DAYS))
    divisor, unit = byte_scale(peak)
    scaled = [
        charts.Series(s.key, s.label, [v / divisor for v in s.values], s.color) for s in series
    ]
    latest = ", ".join(f"{s.label.lower()} {bytes_label(s.values[-1])}" for s in series)
    return charts.stacked_area_chart(
        label=(
            f"Bytes stored per tier at the end of each day, last {STORAGE_DAYS} days, in {unit}. "
            f"Latest day: {latest}."
        ),
        days=days,
        series=scaled,
        # The divisor is a power of two: scaling back is exact.
        fmt=lambda v: bytes_label(round(v * divisor)),
        fmt_tick=lambda v: f"{charts.number_label(v)} {unit}",
    )


def meter_rows(forecast: Forecast) -> list[dict[str, Any]]:
    """``forecast.per_meter()`` with labels and the month-to-date billing quantity."""
    quantities: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in forecast.actual:
        if line.kind == "usage":
            quantities[(line.meter, line.tier)] += line.quantity
    rows: list[dict[str, Any]] = []
    for row in forecast.per_meter():
        key = str(row["meter"])
        tier = str(row["tier"])
        meter = METERS.get(key)
        quantity = quantities.get((key, tier))
        rows.append(
            {
                "meter": key,
                "label": meter.label if meter else "Minimum commitment",
                "tier": tier,
                "quantity": None if quantity is None else charts.number_label(float(quantity)),
                "unit": meter.billing_unit if meter else "",
                "actual": row["actual"],
                "forecast": row["forecast"],
            }
        )
    meter_order = {key: i for i, key in enumerate(METERS)}
    tier_order = {tier: i for i, tier in enumerate(TIERS)}
    rows.sort(
        key=lambda r: (meter_order.get(r["meter"], len(METERS)), tier_order.get(r["tier"], -1))
    )
    return rows


def budget_gauge(
    forecast: Forecast, budget: Budget | None, *, width: int = 760
) -> tuple[charts.Chart, dict[str, Any] | None]:
    currency = forecast.currency
    figures = None
    if budget is not None:
        amount = budget.monthly_amount
        figures = {
            "amount": amount,
            "thresholds": [int(t) for t in budget.thresholds],
            "percent_used": (forecast.actual_total * 100 / amount).quantize(Decimal("0.1")),
            "forecast_percent": (forecast.projected_total * 100 / amount).quantize(Decimal("0.1")),
            "over": forecast.actual_total > amount,
            "forecast_over": forecast.projected_total > amount,
        }
    chart = charts.budget_gauge(
        actual=float(forecast.actual_total),
        forecast=float(forecast.projected_total),
        budget=float(budget.monthly_amount) if budget is not None else None,
        thresholds=[int(t) for t in budget.thresholds] if budget is not None else [],
        fmt=lambda v: f"{v:,.2f} {currency}",
        width=width,
    )
    return chart, figures


def _alerts_this_month(org: Organization, now: datetime) -> list[BudgetAlert]:
    month = month_start(now).date()
    return list(selectors.budget_alert_list(org=org).filter(month=month).order_by("-fired_at"))


@org_view(Perm.INVOICES_VIEW)
@require_GET
def overview(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    now = _now()
    forecast = forecast_month(org=ctx.org, now=now)
    budget = selectors.budget_get(org=ctx.org)
    gauge, budget_figures = budget_gauge(forecast, budget)
    balances = selectors.stored_bytes_now(org=ctx.org, now=now)
    rows = meter_rows(forecast)
    context = _context(
        ctx,
        "overview",
        now=now,
        forecast=forecast,
        period=reports.period_label(forecast.period_start, forecast.period_end),
        currency=forecast.currency,
        budget=budget,
        budget_figures=budget_figures,
        gauge=gauge,
        meter_rows=rows,
        usage_panels=usage_panels(org=ctx.org, now=now),
        usage_days=USAGE_DAYS,
        storage_chart=storage_chart(org=ctx.org, now=now),
        storage_days=STORAGE_DAYS,
        stored_total=bytes_label(sum(balances.values())),
        stored_tiers=[
            {"tier": t, "bytes": bytes_label(balances[t]), "color": charts.TIER_COLORS[t]}
            for t in TIERS
            if balances.get(t)
        ],
        alerts=_alerts_this_month(ctx.org, now),
        can_manage=ctx.can(Perm.BILLING_MANAGE),
    )
    return render(request, "billing/overview.html", context)


# --- invoices ------------------------------------------------------------------------------------


def _invoice_get(*, org: Organization, invoice_id: int) -> Invoice:
    """An invoice of ``org`` with its lines and credit notes; another tenant's id is a 404."""
    try:
        return selectors.invoice_get(org=org, invoice_id=invoice_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


@org_view(Perm.INVOICES_VIEW)
@require_GET
def invoices(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    now = _now()
    draft = invoice_compute(org=ctx.org, period_start=month_start(now))
    queryset = (
        selectors.invoice_list(org=ctx.org)
        .annotate(credited=Sum("credit_notes__amount"))
        .order_by("-period_start", "-id")
    )
    page = Paginator(queryset, INVOICES_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {"invoice": inv, "period": reports.period_label(inv.period_start, inv.period_end)}
        for inv in page.object_list
    ]
    context = _context(
        ctx,
        "invoices",
        now=now,
        draft=draft,
        draft_period=reports.period_label(draft.period_start, draft.period_end),
        page=page,
        rows=rows,
        # The badge counts what the table lists: the draft (always shown, on the first page)
        # and every issued invoice, finalized or void.
        shown_count=page.paginator.count + 1,
    )
    return render(request, "billing/invoices.html", context)


def _line_rows(doc: reports.InvoiceDocument, trace_url: Any) -> list[dict[str, Any]]:
    return [
        {
            "line": line,
            "figures": reports.line_figures(line),
            "trace_url": trace_url(line.position) if line.kind == "usage" else None,
        }
        for line in doc.lines
    ]


def _document_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    doc: reports.InvoiceDocument,
    invoice: Invoice | None,
    line_rows: list[dict[str, Any]],
    csv_url: str,
    pdf_url: str,
) -> HttpResponse:
    context = _context(
        ctx,
        "invoices",
        doc=doc,
        invoice=invoice,
        lines=line_rows,
        columns=reports.invoice_columns(doc.currency),
        csv_url=csv_url,
        pdf_url=pdf_url,
        balance=doc.total - doc.credited,
        period=reports.period_label(doc.period_start, doc.period_end),
        notes=[reports.ROUNDING_NOTE, reports.QUANTITY_NOTE, reports.STORAGE_NOTE],
    )
    return render(request, "billing/invoice_detail.html", context)


@org_view(Perm.INVOICES_VIEW)
@require_GET
def invoice_detail(request: HttpRequest, ctx: PortalContext, invoice_id: int) -> HttpResponse:
    invoice = _invoice_get(org=ctx.org, invoice_id=invoice_id)
    doc = reports.invoice_document(invoice)
    slug = ctx.org.slug
    rows = _line_rows(
        doc,
        lambda position: reverse("portal-billing-invoice-line", args=[slug, invoice.pk, position]),
    )
    return _document_page(
        request,
        ctx,
        doc=doc,
        invoice=invoice,
        line_rows=rows,
        csv_url=reverse("portal-billing-invoice-csv", args=[slug, invoice.pk]),
        pdf_url=reverse("portal-billing-invoice-pdf", args=[slug, invoice.pk]),
    )


@org_view(Perm.INVOICES_VIEW)
@require_GET
def draft_detail(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    doc = reports.draft_document(org=ctx.org, now=_now())
    slug = ctx.org.slug
    rows = _line_rows(
        doc, lambda position: reverse("portal-billing-draft-line", args=[slug, position])
    )
    return _document_page(
        request,
        ctx,
        doc=doc,
        invoice=None,
        line_rows=rows,
        csv_url=reverse("portal-billing-draft-csv", args=[slug]),
        pdf_url=reverse("portal-billing-draft-pdf", args=[slug]),
    )


def _attachment(content: bytes | str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    # Billing documents stay out of shared caches.
    response["Cache-Control"] = "private, no-store"
    return response


def _csv(lines: Iterable[str], filename: str) -> HttpResponse:
    # Invoices have a few dozen lines at most: built whole, unlike the audit log's stream.
    return _attachment("".join(lines), content_type="text/csv; charset=utf-8", filename=filename)


def _pdf(content: bytes, filename: str) -> HttpResponse:
    return _attachment(content, content_type="application/pdf", filename=filename)


def _draft_filename(doc: reports.InvoiceDocument, ext: str) -> str:
    return f"draft-{doc.organization.slug}-{doc.period_start:%Y-%m}.{ext}"


@org_view(Perm.INVOICES_VIEW)
@require_GET
def invoice_csv(request: HttpRequest, ctx: PortalContext, invoice_id: int) -> HttpResponse:
    invoice = _invoice_get(org=ctx.org, invoice_id=invoice_id)
    return _csv(reports.invoice_csv(reports.invoice_document(invoice)), f"{invoice.number}.csv")


@org_view(Perm.INVOICES_VIEW)
@require_GET
def invoice_pdf(request: HttpRequest, ctx: PortalContext, invoice_id: int) -> HttpResponse:
    invoice = _invoice_get(org=ctx.org, invoice_id=invoice_id)
    return _pdf(reports.invoice_pdf(reports.invoice_document(invoice)), f"{invoice.number}.pdf")


@org_view(Perm.INVOICES_VIEW)
@require_GET
def draft_csv(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    doc = reports.draft_document(org=ctx.org, now=_now())
    return _csv(reports.invoice_csv(doc), _draft_filename(doc, "csv"))


@org_view(Perm.INVOICES_VIEW)
@require_GET
def draft_pdf(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    doc = reports.draft_document(org=ctx.org, now=_now())
    return _pdf(reports.invoice_pdf(doc), _draft_filename(doc, "pdf"))


# --- rollup trace of a line ------------------------------------------------------------------


@dataclass(frozen=True)
class TracedLine:
    """What the trace page needs of a stored invoice line or a draft line."""

    position: int
    kind: str
    description: str
    meter: str
    dimension_key: str
    usage_start: datetime | None
    usage_end: datetime | None
    base_quantity: int
    quantity: Decimal
    unit: str
    amount: Decimal


def _selected_day(value: str | None) -> date | None:
    """The day whose hours the trace page lists (``?day=2026-04-01``); anything else: none."""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _trace_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    line: TracedLine,
    doc_label: str,
    back_url: str,
    currency: str,
) -> HttpResponse:
    meter = METERS.get(line.meter)
    traced = (
        line.kind == "usage"
        and meter is not None
        and line.usage_start is not None
        and line.usage_end is not None
    )
    context = _context(
        ctx,
        "invoices",
        line=line,
        meter=meter,
        doc_label=doc_label,
        back_url=back_url,
        currency=currency,
        traced=traced,
        is_storage=line.meter == STORAGE,
        quantity=reports.quantity_label(line.quantity),
    )
    if traced:
        assert line.usage_start is not None and line.usage_end is not None
        rollups = selectors.rollups_for_line(
            org=ctx.org,
            meter=line.meter,
            dimension_key=line.dimension_key,
            start=line.usage_start,
            end=line.usage_end,
        )
        rows: list[Rollup] = list(rollups)
        total = sum(r.quantity for r in rows)
        selected = _selected_day(request.GET.get("day"))
        by_day: dict[date, dict[str, Any]] = {}
        for r in rows:
            day = by_day.setdefault(
                r.hour.astimezone(UTC).date(), {"hours": 0, "quantity": 0, "events": 0}
            )
            day["hours"] += 1
            day["quantity"] += r.quantity
            day["events"] += r.events
            if r.balance_bytes is not None:
                day["balance"] = r.balance_bytes
        context.update(
            rollup_count=len(rows),
            rollup_total=total,
            matches=total == line.base_quantity,
            difference=total - line.base_quantity,
            days=[
                {
                    "day": d,
                    **v,
                    "balance_label": bytes_label(v["balance"]) if "balance" in v else "",
                }
                for d, v in sorted(by_day.items())
            ],
            selected_day=selected,
            hour_rows=[
                {
                    "hour": r.hour,
                    "quantity": r.quantity,
                    "events": r.events,
                    "balance": "" if r.balance_bytes is None else bytes_label(r.balance_bytes),
                }
                for r in rows
                if r.hour.astimezone(UTC).date() == selected
            ],
            byte_hours=(
                reports.quantity_label(Decimal(total) / 3600) if line.meter == STORAGE else None
            ),
        )
    return render(request, "billing/line_trace.html", context)


@org_view(Perm.INVOICES_VIEW)
@require_GET
def invoice_line(
    request: HttpRequest, ctx: PortalContext, invoice_id: int, position: int
) -> HttpResponse:
    invoice = _invoice_get(org=ctx.org, invoice_id=invoice_id)
    stored = next((ln for ln in invoice.lines.all() if ln.position == position), None)
    if stored is None:
        raise Http404("Invoice line not found.")
    line = TracedLine(
        position=stored.position,
        kind=stored.kind,
        description=stored.description,
        meter=stored.meter,
        dimension_key=stored.dimension_key,
        usage_start=stored.usage_start,
        usage_end=stored.usage_end,
        base_quantity=int(stored.base_quantity),
        quantity=stored.quantity,
        unit=stored.unit,
        amount=stored.amount,
    )
    return _trace_page(
        request,
        ctx,
        line=line,
        doc_label=f"Invoice {invoice.number}",
        back_url=reverse("portal-billing-invoice", args=[ctx.org.slug, invoice.pk]),
        currency=invoice.currency,
    )


def _draft_traced(draft_line: DraftLine, position: int) -> TracedLine:
    return TracedLine(
        position=position,
        kind=draft_line.kind,
        description=draft_line.description,
        meter=draft_line.meter,
        dimension_key=draft_line.dimension_key,
        usage_start=draft_line.usage_start,
        usage_end=draft_line.usage_end,
        base_quantity=draft_line.base_quantity,
        quantity=draft_line.quantity,
        unit=draft_line.unit,
        amount=draft_line.amount,
    )


@org_view(Perm.INVOICES_VIEW)
@require_GET
def draft_line(request: HttpRequest, ctx: PortalContext, position: int) -> HttpResponse:
    now = _now()
    draft = invoice_compute(org=ctx.org, period_start=month_start(now))
    # Positions count from 1, as on the draft page and its CSV and PDF.
    if not 1 <= position <= len(draft.lines):
        raise Http404("Draft line not found.")
    return _trace_page(
        request,
        ctx,
        line=_draft_traced(draft.lines[position - 1], position),
        doc_label=f"Draft for {draft.period_start:%B %Y}",
        back_url=reverse("portal-billing-draft", args=[ctx.org.slug]),
        currency=draft.currency,
    )


# --- price plan ------------------------------------------------------------------------------


@org_view(Perm.INVOICES_VIEW)
@require_GET
def price_plan(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    card = plans.rate_card(org=ctx.org, now=_now())
    return render(request, "billing/price_plan.html", _context(ctx, "plan", card=card))


# --- budget ----------------------------------------------------------------------------------


@org_view(Perm.BILLING_MANAGE)
@require_http_methods(["GET", "POST"])
def budget(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    now = _now()
    current = selectors.budget_get(org=ctx.org)
    forecast = forecast_month(org=ctx.org, now=now)
    form = BudgetForm(
        request.POST or None, initial=BudgetForm.initial_for(current), currency=forecast.currency
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                saved = services.budget_set(
                    org=ctx.org,
                    monthly_amount=form.cleaned_data["monthly_amount"],
                    thresholds=form.threshold_values(),
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                thresholds = ", ".join(f"{t}%" for t in saved.thresholds)
                messages.success(
                    request,
                    f"Budget saved: {money_label(saved.monthly_amount, forecast.currency)} a "
                    f"month, alerts at {thresholds}.",
                )
                return redirect("portal-billing-budget", ctx.org.slug)
    gauge, figures = budget_gauge(forecast, current, width=560)
    context = _context(
        ctx,
        "budget",
        now=now,
        form=form,
        budget=current,
        budget_figures=figures,
        forecast=forecast,
        currency=forecast.currency,
        gauge=gauge,
        alerts=_alerts_this_month(ctx.org, now),
    )
    return render(request, "billing/budget.html", context, status=status)


# --- usage report ----------------------------------------------------------------------------


def _usage_filename(report: reports.UsageReport, ext: str) -> str:
    last = (report.end - timedelta(seconds=1)).date()
    return f"usage-{report.organization.slug}-{report.start:%Y%m%d}-{last:%Y%m%d}.{ext}"


@org_view(Perm.INVOICES_VIEW)
@require_GET
def usage(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    now = _now()
    params = request.GET.copy()
    output = params.pop("format", ["html"])[-1]
    initial = {"start": month_start(now).date(), "end": now.date(), "group_by": ["tier"]}
    form = UsageReportForm(params or None, initial=initial)
    context = _context(ctx, "usage", form=form, report=None, now=now)
    if not form.is_bound:
        return render(request, "billing/usage.html", context)
    if output not in ("html", "csv", "pdf"):
        form.add_error(None, "Choose to show the report or download it as CSV or PDF.")
    if not form.is_valid():
        return render(request, "billing/usage.html", context, status=400)
    start, end = form.range()
    try:
        report = reports.usage_report(
            org=ctx.org, start=start, end=end, group_by=form.cleaned_data["group_by"]
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return render(request, "billing/usage.html", context, status=exc.status)
    if output == "csv":
        return _csv(reports.usage_report_csv(report), _usage_filename(report, "csv"))
    if output == "pdf":
        return _pdf(reports.usage_report_pdf(report), _usage_filename(report, "pdf"))
    context.update(
        report=report,
        rows=[
            {
                "row": row,
                "quantity": reports.quantity_label(row.quantity),
                "cost": money_label(row.cost),
            }
            for row in report.rows[:REPORT_PREVIEW_ROWS]
        ],
        truncated=len(report.rows) > REPORT_PREVIEW_ROWS,
        total_cost=money_label(report.total_cost, report.currency),
        cost_note=reports.COST_NOTE,
        last_day=(end - timedelta(days=1)).date(),
    )
    return render(request, "billing/usage.html", context)
