"""Celery tasks of the DIMSE package. Imported by ``archive.tasks`` so that the worker's
autodiscovery registers them; named ``archive.tasks.<name>`` like every archive task.

Thin: call ``archive.dimse.activity``. Safe to run twice and to kill at any line (a purge deletes
whole associations with their operations, in one transaction per batch).
"""

from __future__ import annotations

from celery import shared_task

from archive.dimse import activity

# Batches one run deletes at most; the next beat run goes on where this one stopped.
MAX_BATCHES = 20


@shared_task(name="archive.tasks.dimse_activity_purge", ignore_result=True)
def dimse_activity_purge() -> int:
    """Beat: delete DICOM association activity older than ``DIMSE_ACTIVITY_RETENTION_DAYS``
    (bounded: at most ``MAX_BATCHES`` batches per run). Returns how many associations went."""
    deleted = 0
    for _ in range(MAX_BATCHES):
        count = activity.activity_purge()
        deleted += count
        if count < activity.PURGE_BATCH:
            break
    return deleted
