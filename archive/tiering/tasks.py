"""Celery tasks of tiering: the policy engine's evaluation and the tier moves' dispatch and
execution. Imported by ``archive.tasks`` so that the worker's autodiscovery registers them; named
``archive.tasks.tier_*`` so that the task routes send them to the ``tiering`` queue and queued
messages and the beat schedule survive a deploy.

Thin: load the organization, call ``archive.tiering.planning`` or ``archive.tiering.moves``. Safe
to run twice and to kill at any line: an instance never gets a second open move, a trashed study
is not trashed again, moves are claimed with a conditional UPDATE and every step is idempotent.
The services queue these tasks through deferred imports: this module imports them.
"""

from __future__ import annotations

from celery import shared_task

from archive.index.selectors import archive_settings_org_ids_with_policy
from archive.tiering import moves, planning
from tenants.models import Organization


@shared_task(name="archive.tasks.tier_policy_evaluate", ignore_result=True)
def tier_policy_evaluate(org_id: int | None = None) -> dict[str, int]:
    """Beat (no ``org_id``): one evaluation per organization with an active policy.
    With ``org_id``: plan one batch of moves and trash one batch of studies; re-queue while a
    batch was full.
    """
    if org_id is None:
        org_ids = archive_settings_org_ids_with_policy()
        for pk in org_ids:
            tier_policy_evaluate.apply_async((pk,))
        return {"organizations": len(org_ids)}
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return {"planned": 0, "trashed": 0}
    planned = planning.moves_plan(org=org, limit=planning.DEFAULT_BATCH)
    trashed = planning.studies_trash_due(org=org, limit=planning.TRASH_BATCH)
    if planned >= planning.DEFAULT_BATCH or trashed >= planning.TRASH_BATCH:
        tier_policy_evaluate.apply_async((org_id,))
    return {"planned": planned, "trashed": trashed}


@shared_task(name="archive.tasks.tier_moves_execute", ignore_result=True)
def tier_moves_execute(org_id: int, move_ids: list[int]) -> dict[str, int]:
    """Run a batch of one organization's moves (ids handed out by the dispatcher)."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return {}
    result = moves.moves_execute(org=org, move_ids=move_ids)
    return {"claimed": result.claimed, "done": result.done, "failed": result.failed}


@shared_task(name="archive.tasks.tier_moves_dispatch", ignore_result=True)
def tier_moves_dispatch() -> dict[int, int]:
    """Beat, every minute: hand planned moves to the workers at each organization's rate."""
    return moves.moves_dispatch()
