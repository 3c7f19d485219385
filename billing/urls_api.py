"""Billing's REST API, mounted by saas.urls at /api/v1/ (token) and /api/v1/o/<org_slug>/ (session).

Ids use the ``int`` converter, so ``/invoices/draft/`` and ``/invoices/<id>/`` cannot collide and a
non-numeric id is a plain 404.
"""

from django.urls import URLPattern, path

from billing import apis

urlpatterns: list[URLPattern] = [
    path("usage/", apis.UsageReportApi.as_view(), name="api-usage"),
    path("usage/export.csv", apis.UsageExportCsvApi.as_view(), name="api-usage-csv"),
    path("usage/report.pdf", apis.UsageReportPdfApi.as_view(), name="api-usage-pdf"),
    path("invoices/", apis.InvoiceListApi.as_view(), name="api-invoices"),
    path("invoices/draft/", apis.InvoiceDraftApi.as_view(), name="api-invoice-draft"),
    path("invoices/draft.csv", apis.InvoiceDraftCsvApi.as_view(), name="api-invoice-draft-csv"),
    path("invoices/draft.pdf", apis.InvoiceDraftPdfApi.as_view(), name="api-invoice-draft-pdf"),
    path("invoices/<int:invoice_id>/", apis.InvoiceDetailApi.as_view(), name="api-invoice"),
    path("invoices/<int:invoice_id>.csv", apis.InvoiceCsvApi.as_view(), name="api-invoice-csv"),
    path("invoices/<int:invoice_id>.pdf", apis.InvoicePdfApi.as_view(), name="api-invoice-pdf"),
    path(
        "invoices/<int:invoice_id>/lines/<int:line_id>/rollups/",
        apis.InvoiceLineRollupsApi.as_view(),
        name="api-invoice-line-rollups",
    ),
    path("price-plan/", apis.PricePlanApi.as_view(), name="api-price-plan"),
    path("budget/", apis.BudgetApi.as_view(), name="api-budget"),
    path("budget/alerts/", apis.BudgetAlertListApi.as_view(), name="api-budget-alerts"),
    path("platform/plans/", apis.PlatformPlanListApi.as_view(), name="api-platform-plans"),
    path(
        "platform/organizations/<int:organization_id>/subscription/",
        apis.PlatformSubscriptionApi.as_view(),
        name="api-platform-subscription",
    ),
    path(
        "platform/invoices/<int:invoice_id>/void/",
        apis.PlatformInvoiceVoidApi.as_view(),
        name="api-platform-invoice-void",
    ),
    path(
        "platform/invoices/<int:invoice_id>/credit-notes/",
        apis.PlatformCreditNoteApi.as_view(),
        name="api-platform-credit-notes",
    ),
]
