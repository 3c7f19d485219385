"""Writes of the index other than the ingest pipeline (``archive.ingest.pipeline``): the access
log that every read records."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from archive.models import AccessEvent, Instance, Series, Study
from billing.metering import record_usage
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

# Last-accessed times are written at most once per row in this time (``access_record``).
TOUCH_RESOLUTION = timedelta(minutes=1)


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
    instances_read: Sequence[Instance] | None = None,
) -> AccessEvent:
    """Record a read of PHI: the access log, last-accessed times, ``egress.bytes`` and the audit log.

    One transaction; call it once per request (WADO-RS retrieve or metadata, portal download)
    after the bytes were sent or as they start, with the bytes the response carries.
    ``instances_read``: the instances read (as loaded by the request), when it read some of the
    series or study only (a frame): only theirs are marked read.

    Last-accessed times have a resolution of ``TOUCH_RESOLUTION``: a row read again within it
    is not written again, and no statement is sent for the rows passed in that show it. A viewer
    reads a series frame by frame, hundreds of requests a minute on one study: each would
    otherwise rewrite (and lock, until its commit) the same study, series and instance rows,
    one request after the other. Tier policies count in days.
    """
    now = timezone.now()
    since = now - TOUCH_RESOLUTION
    stale = Q(last_accessed_at__isnull=True) | Q(last_accessed_at__lt=since)

    def touched(row: Study | Series | Instance) -> bool:
        return row.last_accessed_at is not None and row.last_accessed_at >= since

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
        if not touched(study):
            Study.objects.for_org(org).filter(stale, pk=study.pk).update(last_accessed_at=now)
        instance_filter = Instance.objects.for_org(org).filter(stale, study=study)
        if series is not None:
            if not touched(series):
                Series.objects.for_org(org).filter(stale, pk=series.pk).update(last_accessed_at=now)
            instance_filter = instance_filter.filter(series=series)
        else:
            Series.objects.for_org(org).filter(stale, study=study).update(last_accessed_at=now)
        read: list[int] | None = None
        if instances_read is not None:
            read = [i.pk for i in instances_read if not touched(i)]
            instance_filter = instance_filter.filter(pk__in=read)
        if kind != AccessEvent.Kind.METADATA and read != []:
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
