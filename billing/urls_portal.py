"""Portal URLs of "Usage & billing", mounted at ``/o/<slug>/billing/``."""

from django.urls import path

from billing import views

urlpatterns = [
    path("", views.overview, name="portal-billing"),
    path("invoices/", views.invoices, name="portal-billing-invoices"),
    path("invoices/draft/", views.draft_detail, name="portal-billing-draft"),
    path("invoices/draft.csv", views.draft_csv, name="portal-billing-draft-csv"),
    path("invoices/draft.pdf", views.draft_pdf, name="portal-billing-draft-pdf"),
    path(
        "invoices/draft/lines/<int:position>/",
        views.draft_line,
        name="portal-billing-draft-line",
    ),
    path("invoices/<int:invoice_id>/", views.invoice_detail, name="portal-billing-invoice"),
    path("invoices/<int:invoice_id>.csv", views.invoice_csv, name="portal-billing-invoice-csv"),
    path("invoices/<int:invoice_id>.pdf", views.invoice_pdf, name="portal-billing-invoice-pdf"),
    path(
        "invoices/<int:invoice_id>/lines/<int:position>/",
        views.invoice_line,
        name="portal-billing-invoice-line",
    ),
    path("plan/", views.price_plan, name="portal-billing-plan"),
    path("budget/", views.budget, name="portal-billing-budget"),
    path("usage/", views.usage, name="portal-billing-usage"),
]
