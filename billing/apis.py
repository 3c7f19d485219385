"""REST API of billing: usage reports, invoices (live draft, finalized, void), budgets, and the
platform staff's plan and invoice corrections.

Organization-scoped views subclass ``tenants.rest.OrgAPIView`` (organization from the bearer token or
from ``/api/v1/o/<slug>/``; ``permissions_required`` per HTTP method). Another organization's
invoice or line answers 404. Money is serialized as decimal strings, billing quantities as decimal
strings with 9 places, base quantities as integers. CSV and PDF downloads render errors as JSON.

The platform views at the end are not organization-scoped: only signed-in Strata staff may use
them, never a token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import plans, reports, selectors, services
from billing.invoicing import DraftLine
from billing.meters import METERS
from billing.models import (
    METER_CHOICES,
    TIER_CHOICES,
    CreditNote,
    Invoice,
    InvoiceLine,
    PlanPrice,
    PricePlan,
    Rollup,
    Subscription,
)
from billing.periods import month_bounds
from billing.selectors import rollups_for_line
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import ApiToken, Organization
from tenants.rest import NewestFirstPagination, OrgAPIView, error_responses_for
from tenants.roles import Perm

# --- OpenAPI plumbing ------------------------------------------------------------------------

_ERROR_TEXTS = {
    403: "The role or token scope lacks the permission (named in `error.fields.permission`), "
    "the organization is suspended or closed, or (platform API) the caller is not Strata staff.",
    409: "The change conflicts with the current state (e.g. the invoice is already void).",
}


_errors = error_responses_for(_ERROR_TEXTS)


class DownloadSchema(AutoSchema):
    def get_operation_id(self) -> str:
        # Paths end in ".csv" / ".pdf"; a dot in an operationId trips client generators.
        return str(super().get_operation_id()).replace(".", "_").replace("__", "_")


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 datetime, converted to UTC; a naive one is passed on unchanged, for the service
    or range check to refuse with its message (DRF would silently assume the server's zone)."""

    def enforce_timezone(self, value: datetime) -> datetime:
        if timezone.is_naive(value):
            return value
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable UTC
            self.fail("overflow")


def _money(**kwargs: Any) -> serializers.DecimalField:
    """An amount: a decimal string in whole cents (rounded once, on the invoice line)."""
    return serializers.DecimalField(max_digits=14, decimal_places=2, **kwargs)


def _quantity(**kwargs: Any) -> serializers.DecimalField:
    """A billing quantity: a decimal string with 9 places, as invoice lines store it."""
    return serializers.DecimalField(max_digits=40, decimal_places=9, **kwargs)


# --- reads this API needs beyond billing.selectors (always scoped to one organization) ---------


class UsageFilterSerializer(serializers.Serializer):
    start = AwareDateTimeField(
        required=False,
        help_text="Inclusive, ISO 8601 with a timezone (e.g. 2026-04-01T00:00:00Z). "
        "Default: the start of the current month (UTC).",
    )
    end = AwareDateTimeField(
        required=False,
        help_text="Exclusive, ISO 8601 with a timezone. Default: the start of next month (UTC).",
    )
    group_by = serializers.CharField(
        required=False,
        allow_blank=True,
        default="meter,tier",
        help_text="Comma-separated, any of `meter`, `tier`, `day`. Rows are always per meter "
        "(different meters' units are never added up); `tier` and `day` split them further.",
    )


class UsageRowSerializer(serializers.Serializer):
    meter = serializers.CharField()
    description = serializers.CharField(source="label")
    tier = serializers.CharField(
        allow_null=True, help_text="Null when not grouped by tier or the meter has no tiers."
    )
    day = serializers.DateField(allow_null=True, help_text="UTC day; null when not grouped by day.")
    base_quantity = serializers.IntegerField(help_text="Exact, in `base_unit`.")
    base_unit = serializers.CharField()
    byte_hours = _quantity(allow_null=True, help_text="Storage only: byte-seconds / 3600.")
    quantity = _quantity(
        help_text="In `unit`; storage GiB-months use the hours of each usage month.",
    )
    unit = serializers.CharField()
    cost = _money(
        allow_null=True,
        help_text="In the report's `currency`: the row's share of its months' invoice amounts "
        "(usage lines only), rounded to the cent; null when no plan prices the meter.",
    )

    class Meta:
        ref_name = "UsageRow"


