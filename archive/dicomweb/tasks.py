"""Celery tasks of DICOMweb. Imported by ``archive.tasks`` so that the worker's autodiscovery
registers them.

Thin: call ``archive.dicomweb.thumbnails``. Safe to run twice and to kill at any line: a derived
object's bytes go before its row, and its ledger delta is keyed by the row.
"""

from __future__ import annotations

from celery import shared_task

from archive.dicomweb import thumbnails


@shared_task(name="archive.tasks.derived_objects_sweep", ignore_result=True)
def derived_objects_sweep() -> int:
    """Beat: remove thumbnails of purged instances, trashed studies and removed locations."""
    return thumbnails.derived_sweep()
