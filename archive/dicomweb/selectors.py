"""The index reads DICOMweb needs, each scoped to one organization.

A UID of another organization answers exactly like a UID that does not exist: ``NotFound``.
"""

from __future__ import annotations

from django.db.models import QuerySet

from archive.models import Instance, Series, Study
from tenants.errors import NotFound
from tenants.models import Organization


def study_get(*, org: Organization, study_uid: str) -> Study:
    # A trashed study answers like one that does not exist (it is restorable from the portal).
    study = Study.objects.for_org(org).filter(study_uid=study_uid, trashed_at__isnull=True).first()
    if study is None:
        raise NotFound(f"Study {study_uid[:64]} not found.", code="study_not_found")
    return study


def series_get(*, org: Organization, study: Study, series_uid: str) -> Series:
    series = Series.objects.for_org(org).filter(study=study, series_uid=series_uid).first()
    if series is None:
        raise NotFound(
            f"Series {series_uid[:64]} not found in study {study.study_uid}.",
            code="series_not_found",
        )
    return series


def instance_get(*, org: Organization, series: Series, sop_uid: str) -> Instance:
    instance = (
        Instance.objects.for_org(org)
        .filter(series=series, sop_instance_uid=sop_uid)
        .select_related("location")
        .first()
    )
    if instance is None:
        raise NotFound(
            f"Instance {sop_uid[:64]} not found in series {series.series_uid}.",
            code="instance_not_found",
        )
    return instance


def instances_of(
    *, org: Organization, study: Study, series: Series | None = None
) -> QuerySet[Instance]:
    """A study's (or one series') instances in a stable order: series, then instance number."""
    qs = Instance.objects.for_org(org).filter(study=study)
    if series is not None:
        qs = qs.filter(series=series)
    return qs.order_by("series__series_number", "series_id", "instance_number", "id")