class UsageReportSerializer(serializers.Serializer):
    organization = serializers.SlugField(source="organization.slug")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group_by = serializers.ListField(child=serializers.CharField())
    generated_at = serializers.DateTimeField()
    currency = serializers.CharField()
    total_cost = _money(help_text="The sum of the rows' costs.")
    rows = UsageRowSerializer(many=True)

    class Meta:
        ref_name = "UsageReport"


class BreakdownField(serializers.ListField):
    """How a line's amount was priced: slices with label, quantity, unit price and amount."""

    child = serializers.DictField(child=serializers.CharField())


class LineFiguresSerializer(serializers.Serializer):
    """A line as the portal, PDF and CSV show it."""

    quantity = serializers.CharField(
        help_text="Rounded for reading: GiB units and hours to 3 decimals, counts whole."
    )
    exact = serializers.CharField(help_text="The same quantity unrounded (9 places at most).")
    unit = serializers.CharField(help_text="The unit of both (counts: `requests`, not 1,000s).")
    unit_price = serializers.ListField(
        child=serializers.CharField(),
        help_text="The rate (`0.023 / GiB-month`), or one entry per slice of the breakdown.",
    )

    class Meta:
        ref_name = "InvoiceLineFigures"


class _ShownLine:
    """Adds ``shown`` (``LineFiguresSerializer``) to a line serializer."""

    @extend_schema_field(LineFiguresSerializer)
    def get_shown(self, obj: Any) -> Any:
        figures = reports.figures_of(
            quantity=obj.quantity, unit=obj.unit, breakdown=obj.breakdown or []
        )
        return LineFiguresSerializer(figures).data


class DraftLineSerializer(_ShownLine, serializers.Serializer):
    position = serializers.IntegerField()
    kind = serializers.CharField(help_text="usage, minimum or adjustment.")
    description = serializers.CharField()
    meter = serializers.CharField()
    tier = serializers.CharField()
    dimension_key = serializers.CharField()
    plan_code = serializers.CharField()
    usage_start = serializers.DateTimeField(allow_null=True)
    usage_end = serializers.DateTimeField(allow_null=True)
    base_quantity = serializers.IntegerField()
    quantity = _quantity()
    unit = serializers.CharField()
    amount = _money()
    breakdown = BreakdownField()
    shown = serializers.SerializerMethodField()

    class Meta:
        ref_name = "DraftInvoiceLine"


class ForecastMeterSerializer(serializers.Serializer):
    meter = serializers.CharField(help_text="The meter, or `minimum` for the commitment top-up.")
    tier = serializers.CharField()
    actual = _money()
    forecast = _money()

    class Meta:
        ref_name = "ForecastMeter"


class ForecastSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField(help_text="The hour the projection starts from.")
    actual_total = _money()
    projected_total = _money()
    per_meter = ForecastMeterSerializer(many=True)

    class Meta:
        ref_name = "Forecast"


class BudgetStatusSerializer(serializers.Serializer):
    monthly_amount = _money()
    thresholds = serializers.ListField(child=serializers.IntegerField())
    updated_at = serializers.DateTimeField()
    spent = _money(help_text="Usage and minimum so far this month.")
    percent_used = serializers.DecimalField(max_digits=None, decimal_places=1)
    forecast = _money(help_text="Projected month-end spend.")
    forecast_percent = serializers.DecimalField(max_digits=None, decimal_places=1)

    class Meta:
        ref_name = "BudgetStatus"


