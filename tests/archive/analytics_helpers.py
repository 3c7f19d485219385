"""Index rows written directly (no bytes), for the analytics and simulator tests: known sizes,
dates and tiers make hand-computed expectations possible."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta

from archive.locations.selectors import location_primary
from archive.models import AccessEvent, Instance, Series, Study
from tenants.models import Organization

_counter = itertools.count(1)


def add_study(
    org: Organization,
    *,
    study_date: date | None,
    received: datetime,
    series: list[tuple[str, int, int]],
    tier: str = "hot",
    last_accessed_at: datetime | None = None,
    tier_changed_at: datetime | None = None,
    description: str = "",
    birth_date: date | None = None,
    patient_id: str = "",
) -> Study:
    """A study with ``series`` = [(modality, instances, bytes per instance)] of ``patient_id``."""
    n = next(_counter)
    location = location_primary(org)
    total = sum(count * size for _, count, size in series)
    modalities = "\\" + "".join(f"{m}\\" for m in dict.fromkeys(m for m, _, _ in series))
    study = Study.objects.create(
        organization=org,
        study_uid=f"1.2.3.{org.pk}.{n}",
        study_date=study_date,
        study_description=description,
        patient_birth_date=birth_date,
        patient_id=patient_id,
        modalities=modalities,
        series_count=len(series),
        instance_count=sum(c for _, c, _ in series),
        total_bytes=total,
        **{f"bytes_{tier}": total},
        created_at=received,
    )
    for k, (modality, count, size) in enumerate(series):
        se = Series.objects.create(
            organization=org,
            study=study,
            series_uid=f"1.2.3.{org.pk}.{n}.{k}",
            modality=modality,
            instance_count=count,
            total_bytes=count * size,
            **{f"bytes_{tier}": count * size},
            created_at=received,
        )
        Instance.objects.bulk_create(
            [
                Instance(
                    organization=org,
                    study=study,
                    series=se,
                    sop_instance_uid=f"1.2.3.{org.pk}.{n}.{k}.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    size_bytes=size,
                    sha256="0" * 64,
                    location=location,
                    object_key=f"k/{n}/{k}/{i}",
                    tier=tier,
                    received_at=received,
                    tier_changed_at=tier_changed_at,
                    last_accessed_at=last_accessed_at,
                )
                for i in range(count)
            ]
        )
    return study


def read(org: Organization, study: Study, at: datetime, kind: str = "retrieve") -> AccessEvent:
    return AccessEvent.objects.create(
        organization=org, study=study, kind=kind, at=at, bytes=study.total_bytes
    )


def days_before(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)
