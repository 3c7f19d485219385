"""Helpers the restore, retention and hold tests share (no tests here): a study in the index and
its objects moved to the archive tier the way a tier move leaves them."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

from django.db.models import F
from django.utils import timezone

from archive.models import Instance, Series, Study
from archive.storage import store_for
from billing.metering import storage_delta
from tenants.models import Organization
from tests.archive.test_dicomweb_support import SeededStudy, ingest_study, study


def seed_study(
    org: Organization, *, modalities: tuple[str, ...] = ("CT",), n: int = 2
) -> SeededStudy:
    return ingest_study(
        org,
        study(
            patient_id="PAT-R1",
            patient_name="Lovelace^Ada",
            study_date=dt.date(2025, 6, 1),
            modalities=modalities,
            instances_per_series=n,
        ),
    )


def study_row(org: Organization, seeded: SeededStudy) -> Study:
    return Study.objects.for_org(org).get(study_uid=seeded.uid)


def to_tier(
    instance: Instance,
    tier: str,
    *,
    s3_client: Any = None,
    bucket: str = "",
    since: dt.datetime | None = None,
) -> Instance:
    """Move one object to ``tier`` in its store and switch the index row (aggregates included).

    Filesystem: the file goes to the tier's folder; S3: an in-place copy with the tier's storage
    class (``s3_client``/``bucket`` of the location).
    """
    location = instance.location
    if location.kind == "platform":
        root = store_for(location).root  # type: ignore[attr-defined]
        source = root / instance.tier / instance.object_key
        target = root / tier / instance.object_key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    else:
        key = (
            f"{location.prefix.strip('/')}/{instance.object_key}"
            if location.prefix
            else instance.object_key
        )
        s3_client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            StorageClass=location.storage_class(tier),
            MetadataDirective="COPY",
        )
    size, old = instance.size_bytes, instance.tier
    Instance.objects.filter(pk=instance.pk).update(
        tier=tier, tier_changed_at=since or timezone.now(), restored_until=None
    )
    # The ledger follows the bytes, as a tier move's switch writes it.
    move = f"test-move:{uuid.uuid4().hex}"
    now = timezone.now()
    storage_delta(
        org=instance.organization,
        tier=old,
        delta_bytes=-size,
        at=now,
        idempotency_key=f"{move}:from",
    )
    storage_delta(
        org=instance.organization, tier=tier, delta_bytes=size, at=now, idempotency_key=f"{move}:to"
    )
    for model, pk in ((Study, instance.study_id), (Series, instance.series_id)):
        model.objects.filter(pk=pk).update(
            **{f"bytes_{old}": F(f"bytes_{old}") - size, f"bytes_{tier}": F(f"bytes_{tier}") + size}
        )
    instance.refresh_from_db()
    return instance


def archive_all(org: Organization, seeded: SeededStudy, **kwargs: Any) -> list[Instance]:
    return [
        to_tier(i, "archive", **kwargs)
        for i in Instance.objects.for_org(org).filter(study__study_uid=seeded.uid).order_by("id")
    ]