class InvoiceDraftSerializer(serializers.Serializer):
    period_start = serializers.DateTimeField(source="draft.period_start")
    period_end = serializers.DateTimeField(source="draft.period_end")
    currency = serializers.CharField(source="draft.currency")
    as_of = serializers.DateTimeField(help_text="When the draft was computed.")
    lines = serializers.SerializerMethodField()
    subtotal = _money(source="draft.subtotal")
    minimum_adjustment = _money(source="draft.minimum_adjustment")
    adjustments = serializers.SerializerMethodField()
    total = _money(source="draft.total")
    forecast = ForecastSerializer()
    budget = BudgetStatusSerializer(allow_null=True)

    class Meta:
        ref_name = "InvoiceDraft"

    @extend_schema_field(DraftLineSerializer(many=True))
    def get_lines(self, obj: reports.DraftOverview) -> Any:
        # Draft lines are numbered as finalization will number them.
        lines: list[DraftLine] = obj.draft.lines
        numbered = [
            SimpleNamespace(**vars(ln), tier=ln.tier, position=i)
            for i, ln in enumerate(lines, start=1)
        ]
        return DraftLineSerializer(numbered, many=True).data

    @extend_schema_field(_money())
    def get_adjustments(self, obj: reports.DraftOverview) -> str:
        return str(obj.draft.total - obj.draft.subtotal - obj.draft.minimum_adjustment)


class InvoiceLineSerializer(_ShownLine, serializers.Serializer):
    id = serializers.IntegerField()
    position = serializers.IntegerField()
    kind = serializers.CharField(help_text="usage, minimum or adjustment.")
    description = serializers.CharField()
    meter = serializers.CharField()
    tier = serializers.SerializerMethodField()
    dimension_key = serializers.CharField()
    plan_code = serializers.CharField()
    usage_start = serializers.DateTimeField(
        allow_null=True, help_text="The line's usage is the rollups in [usage_start, usage_end)."
    )
    usage_end = serializers.DateTimeField(allow_null=True)
    base_quantity = serializers.IntegerField()
    base_unit = serializers.SerializerMethodField()
    quantity = _quantity()
    unit = serializers.CharField()
    amount = _money()
    breakdown = BreakdownField()
    shown = serializers.SerializerMethodField()

    class Meta:
        ref_name = "InvoiceLine"

    def get_tier(self, obj: InvoiceLine) -> str:
        return reports.tier_of(obj.dimension_key)

    def get_base_unit(self, obj: InvoiceLine) -> str:
        meter = METERS.get(obj.meter)
        return meter.base_unit if meter else ""


class CreditNoteSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.CharField()
    invoice = serializers.CharField(source="invoice.number")
    amount = _money()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "CreditNote"


class InvoiceSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.CharField()
    status = serializers.CharField(help_text="finalized or void.")
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    currency = serializers.CharField()
    subtotal = _money()
    minimum_adjustment = _money()
    total = _money()
    finalized_at = serializers.DateTimeField()
    voided_at = serializers.DateTimeField(allow_null=True)
    void_reason = serializers.CharField()

    class Meta:
        ref_name = "InvoiceSummary"


class InvoiceDetailSerializer(InvoiceSummarySerializer):
    organization = serializers.SlugField(source="organization.slug")
    lines = InvoiceLineSerializer(many=True, source="lines.all")
    credit_notes = CreditNoteSerializer(many=True, source="credit_notes.all")

    class Meta:
        ref_name = "InvoiceDetail"


class RollupSerializer(serializers.Serializer):
    hour = serializers.DateTimeField()
    quantity = serializers.IntegerField(
        help_text="In the meter's base unit (storage: byte-seconds)."
    )
    events = serializers.IntegerField()
    balance_bytes = serializers.IntegerField(
        allow_null=True, help_text="Storage: bytes stored at the end of the hour."
    )

    class Meta:
        ref_name = "Rollup"


