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


# The name is spelled out: the beat schedule and messages already queued refer to it.
@shared_task(name="billing.tasks.billing_finalize_due", ignore_result=True)
def billing_finalize_due(org_id: int | None = None) -> int:
    """Beat (no ``org_id``): roll up, then one finalization task per organization with usage,
    so that one organization's failure does not stop another's.

    With ``org_id``: finalize that organization's ended months. Safe to run twice or at once
    (see ``services.invoices_finalize_due``); a failed run is retried by the next beat.
    """
    if org_id is None:
        rollups.rollup_run()
        org_ids = services.invoice_organization_ids()
        for pk in org_ids:
            billing_finalize_due.apply_async((pk,))
        return len(org_ids)
    org = Organization.objects.exclude(status=Organization.Status.CLOSED).filter(pk=org_id).first()
    if org is None:  # deleted or closed since the beat queued it
        return 0
    return len(services.invoices_finalize_due(org=org))
