"""Celery tasks of restores and retention. Imported by ``archive.tasks`` so that the worker's
autodiscovery registers them.

Thin: load by id, call ``archive.restores`` / ``archive.retention``. Safe to run twice and to
kill at any line: every state change is a conditional UPDATE, metering has idempotency keys, and
a purge deletes bytes before rows (a rerun finishes what a crash left).
"""

from __future__ import annotations

from celery import shared_task

from tenants.models import Organization


@shared_task(name="archive.tasks.restore_start_run", ignore_result=True)
def restore_start_run(org_id: int, restore_id: int) -> None:
    """Ask the object store for every item of a (bulk) restore; the poll covers any failure."""
    from archive import restores
    from archive.models import RestoreRequest

    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return
    restore = RestoreRequest.objects.for_org(org).filter(pk=restore_id).first()
    if restore is None or restore.state != RestoreRequest.State.IN_PROGRESS:
        return
    restores.restore_kickoff(org=org, restore=restore, limit=restore.instances_total)


@shared_task(name="archive.tasks.restores_poll", ignore_result=True)
def restores_poll() -> dict[str, int]:
    """Beat, every minute: check open restores with the object store (bounded batch)."""
    from archive import restores

    return restores.restores_poll()


@shared_task(name="archive.tasks.trash_purge_due", ignore_result=True)
def trash_purge_due() -> dict[str, int]:
    """Beat: purge studies whose grace period in the trash is over (bounded batch)."""
    from archive import retention

    return retention.trash_purge_due()
