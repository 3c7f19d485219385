"""Celery tasks of the policy engine. Imported by ``archive.tasks`` for autodiscovery.

Routed to the ``tiering`` queue (``archive.tasks.tier_*``). Each run plans one bounded batch per
organization and queues the next run while batches come back full; running twice at once is
safe (an instance never gets a second open move, a trashed study is not trashed again).
"""

from __future__ import annotations

from celery import shared_task

from archive.index.selectors import archive_settings_org_ids_with_policy
from tenants.models import Organization


@shared_task(name="archive.tasks.tier_policy_evaluate", ignore_result=True)
def tier_policy_evaluate(org_id: int | None = None) -> dict[str, int]:
    """Beat (no ``org_id``): one evaluation per organization with an active policy.

    With ``org_id``: plan one batch of moves and trash one batch of studies; re-queue while a
    batch was full.
    """
    from archive import planning

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
