"""Platform staff's admin for billing: every organization's usage, invoices and revenue.

Metering rows (usage events, the storage ledger, rollups), plans, subscriptions, invoices, credit
notes and budgets are records here, read-only: a change made behind ``billing.services`` would
skip its checks and its audit event. Plans and subscriptions are changed through the platform API
(``services.plan_create`` / ``services.subscription_change``); budgets by the organization in the
portal. The writes offered here are the invoice actions "Void" and "Issue a credit note", which
call ``billing.services`` with the staff member as the audited actor.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from billing import services
from billing.forms import CreditNoteForm, InvoiceVoidForm
from billing.models import (
    Budget,
    BudgetAlert,
    CreditNote,
    Invoice,
    InvoiceLine,
    PlanPrice,
    PricePlan,
    Rollup,
    StorageDelta,
    Subscription,
    UsageEvent,
)
from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error

REVENUE_MONTHS = 24


class ReadOnlyAdmin(admin.ModelAdmin):
    """Staff may look, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyTabularInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- plans and subscriptions -------------------------------------------------------------------


class PlanPriceInline(ReadOnlyTabularInline):
    model = PlanPrice
    fields = [
        "meter",
        "tier",
        "model",
        "unit_price",
        "tiers",
        "package_size",
        "package_price",
        "included_quantity",
    ]


@admin.register(PricePlan)
class PricePlanAdmin(ReadOnlyAdmin):
    list_display = ["code", "name", "currency", "monthly_minimum", "is_default", "price_count"]
    list_filter = ["currency", "is_default"]
    search_fields = ["code", "name"]
    inlines = [PlanPriceInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PricePlan]:
        return super().get_queryset(request).annotate(price_count=Count("prices"))

    @admin.display(description="Prices", ordering="price_count")
    def price_count(self, obj: Any) -> int:
        return int(obj.price_count)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["organization", "plan", "starts_at", "ends_at", "created_at"]
    list_filter = ["plan"]
    list_select_related = ["organization", "plan"]
    search_fields = ["organization__name", "organization__slug", "plan__code"]
    date_hierarchy = "starts_at"


# --- invoices --------------------------------------------------------------------------------


class InvoiceLineInline(ReadOnlyTabularInline):
    model = InvoiceLine
    fields = ["position", "kind", "description", "plan_code", "quantity", "unit", "amount"]
    ordering = ["position"]


class CreditNoteInline(ReadOnlyTabularInline):
    model = CreditNote
    fields = ["number", "amount", "reason", "created_by", "created_at"]


