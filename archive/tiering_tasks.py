"""Celery tasks of tier moves. Imported by ``archive.tasks`` so that the worker's autodiscovery
registers them; named ``archive.tasks.tier_*`` so that the task routes send them to the
``tiering`` queue.

Thin: load the organization, call ``archive.tiering``. Safe to run twice and to kill at any line:
moves are claimed with a conditional UPDATE and every step is idempotent.
"""

from __future__ import annotations

from celery import shared_task

from tenants.models import Organization


@shared_task(name="archive.tasks.tier_moves_execute", ignore_result=True)
def tier_moves_execute(org_id: int, move_ids: list[int]) -> dict[str, int]:
    """Run a batch of one organization's moves (ids handed out by the dispatcher)."""
    from archive import tiering

    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return {}
    result = tiering.moves_execute(org=org, move_ids=move_ids)
    return {"claimed": result.claimed, "done": result.done, "failed": result.failed}


@shared_task(name="archive.tasks.tier_moves_dispatch", ignore_result=True)
def tier_moves_dispatch() -> dict[int, int]:
    """Beat, every minute: hand planned moves to the workers at each organization's rate."""
    from archive import tiering

    return tiering.moves_dispatch()
