"""Celery tasks of restores. Imported by ``archive.tasks`` so that the worker's autodiscovery
registers them; names unchanged.

Thin: load by id, call ``archive.restores.services``. Safe to run twice and to kill at any line:
every state change is a conditional UPDATE and metering has idempotency keys.
"""

from __future__ import annotations

from celery import shared_task

from archive.models import RestoreRequest, Study
from archive.restores import services
from tenants.models import Organization


@shared_task(name="archive.tasks.restore_start_run", ignore_result=True)
def restore_start_run(org_id: int, restore_id: int) -> None:
    """Ask the object store for every item of a (bulk) restore; the poll covers any failure."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return
    restore = RestoreRequest.objects.for_org(org).filter(pk=restore_id).first()
    if restore is None or restore.state != RestoreRequest.State.IN_PROGRESS:
        return
    services.restore_kickoff(org=org, restore=restore, limit=restore.instances_total)


@shared_task(name="archive.tasks.restores_poll", ignore_result=True)
def restores_poll() -> dict[str, int]:
    """Beat, every minute: check open restores with the object store (bounded batch)."""
    return services.restores_poll()


@shared_task(name="archive.tasks.prefetch_for_study", ignore_result=True)
def prefetch_for_study(org_id: int, study_id: int) -> None:
    """A new study settled: restore the patient's priors the prefetch rule names (queued by the
    ingest pipeline's settle check, by name: ingest sits below restores)."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return
    study = Study.objects.for_org(org).filter(pk=study_id, trashed_at__isnull=True).first()
    if study is None:
        return
    services.prefetch_for_study(org=org, study=study)