def revenue_summary(invoices: QuerySet[Invoice]) -> list[dict[str, Any]]:
    """Finalized invoices per month and currency, newest month first: count, invoiced total,
    credit notes against them, and the net. Void invoices are not revenue."""
    finalized = invoices.filter(status=Invoice.Status.FINALIZED).order_by()
    rows = list(
        finalized.values("period_start", "currency")
        .annotate(invoices=Count("id"), total=Sum("total"))
        .order_by("-period_start", "currency")[:REVENUE_MONTHS]
    )
    credits = {
        (row["invoice__period_start"], row["invoice__currency"]): row["credited"]
        for row in CreditNote.objects.filter(invoice__in=finalized)
        .order_by()
        .values("invoice__period_start", "invoice__currency")
        .annotate(credited=Sum("amount"))
    }
    cent = Decimal("0.01")
    summary: list[dict[str, Any]] = []
    for row in rows:
        # SQLite adds decimals as floats; rounding a sum of whole cents to cents restores it.
        total = Decimal(row["total"] or 0).quantize(cent)
        credited = Decimal(credits.get((row["period_start"], row["currency"])) or 0).quantize(cent)
        summary.append(
            {
                "period_start": row["period_start"],
                "currency": row["currency"],
                "invoices": row["invoices"],
                "total": total,
                "credited": credited,
                "net": total - credited,
            }
        )
    return summary


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "organization",
        "period",
        "total_with_currency",
        "status",
        "finalized_at",
    ]
    list_filter = ["status", "currency", "organization"]
    list_select_related = ["organization"]
    search_fields = ["number", "organization__name", "organization__slug"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline, CreditNoteInline]
    actions = ["void_invoices", "issue_credit_note"]

    @admin.display(description="Period", ordering="period_start")
    def period(self, obj: Invoice) -> str:
        return f"{obj.period_start:%Y-%m}"

    @admin.display(description="Total", ordering="total")
    def total_with_currency(self, obj: Invoice) -> str:
        return f"{obj.total:,.2f} {obj.currency}"

    def has_void_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.change_invoice"))

    def has_credit_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.add_creditnote"))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context=extra_context)
        # The summary follows the list's filters and search (e.g. one organization's revenue).
        context = getattr(response, "context_data", None)
        if isinstance(context, dict) and "cl" in context:
            cl = context["cl"]
            context["revenue_summary"] = revenue_summary(cl.queryset)
            context["revenue_filtered"] = bool(cl.get_filters_params() or cl.query)
            context["revenue_months"] = REVENUE_MONTHS
        return response

    def _action_page(
        self,
        request: HttpRequest,
        queryset: QuerySet[Invoice],
        *,
        template: str,
        title: str,
        action: str,
        form: Any,
        status: int = 200,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "invoices": list(queryset.select_related("organization")),
            "form": form,
            "opts": self.model._meta,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, template, context, status=status)

    @admin.action(description="Void selected invoices…", permissions=["void"])
    def void_invoices(
        self, request: HttpRequest, queryset: QuerySet[Invoice]
    ) -> TemplateResponse | None:
        form = InvoiceVoidForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            actor = Actor.from_request(request)
            voided = []
            for invoice in queryset.select_related("organization"):
                try:
                    services.invoice_void(
                        org=invoice.organization,
                        invoice=invoice,
                        reason=form.cleaned_data["reason"],
                        actor=actor,
                    )
                except ServiceError as exc:
                    self.message_user(request, f"{invoice.number}: {exc.message}", messages.ERROR)
                else:
                    voided.append(invoice.number)
            if voided:
                self.message_user(request, f"Voided {', '.join(voided)}.", messages.SUCCESS)
            return None
        return self._action_page(
            request,
            queryset,
            template="admin/billing/invoice/void_confirmation.html",
            title="Void invoices",
            action="void_invoices",
            form=form,
            status=400 if form.is_bound else 200,
        )

    @admin.action(description="Issue a credit note…", permissions=["credit"])
    def issue_credit_note(
        self, request: HttpRequest, queryset: QuerySet[Invoice]
    ) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one invoice to credit.", messages.WARNING)
            return None
        invoice = queryset.select_related("organization").get()
        form = CreditNoteForm(request.POST if "apply" in request.POST else None)
        status = 200
        if form.is_bound:
            status = 400
            if form.is_valid():
                try:
                    note = services.credit_note_create(
                        org=invoice.organization,
                        invoice=invoice,
                        amount=form.cleaned_data["amount"],
                        reason=form.cleaned_data["reason"],
                        actor=Actor.from_request(request),
                    )
                except ServiceError as exc:
                    form_apply_service_error(form, exc)
                    status = exc.status
                else:
                    self.message_user(
                        request,
                        f"Credit note {note.number} of {note.amount} {invoice.currency} "
                        f"issued against {invoice.number}.",
                        messages.SUCCESS,
                    )
                    return None
        return self._action_page(
            request,
            queryset,
            template="admin/billing/invoice/credit_note_form.html",
            title=f"Credit note for {invoice.number}",
            action="issue_credit_note",
            form=form,
            status=status,
        )


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "organization", "amount", "reason", "created_at"]
    list_select_related = ["invoice", "organization"]
    list_filter = ["organization"]
    search_fields = ["number", "invoice__number", "organization__name", "reason"]
    date_hierarchy = "created_at"


# --- budgets ---------------------------------------------------------------------------------


@admin.register(Budget)
class BudgetAdmin(ReadOnlyAdmin):
    list_display = ["organization", "monthly_amount", "thresholds", "updated_at"]
    list_select_related = ["organization"]
    search_fields = ["organization__name", "organization__slug"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "month",
        "kind",
        "threshold",
        "amount",
        "budget_amount",
        "fired_at",
    ]
    list_filter = ["kind", "month", "organization"]
    list_select_related = ["organization"]
    date_hierarchy = "fired_at"


# --- metering --------------------------------------------------------------------------------


@admin.register(Rollup)
class RollupAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "meter",
        "dimension_key",
        "hour",
        "quantity",
        "events",
        "balance_bytes",
    ]
    list_filter = ["organization", "meter"]
    list_select_related = ["organization"]
    date_hierarchy = "hour"
    # Millions of rows: no COUNT(*) of the whole table on every page.
    show_full_result_count = False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ["organization", "meter", "quantity", "dimension_key", "at", "recorded_at"]
    list_filter = ["meter", "organization"]
    list_select_related = ["organization"]
    search_fields = ["idempotency_key"]
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(StorageDelta)
class StorageDeltaAdmin(ReadOnlyAdmin):
    list_display = ["organization", "tier", "delta_bytes", "at", "recorded_at"]
    list_filter = ["tier", "organization"]
    list_select_related = ["organization"]
    search_fields = ["idempotency_key"]
    date_hierarchy = "at"
    show_full_result_count = False
