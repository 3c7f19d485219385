"""Archive writes other than the ingest pipeline itself (see archive/ingest.py)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from archive.models import AccessEvent, Instance, Series, Study
from billing.metering import record_usage
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record, webhook_event_emit

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
        # Still receiving: look again once the settle time after the last instance has passed.
        # (Inline task execution, a debugging mode, would spin instead of waiting: skip it there.)
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            from archive.tasks import study_settle

            wait = (study.updated_at - quiet_since).total_seconds()
            study_settle.apply_async((org.pk, study.pk), countdown=max(wait, 1.0))
        return False
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


def access_record(
    *,
    org: Organization,
    study: Study,
    kind: str,
    actor: Actor,
    bytes_read: int,
    instances: int,
    series: Series | None = None,
    request_id: str | None = None,
) -> AccessEvent:
    """Record a read of PHI: the access log, last-accessed times, ``egress.bytes`` and the audit log.

    One transaction; call it once per request (WADO-RS retrieve or metadata, portal download)
    after the bytes were sent or as they start, with the bytes the response carries.
    """
    now = timezone.now()
    with transaction.atomic():
        event = AccessEvent.objects.create(
            organization=org,
            study=study,
            series=series,
            kind=kind,
            actor_label=actor.label[:255],
            bytes=bytes_read,
            instances=instances,
            at=now,
        )
        Study.objects.for_org(org).filter(pk=study.pk).update(last_accessed_at=now)
        instance_filter = Instance.objects.for_org(org).filter(study=study)
        if series is not None:
            Series.objects.for_org(org).filter(pk=series.pk).update(last_accessed_at=now)
            instance_filter = instance_filter.filter(series=series)
        else:
            Series.objects.for_org(org).filter(study=study).update(last_accessed_at=now)
        if kind != AccessEvent.Kind.METADATA:
            instance_filter.update(last_accessed_at=now)
        if bytes_read:
            record_usage(
                org=org,
                meter="egress.bytes",
                quantity=bytes_read,
                at=now,
                idempotency_key=f"egress:{request_id or uuid.uuid4().hex}:{event.pk}",
            )
        audit_record(
            org=org,
            actor=actor,
            action=f"study.{kind}",
            target=study,
            target_label=study.study_uid,
            details={
                "series": series.series_uid if series else None,
                "bytes": bytes_read,
                "instances": instances,
            },
        )
    return event
