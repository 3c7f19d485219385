"""Billing beat jobs: keep rollups current, check budgets, finalize ended months."""

from __future__ import annotations

from celery import shared_task

from billing import rollups, services
from billing.models import Budget
from tenants.models import Organization


@shared_task(ignore_result=True)
def billing_rollup() -> None:
    """Every few minutes: incremental rollup, then each organization's budget check on its own task."""
    rollups.rollup_run()
    for org_id in Budget.objects.values_list("organization_id", flat=True):
        billing_budget_check.delay(org_id)


@shared_task(ignore_result=True)
def billing_budget_check(org_id: int) -> None:
    org = Organization.objects.get(pk=org_id)
    services.budget_check(org=org)


@shared_task(ignore_result=True)
def billing_finalize_due() -> None:
    rollups.rollup_run()
    services.invoices_finalize_due()
