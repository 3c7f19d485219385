"""Celery tasks of ingest jobs (portal uploads, bucket imports). Imported by ``archive.tasks`` so
that the worker's autodiscovery registers them; named ``archive.tasks.ingest_*`` so that the task
routes send them to the ``ingest`` queue.

Thin: load by id, call ``archive.jobs``. Safe to run twice and to kill at any line: the job is
claimed with a conditional UPDATE (see ``archive.jobs``).
"""

from __future__ import annotations

from celery import shared_task

from tenants.models import Organization


@shared_task(name="archive.tasks.ingest_job_run", ignore_result=True)
def ingest_job_run(org_id: int, job_id: int, handoff: str | None = None) -> None:
    """Process one bounded batch of a job; queue the next batch with the lease handed over."""
    from archive import jobs

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
    from archive import jobs

    counts = jobs.jobs_sweep()
    counts["interrupted"] = jobs.stow_jobs_close()
    return counts
