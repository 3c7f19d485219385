"""Archive writes other than the ingest pipeline itself (see archive/ingest.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from archive.models import Study
from tenants.models import Organization
from tenants.services import webhook_event_emit

logger = logging.getLogger(__name__)


def study_settle_check(*, org_id: int, study_id: int) -> bool:
    """Send ``ingest.completed`` for a study that received nothing for ARCHIVE_SETTLE_SECONDS.

    Claimed with a conditional UPDATE on ``notified_at``, so two checks send one event.
    """
    from django.conf import settings

    org = Organization.objects.get(pk=org_id)
    study = Study.objects.for_org(org).filter(pk=study_id).first()
    if study is None:
        return False
    quiet_since = timezone.now() - timedelta(seconds=settings.ARCHIVE_SETTLE_SECONDS)
    if study.updated_at > quiet_since:
        return False  # still receiving; the later instance's check will send it
    with transaction.atomic():
        claimed = (
            Study.objects.for_org(org)
            .filter(pk=study.pk, updated_at=study.updated_at)
            .exclude(notified_at__gte=study.updated_at)
            .update(notified_at=timezone.now())
        )
        if not claimed:
            return False
        webhook_event_emit(
            org=org,
            event_type="ingest.completed",
            payload={
                "study_instance_uid": study.study_uid,
                "series": study.series_count,
                "instances": study.instance_count,
                "bytes": study.total_bytes,
                "modalities": study.modality_list,
            },
        )
    return True
