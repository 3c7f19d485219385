"""Celery tasks of ingest: ingest jobs (portal uploads, bucket imports), the settle check that emits
``ingest.completed``, and the orphan cleanup. Imported by ``archive.tasks`` so that the worker's
autodiscovery registers them; the names stay ``archive.tasks.*`` so that queued messages, the task
routes (``archive.tasks.ingest_*`` to the ``ingest`` queue) and the beat schedule survive a deploy.

Thin: load by id, call ``archive.ingest.jobs`` or ``archive.ingest.pipeline``. Safe to run twice
and to kill at any line: a job is claimed with a conditional UPDATE (see ``archive.ingest.jobs``).
The services queue these tasks through deferred imports: this module imports them.
"""

from __future__ import annotations

from celery import shared_task

from archive.ingest import jobs, pipeline
from tenants.models import Organization


@shared_task(name="archive.tasks.ingest_job_run", ignore_result=True)
def ingest_job_run(org_id: int, job_id: int, handoff: str | None = None) -> None:
    """Process one bounded batch of a job; queue the next batch with the lease handed over."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return
    next_handoff = jobs.job_process(org=org, job_id=job_id, handoff=handoff)
    if next_handoff is not None:
        ingest_job_run.apply_async((org_id, job_id, next_handoff))


@shared_task(name="archive.tasks.ingest_jobs_sweep", ignore_result=True)
def ingest_jobs_sweep() -> dict[str, int]:
    """Beat: resume jobs whose worker died, discard uploads that were never finished, close
    STOW-RS jobs whose request died."""
    counts = jobs.jobs_sweep()
    counts["interrupted"] = jobs.stow_jobs_close()
    return counts


@shared_task(name="archive.tasks.study_settle", ignore_result=True)
def study_settle(org_id: int, study_id: int) -> None:
    """Emit ``ingest.completed`` once a study stops receiving instances."""
    pipeline.study_settle_check(org_id=org_id, study_id=study_id)


@shared_task(name="archive.tasks.archive_orphans_cleanup", ignore_result=True)
def archive_orphans_cleanup() -> int:
    """Beat: delete objects whose ingest stopped between the store and the index."""
    return pipeline.orphans_cleanup()