class LineTraceSerializer(serializers.Serializer):
    invoice = serializers.CharField(source="line.invoice.number")
    line = serializers.IntegerField(source="line.id")
    meter = serializers.CharField(source="line.meter")
    dimension_key = serializers.CharField(source="line.dimension_key")
    usage_start = serializers.DateTimeField(source="line.usage_start", allow_null=True)
    usage_end = serializers.DateTimeField(source="line.usage_end", allow_null=True)
    base_quantity = serializers.IntegerField(source="line.base_quantity")
    rollups_total = serializers.IntegerField(
        help_text="The sum of the rollups now. It differs from `base_quantity` only when usage "
        "arrived after finalization; that difference is billed as an adjustment later."
    )
    rollups = RollupSerializer(many=True)

    class Meta:
        ref_name = "InvoiceLineTrace"


class BudgetSerializer(serializers.Serializer):
    monthly_amount = _money()
    thresholds = serializers.ListField(
        child=serializers.IntegerField(), help_text="Percentages of the monthly amount."
    )
    updated_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Budget"


class BudgetEnvelopeSerializer(serializers.Serializer):
    budget = BudgetSerializer(allow_null=True, help_text="Null when no budget is set.")

    class Meta:
        ref_name = "BudgetEnvelope"


class BudgetAlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    month = serializers.DateField()
    threshold = serializers.IntegerField(help_text="The percentage reached.")
    kind = serializers.CharField(help_text="actual (spend so far) or forecast (month-end).")
    amount = _money()
    budget_amount = _money()
    fired_at = serializers.DateTimeField()

    class Meta:
        ref_name = "BudgetAlert"


class PlanPriceSerializer(serializers.Serializer):
    meter = serializers.CharField()
    tier = serializers.CharField()
    model = serializers.CharField()
    unit_price = serializers.DecimalField(max_digits=18, decimal_places=8)
    tiers = serializers.ListField(child=serializers.DictField())
    package_size = serializers.DecimalField(max_digits=18, decimal_places=6)
    package_price = serializers.DecimalField(max_digits=18, decimal_places=8)
    included_quantity = serializers.DecimalField(max_digits=18, decimal_places=6)

    class Meta:
        ref_name = "PlanPrice"


class PricePlanSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.SlugField()
    name = serializers.CharField()
    currency = serializers.CharField()
    description = serializers.CharField()
    monthly_minimum = _money(allow_null=True)
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    prices = PlanPriceSerializer(many=True, source="prices.all")

    class Meta:
        ref_name = "PricePlan"


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    organization = serializers.SlugField(source="organization.slug")
    plan_code = serializers.SlugField(source="plan.code")
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Subscription"


class RateCardPriceSerializer(serializers.Serializer):
    meter = serializers.CharField()
    description = serializers.CharField()
    tier = serializers.CharField(help_text='"" : the tiers without a price of their own.')
    model = serializers.CharField(help_text="per_unit, graduated, volume or package.")
    unit = serializers.CharField(help_text="The billing unit prices and allowances are in.")
    unit_price = serializers.DecimalField(
        max_digits=18, decimal_places=8, source="price.unit_price"
    )
    tiers = serializers.ListField(
        child=serializers.DictField(),
        source="price.tiers",
        help_text='Graduated/volume: [{"up_to": "5" | null, "unit_price": "0.05", "flat_fee": "0"}].',
    )
    package_size = serializers.DecimalField(
        max_digits=18, decimal_places=6, source="price.package_size"
    )
    package_price = serializers.DecimalField(
        max_digits=18, decimal_places=8, source="price.package_price"
    )
    included_quantity = serializers.DecimalField(
        max_digits=18, decimal_places=6, source="price.included_quantity"
    )
    prices = serializers.ListField(
        child=serializers.CharField(), help_text="As the portal and invoices read them."
    )

    class Meta:
        ref_name = "RateCardPrice"


class RateCardPlanSerializer(serializers.Serializer):
    code = serializers.SlugField()
    name = serializers.CharField()
    currency = serializers.CharField()
    description = serializers.CharField()
    monthly_minimum = _money(allow_null=True)

    class Meta:
        ref_name = "RateCardPlan"


