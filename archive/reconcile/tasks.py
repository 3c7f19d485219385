"""Celery tasks of the consistency check. Imported by ``archive.tasks`` for the worker's
autodiscovery. Thin: the daily beat job queues one task per active organization, each runs the
check for one organization (a run only reads, so running twice costs time, never correctness)."""

from __future__ import annotations

from celery import shared_task

from archive.reconcile import services
from tenants.models import Organization


@shared_task(name="archive.tasks.reconcile_organization", ignore_result=True)
def reconcile_organization(org_id: int) -> None:
    org = Organization.objects.filter(pk=org_id, status=Organization.Status.ACTIVE).first()
    if org is None:
        return
    services.reconcile_run(org=org)


@shared_task(name="archive.tasks.reconcile_dispatch", ignore_result=True)
def reconcile_dispatch() -> int:
    """Beat, daily: one bounded task per active organization (each lists only its own prefix)."""
    org_ids = list(
        Organization.objects.filter(status=Organization.Status.ACTIVE).values_list("pk", flat=True)
    )
    for org_id in org_ids:
        reconcile_organization.delay(org_id)
    return len(org_ids)
