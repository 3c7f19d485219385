"""Writes of the index other than the ingest pipeline (``archive.ingest.pipeline``): the access
log that every read records."""

from __future__ import annotations

import logging
import uuid

from django.db import transaction
from django.utils import timezone

from archive.models import AccessEvent, Instance, Series, Study
from billing.metering import record_usage
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)


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