class RateCardPeriodSerializer(serializers.Serializer):
    plan_code = serializers.SlugField(source="plan.code")
    plan_name = serializers.CharField(source="plan.name")
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True, help_text="Exclusive; null: open.")
    changes = serializers.ListField(
        child=serializers.CharField(), help_text="What changed from the plan before."
    )

    class Meta:
        ref_name = "RateCardPeriod"


class RateCardSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField()
    plan = RateCardPlanSerializer(allow_null=True, help_text="Null: no plan charges the usage.")
    is_default = serializers.BooleanField(
        help_text="True when no subscription is in force and the default plan applies."
    )
    prices = RateCardPriceSerializer(many=True)
    history = RateCardPeriodSerializer(many=True, help_text="Subscriptions, oldest first.")

    class Meta:
        ref_name = "RateCard"


# --- downloads -------------------------------------------------------------------------------


class _DownloadApi(OrgAPIView):
    """A CSV or PDF download: the file is a plain Django response; DRF renders only errors,
    always as JSON, so an ``Accept: text/csv`` client gets its file or a JSON error, never a 406."""

    renderer_classes = [JSONRenderer]
    schema = DownloadSchema()

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        return JSONRenderer(), JSONRenderer.media_type


def _csv_response(lines: Any, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"  # billing data stays out of shared caches
    return response


def _pdf_response(content: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def _usage_filename(report: reports.UsageReport, ext: str) -> str:
    return f"usage-{report.organization.slug}-{report.start:%Y%m%dT%H%MZ}-{report.end:%Y%m%dT%H%MZ}.{ext}"


def _draft_filename(doc: reports.InvoiceDocument, ext: str) -> str:
    return f"draft-{doc.organization.slug}-{doc.period_start:%Y-%m}.{ext}"


def _usage_report(view: OrgAPIView, request: Request) -> reports.UsageReport:
    """The report the query asks for; bad parameters, ranges and groupings answer 400."""
    params = UsageFilterSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    default_start, default_end = month_bounds(timezone.now())
    return reports.usage_report(
        org=view.org,
        start=params.validated_data.get("start") or default_start,
        end=params.validated_data.get("end") or default_end,
        group_by=str(params.validated_data.get("group_by", "")).split(","),
    )


# --- usage -----------------------------------------------------------------------------------

_USAGE_DESCRIPTION = (
    "Usage from hourly rollups over the hours that start in [start, end), at most "
    "`BILLING_MAX_REPORT_DAYS` days (default 400). Base quantities are exact integers; billing "
    "quantities are exact to 9 decimal places (storage: GiB-month = byte-hours / 2^30 / hours in "
    "the month of the usage)."
)


class UsageReportApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="Usage report",
        description=_USAGE_DESCRIPTION,
        parameters=[UsageFilterSerializer],
        responses={200: UsageReportSerializer, **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response(UsageReportSerializer(_usage_report(self, request)).data)


class UsageExportCsvApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="Usage report as CSV",
        description=_USAGE_DESCRIPTION + " Header lines name the organization and range.",
        parameters=[UsageFilterSerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR, **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> StreamingHttpResponse:
        report = _usage_report(self, request)
        return _csv_response(reports.usage_report_csv(report), _usage_filename(report, "csv"))


class UsageReportPdfApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="Usage report as PDF",
        description=_USAGE_DESCRIPTION,
        parameters=[UsageFilterSerializer],
        responses={(200, "application/pdf"): OpenApiTypes.BINARY, **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> HttpResponse:
        report = _usage_report(self, request)
        return _pdf_response(reports.usage_report_pdf(report), _usage_filename(report, "pdf"))


# --- invoices --------------------------------------------------------------------------------


class InvoiceDraftApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="This month's live draft invoice, forecast and budget",
        description=(
            "The invoice of the current month (UTC) as the rollups say now, with the month-end "
            "forecast (storage at its current level, other meters on their trend) and the budget "
            "if one is set. Not a final invoice: it changes as usage arrives."
        ),
        responses={200: InvoiceDraftSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        overview = reports.draft_overview(org=self.org, now=timezone.now())
        return Response(InvoiceDraftSerializer(overview).data)


class InvoiceDraftCsvApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="This month's draft invoice as CSV",
        responses={(200, "text/csv"): OpenApiTypes.STR, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> StreamingHttpResponse:
        doc = reports.draft_document(org=self.org, now=timezone.now())
        return _csv_response(reports.invoice_csv(doc), _draft_filename(doc, "csv"))


class InvoiceDraftPdfApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="This month's draft invoice as PDF",
        responses={(200, "application/pdf"): OpenApiTypes.BINARY, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> HttpResponse:
        doc = reports.draft_document(org=self.org, now=timezone.now())
        return _pdf_response(reports.invoice_pdf(doc), _draft_filename(doc, "pdf"))


class InvoiceListApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["billing"],
        summary="Finalized and void invoices, newest first",
        responses={200: InvoiceSummarySerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.invoice_list(org=self.org), request, view=self)
        return paginator.get_paginated_response(InvoiceSummarySerializer(page, many=True).data)


class InvoiceDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="One invoice with its lines and credit notes",
        responses={200: InvoiceDetailSerializer, **_errors()},
    )
    def get(self, request: Request, invoice_id: int, **kwargs: Any) -> Response:
        invoice = selectors.invoice_get(org=self.org, invoice_id=invoice_id)
        return Response(InvoiceDetailSerializer(invoice).data)


class InvoiceCsvApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="One invoice as CSV",
        description="Header lines, one row per line, then subtotal, minimum, adjustments and "
        "total (each the sum of its lines) and any credit notes.",
        responses={(200, "text/csv"): OpenApiTypes.STR, **_errors()},
    )
    def get(self, request: Request, invoice_id: int, **kwargs: Any) -> StreamingHttpResponse:
        invoice = selectors.invoice_get(org=self.org, invoice_id=invoice_id)
        doc = reports.invoice_document(invoice)
        return _csv_response(reports.invoice_csv(doc), f"{invoice.number}.csv")


class InvoicePdfApi(_DownloadApi):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="One invoice as PDF",
        responses={(200, "application/pdf"): OpenApiTypes.BINARY, **_errors()},
    )
    def get(self, request: Request, invoice_id: int, **kwargs: Any) -> HttpResponse:
        invoice = selectors.invoice_get(org=self.org, invoice_id=invoice_id)
        doc = reports.invoice_document(invoice)
        return _pdf_response(reports.invoice_pdf(doc), f"{invoice.number}.pdf")


class InvoiceLineRollupsApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="Trace an invoice line to its hourly rollups",
        description=(
            "The rollup rows of the line's meter and dimension in [usage_start, usage_end), "
            "oldest first (at most one per hour of the month). Minimum and adjustment lines come "
            "from no rollups and answer an empty list."
        ),
        responses={200: LineTraceSerializer, **_errors()},
    )
    def get(self, request: Request, invoice_id: int, line_id: int, **kwargs: Any) -> Response:
        line = selectors.invoice_line_get(org=self.org, invoice_id=invoice_id, line_id=line_id)
        rows: list[Rollup] = []
        if line.kind == "usage" and line.usage_start and line.usage_end:
            rows = list(
                rollups_for_line(
                    org=self.org,
                    meter=line.meter,
                    dimension_key=line.dimension_key,
                    start=line.usage_start,
                    end=line.usage_end,
                )
            )
        trace = {"line": line, "rollups": rows, "rollups_total": sum(r.quantity for r in rows)}
        return Response(LineTraceSerializer(trace).data)


# --- budget ----------------------------------------------------------------------------------


class PricePlanApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}

    @extend_schema(
        tags=["billing"],
        summary="The organization's price plan: prices per meter, allowances, minimum, history",
        responses={200: RateCardSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        card = plans.rate_card(org=self.org, now=timezone.now())
        return Response(RateCardSerializer(card).data)


class BudgetApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW, "PUT": Perm.BILLING_MANAGE}

    class InputSerializer(serializers.Serializer):
        monthly_amount = _money()
        thresholds = serializers.ListField(
            child=serializers.IntegerField(),
            help_text="Percentages of the monthly amount (1-1000), e.g. [50, 80, 100].",
        )

        class Meta:
            ref_name = "BudgetUpdate"

    @extend_schema(
        tags=["billing"],
        summary="The monthly budget",
        responses={200: BudgetEnvelopeSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response(
            BudgetEnvelopeSerializer({"budget": selectors.budget_get(org=self.org)}).data
        )

    @extend_schema(
        tags=["billing"],
        summary="Set the monthly budget",
        description="Each threshold fires once per month for spend so far and once for the "
        "month-end forecast (webhook `budget.threshold` and an email to owners and billing).",
        request=InputSerializer,
        responses={200: BudgetEnvelopeSerializer, **_errors(400)},
    )
    def put(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        budget = services.budget_set(org=self.org, actor=self.actor, **serializer.validated_data)
        return Response(BudgetEnvelopeSerializer({"budget": budget}).data)


class BudgetAlertListApi(OrgAPIView):
    permissions_required = {"GET": Perm.INVOICES_VIEW}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["billing"],
        summary="Budget alerts fired, newest first",
        responses={200: BudgetAlertSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.budget_alert_list(org=self.org), request, view=self
        )
        return paginator.get_paginated_response(BudgetAlertSerializer(page, many=True).data)


# --- platform (Strata staff) -----------------------------------------------------------------


class IsPlatformStaff(permissions.BasePermission):
    """A signed-in staff user; tokens belong to one organization and are never platform staff."""

    message = "Only Strata staff signed in to the portal may use the platform API."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if isinstance(request.auth, ApiToken):
            return False
        user = request.user
        return bool(user is not None and user.is_authenticated and getattr(user, "is_staff", False))


def _platform_invoice_get(*, invoice_id: int) -> Invoice:
    invoice = (
        Invoice.objects.select_related("organization")
        .prefetch_related("lines", "credit_notes")
        .filter(pk=invoice_id)
        .first()
    )
    if invoice is None:
        raise NotFound("Invoice not found.")
    return invoice


class PlanPriceInputSerializer(serializers.Serializer):
    meter = serializers.ChoiceField(choices=METER_CHOICES)
    tier = serializers.ChoiceField(
        choices=TIER_CHOICES, required=False, allow_blank=True, help_text="Blank: any tier."
    )
    model = serializers.ChoiceField(choices=PlanPrice.Model.choices, required=False)
    unit_price = serializers.DecimalField(max_digits=18, decimal_places=8, required=False)
    tiers = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text='Graduated/volume: [{"up_to": "1024" | null, "unit_price": "0.023", '
        '"flat_fee": "0"}], in billing units; the last tier is open (null).',
    )
    package_size = serializers.DecimalField(max_digits=18, decimal_places=6, required=False)
    package_price = serializers.DecimalField(max_digits=18, decimal_places=8, required=False)
    included_quantity = serializers.DecimalField(max_digits=18, decimal_places=6, required=False)

    class Meta:
        ref_name = "PlanPriceCreate"


class PlatformPlanListApi(APIView):
    permission_classes = [IsPlatformStaff]
    pagination_class = NewestFirstPagination

    class InputSerializer(serializers.Serializer):
        code = serializers.SlugField(max_length=50)
        name = serializers.CharField(max_length=200)
        currency = serializers.CharField(max_length=3, help_text="ISO 4217, e.g. USD.")
        description = serializers.CharField(required=False, allow_blank=True, default="")
        monthly_minimum = _money(required=False, allow_null=True)
        is_default = serializers.BooleanField(required=False, default=False)
        prices = PlanPriceInputSerializer(many=True)

        class Meta:
            ref_name = "PricePlanCreate"

    @extend_schema(
        tags=["platform"],
        summary="List price plans (staff only)",
        responses={200: PricePlanSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        paginator = self.pagination_class()
        plans = PricePlan.objects.prefetch_related("prices").order_by("-id")
        page = paginator.paginate_queryset(plans, request, view=self)
        return paginator.get_paginated_response(PricePlanSerializer(page, many=True).data)

    @extend_schema(
        tags=["platform"],
        summary="Create a price plan (staff only)",
        request=InputSerializer,
        responses={201: PricePlanSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        plan = services.plan_create(
            actor=Actor.from_request(request._request),
            prices=[dict(p) for p in data.pop("prices")],
            **data,
        )
        plan = PricePlan.objects.prefetch_related("prices").get(pk=plan.pk)
        return Response(PricePlanSerializer(plan).data, status=status.HTTP_201_CREATED)


class PlatformSubscriptionApi(APIView):
    permission_classes = [IsPlatformStaff]

    class InputSerializer(serializers.Serializer):
        plan_code = serializers.SlugField(max_length=50)
        starts_at = AwareDateTimeField(
            help_text="A whole hour, with a timezone; the current plan ends there."
        )

        class Meta:
            ref_name = "SubscriptionChange"

    @extend_schema(
        tags=["platform"],
        summary="Put an organization on a plan from a given hour (staff only)",
        description="A change in the middle of a month prorates both plans by time on that "
        "month's invoice; it may not reach back into an invoiced month (409).",
        request=InputSerializer,
        responses={201: SubscriptionSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, organization_id: int, **kwargs: Any) -> Response:
        org = Organization.objects.filter(pk=organization_id).first()
        if org is None:
            raise NotFound("Organization not found.")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        code = serializer.validated_data["plan_code"]
        plan = PricePlan.objects.filter(code=code).first()
        if plan is None:
            raise ValidationFailed(
                "Unknown plan.", fields={"plan_code": [f"No plan with code '{code}'."]}
            )
        sub: Subscription = services.subscription_change(
            org=org,
            plan=plan,
            starts_at=serializer.validated_data["starts_at"],
            actor=Actor.from_request(request._request),
        )
        return Response(SubscriptionSerializer(sub).data, status=status.HTTP_201_CREATED)


class PlatformInvoiceVoidApi(APIView):
    permission_classes = [IsPlatformStaff]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500)

        class Meta:
            ref_name = "InvoiceVoid"

    @extend_schema(
        tags=["platform"],
        summary="Void an invoice (staff only)",
        description="The invoice stays on record as void; its month can then be finalized again.",
        request=InputSerializer,
        responses={200: InvoiceDetailSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, invoice_id: int, **kwargs: Any) -> Response:
        invoice = _platform_invoice_get(invoice_id=invoice_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.invoice_void(
            org=invoice.organization,
            invoice=invoice,
            reason=serializer.validated_data["reason"],
            actor=Actor.from_request(request._request),
        )
        invoice = _platform_invoice_get(invoice_id=invoice_id)
        return Response(InvoiceDetailSerializer(invoice).data)


class PlatformCreditNoteApi(APIView):
    permission_classes = [IsPlatformStaff]

    class InputSerializer(serializers.Serializer):
        amount = _money()
        reason = serializers.CharField(max_length=500)

        class Meta:
            ref_name = "CreditNoteCreate"

    @extend_schema(
        tags=["platform"],
        summary="Issue a credit note on a finalized invoice (staff only)",
        description="Credit notes of an invoice may add up to at most its total.",
        request=InputSerializer,
        responses={201: CreditNoteSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, invoice_id: int, **kwargs: Any) -> Response:
        invoice = _platform_invoice_get(invoice_id=invoice_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        note: CreditNote = services.credit_note_create(
            org=invoice.organization,
            invoice=invoice,
            amount=serializer.validated_data["amount"],
            reason=serializer.validated_data["reason"],
            actor=Actor.from_request(request._request),
        )
        return Response(CreditNoteSerializer(note).data, status=status.HTTP_201_CREATED)
