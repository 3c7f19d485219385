"""Celery tasks of the disaster-recovery replica. Imported by ``archive.tasks`` so that the
worker's autodiscovery registers them; named ``archive.tasks.replica_*`` (the names they had
before this package existed) so that queued messages, the beat schedule and the task routes,
which send them to the ``tiering`` queue, keep finding them.

Thin: load by id, call ``archive.replicas.services``. Safe to run twice and to kill at any line:
rows are claimed with a conditional UPDATE and a lease (see ``archive.replicas``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import shared_task

from archive.replicas import selectors, services
from tenants.models import Organization

logger = logging.getLogger(__name__)


@shared_task(name="archive.tasks.replica_copy", ignore_result=True)
def replica_copy(org_id: int, replica_ids: list[int], reserved_until: str | None = None) -> None:
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        return
    token = datetime.fromisoformat(reserved_until) if reserved_until else None
    services.replica_copy(org=org, replica_ids=list(replica_ids), reserved_until=token)


@shared_task(name="archive.tasks.replica_tick", ignore_result=True)
def replica_tick() -> dict[str, int]:
    """Beat, every minute: per organization with a replica, insert pending rows for new
    instances and hand a bounded number of them to the workers."""
    synced = dispatched = 0
    for org in Organization.objects.filter(
        pk__in=selectors.replica_org_ids(), status=Organization.Status.ACTIVE
    ):
        synced += services.replicas_sync(org=org)
        token, batches = services.replicas_dispatch(org=org)
        for batch in batches:
            replica_copy.apply_async((org.pk, batch, token.isoformat()))
            dispatched += len(batch)
    if synced or dispatched:
        logger.info("replica tick: %s rows synced, %s dispatched", synced, dispatched)
    return {"synced": synced, "dispatched": dispatched}
