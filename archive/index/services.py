"""Writes of the index other than the ingest pipeline (``archive.ingest.pipeline``): the access
log that every read records."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from django.db import connection, transaction
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


# --- image reads -------------------------------------------------------------------------------


def _reader_key(actor: Actor) -> str:
    if actor.token is not None:
        return f"t{actor.token.pk}"
    if actor.user is not None and actor.user.pk:
        return f"u{actor.user.pk}"
    return "l" + hashlib.sha256(actor.label.encode()).hexdigest()[:32]


def _image_read_sql() -> str:
    quote = connection.ops.quote_name
    table = quote(AccessEvent._meta.db_table)
    names = (
        "organization", "study", "series", "kind", "actor_label",
        "bytes", "instances", "reads", "window_key", "at",
    )  # fmt: skip
    fields = {f.name: f for f in AccessEvent._meta.concrete_fields}
    columns = ", ".join(quote(str(fields[name].column)) for name in names)
    return (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608 - names from the model
        "VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s, %s) "
        "ON CONFLICT (organization_id, window_key) DO UPDATE SET "
        f"bytes = {table}.bytes + excluded.bytes, "
        f"instances = {table}.instances + excluded.instances, "
        f"reads = {table}.reads + 1 "
        "RETURNING id, reads"
    )


def image_read_record(
    *,
    org: Organization,
    study: Study,
    series: Series,
    instance: Instance | None,
    kind: str,
    actor: Actor,
    bytes_read: int,
    instances: int,
    request_id: str | None = None,
) -> int:
    """Record one read of images that a viewer makes hundreds of times a minute: a frame, a
    rendered image or frame, a thumbnail, an instance's bulk data. Returns the access row's id.

    What stays exact, per request and in one transaction: ``egress.bytes`` (its usage event
    carries this request's bytes) and the bytes and instances in the access log.

    What is gathered, so that a 500-slice series read slice by slice is one line of the access
    log and not 500 (and costs one statement instead of five per slice):

    - the access log: one row per reader, series, kind and calendar minute, its ``reads``,
      ``bytes`` and ``instances`` the sums of the minute's requests (``at``: the first);
    - the audit log: the minute's first read (the row's id is in the event's details);
    - last-accessed times: the minute's first read marks the study and the series read, and
      ``instance`` is marked read unless it shows a read within ``TOUCH_RESOLUTION`` (no
      statement then). ``instance=None`` (thumbnails) marks nothing read: a thumbnail in a
      list is no sign that the images are needed (tier policies).
    """
    now = timezone.now()
    window = f"{kind}:{series.pk}:{_reader_key(actor)}:{now:%Y%m%d%H%M}"
    since = now - TOUCH_RESOLUTION
    stale = Q(last_accessed_at__isnull=True) | Q(last_accessed_at__lt=since)
    with transaction.atomic():
        # The row-level writes of this request first; the shared line last: the clients of a
        # viewer read the same series at once, and each holds the line's lock until its commit.
        if bytes_read:
            record_usage(
                org=org,
                meter="egress.bytes",
                quantity=bytes_read,
                at=now,
                idempotency_key=f"egress:{request_id or uuid.uuid4().hex}",
            )
        if instance is not None and not (
            instance.last_accessed_at is not None and instance.last_accessed_at >= since
        ):
            Instance.objects.for_org(org).filter(stale, pk=instance.pk).update(last_accessed_at=now)
        with connection.cursor() as cursor:
            cursor.execute(
                _image_read_sql(),
                [
                    org.pk,
                    study.pk,
                    series.pk,
                    kind,
                    actor.label[:255],
                    bytes_read,
                    instances,
                    window,
                    connection.ops.adapt_datetimefield_value(now),
                ],
            )
            event_id, reads = cursor.fetchone()
        if reads == 1:
            if instance is not None:
                Study.objects.for_org(org).filter(stale, pk=study.pk).update(last_accessed_at=now)
                Series.objects.for_org(org).filter(stale, pk=series.pk).update(last_accessed_at=now)
            audit_record(
                org=org,
                actor=actor,
                action=f"study.{kind}",
                target=study,
                target_label=study.study_uid,
                details={
                    "series": series.series_uid,
                    "access": event_id,
                    "bytes": bytes_read,
                    "instances": instances,
                    "gathered": "image reads of this series by this reader in this minute",
                },
            )
    return event_id
