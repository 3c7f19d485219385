"""Thin archive tasks: load by id, call one service, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from archive import ingest
from archive.job_tasks import ingest_job_run, ingest_jobs_sweep  # noqa: F401  (registered here for autodiscovery)
from archive.planning_tasks import tier_policy_evaluate  # noqa: F401
from archive.replicas import tasks as replica_tasks  # noqa: F401
from archive.restores.tasks import restore_start_run, restores_poll  # noqa: F401
from archive.retention.tasks import trash_purge_due  # noqa: F401
from archive.tiering_tasks import tier_moves_dispatch, tier_moves_execute  # noqa: F401


@shared_task(ignore_result=True)
def study_settle(org_id: int, study_id: int) -> None:
    """Emit ``ingest.completed`` once a study stops receiving instances."""
    from archive.services import study_settle_check

    study_settle_check(org_id=org_id, study_id=study_id)


@shared_task(ignore_result=True)
def archive_orphans_cleanup() -> int:
    return ingest.orphans_cleanup()
