"""Index rows for policy tests, written directly (the engine only reads the index); no tests here."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

from archive.locations.selectors import location_primary
from archive.models import Instance, Series, Study
from tenants.models import Organization

NOW = datetime(2025, 6, 16, 0, 0, tzinfo=UTC)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
GIB = 2**30

_seq = itertools.count(1)


def make_study(
    org: Organization,
    *,
    modalities: str = "CT",
    study_date: date | None = None,
    description: str = "",
    birth_date: date | None = None,
    created_at: datetime | None = None,
    last_accessed_at: datetime | None = None,
    **extra: Any,
) -> Study:
    n = next(_seq)
    return Study.objects.create(
        organization=org,
        study_uid=f"1.2.3.{n}",
        modalities="\\" + "\\".join(modalities.split(",")) + "\\",
        study_date=study_date,
        study_description=description,
        patient_birth_date=birth_date,
        created_at=created_at or NOW - timedelta(days=1000),
        last_accessed_at=last_accessed_at,
        **extra,
    )


def make_instance(
    org: Organization,
    study: Study | None = None,
    *,
    modality: str = "CT",
    sop_class: str = CT_IMAGE,
    tier: str = "hot",
    size: int = 1000,
    received_days_ago: float = 1000,
    accessed_days_ago: float | None = None,
    tier_changed_days_ago: float | None = None,
    **study_kwargs: Any,
) -> Instance:
    if study is None:
        study = make_study(org, modalities=modality, **study_kwargs)
    n = next(_seq)
    series = Series.objects.create(
        organization=org, study=study, series_uid=f"1.2.4.{n}", modality=modality
    )
    instance = Instance.objects.create(
        organization=org,
        study=study,
        series=series,
        sop_instance_uid=f"1.2.5.{n}",
        sop_class_uid=sop_class,
        size_bytes=size,
        sha256="0" * 64,
        location=location_primary(org),
        object_key=f"k/{n}",
        tier=tier,
        received_at=NOW - timedelta(days=received_days_ago),
        last_accessed_at=(
            None if accessed_days_ago is None else NOW - timedelta(days=accessed_days_ago)
        ),
        tier_changed_at=(
            None if tier_changed_days_ago is None else NOW - timedelta(days=tier_changed_days_ago)
        ),
    )
    Study.objects.filter(pk=study.pk).update(
        total_bytes=study.total_bytes + size,
        **{f"bytes_{tier}": getattr(study, f"bytes_{tier}") + size},
    )
    study.refresh_from_db()
    return instance


def move(tier: str, **conditions: Any) -> dict[str, Any]:
    return {"conditions": conditions, "action": {"type": "move", "tier": tier}}


def delete(after_days: int, **conditions: Any) -> dict[str, Any]:
    return {"conditions": conditions, "action": {"type": "delete", "after_days": after_days}}
