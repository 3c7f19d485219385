"""Celery tasks of retention. Imported by ``archive.tasks`` so that the worker's autodiscovery
registers them; names unchanged.

Thin: call ``archive.retention.services``. Safe to run twice and to kill at any line: a purge
deletes bytes before rows (a rerun finishes what a crash left).
"""

from __future__ import annotations

from celery import shared_task

from archive.retention import services


@shared_task(name="archive.tasks.trash_purge_due", ignore_result=True)
def trash_purge_due() -> dict[str, int]:
    """Beat: purge studies whose grace period in the trash is over (bounded batch)."""
    return services.trash_purge_due()
