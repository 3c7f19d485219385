"""The index reads DICOMweb needs, each scoped to one organization.

A UID of another organization answers exactly like a UID that does not exist: ``NotFound``, and
so does a path segment that is no UID at all (``archive.ingest.dicom.uid_problem``): it names nothing
here, and is never sent to the database (a NUL character would fail the query there).
"""

from __future__ import annotations

from django.db.models import QuerySet

from archive.ingest.dicom import uid_problem
from archive.models import Instance, Series, Study
from tenants.errors import NotFound
from tenants.models import Organization


def _shown(uid: str) -> str:
    """A UID from the URL as an error message may quote it: cut, control characters escaped."""
    return uid[:64].encode("unicode_escape").decode("ascii")


def study_get(*, org: Organization, study_uid: str) -> Study:
    # A trashed study answers like one that does not exist (it is restorable from the portal).
    study = (
        Study.objects.for_org(org).filter(study_uid=study_uid, trashed_at__isnull=True).first()
        if uid_problem(study_uid) is None
        else None
    )
    if study is None:
        raise NotFound(f"Study {_shown(study_uid)} not found.", code="study_not_found")
    return study


def series_get(*, org: Organization, study: Study, series_uid: str) -> Series:
    series = (
        Series.objects.for_org(org).filter(study=study, series_uid=series_uid).first()
        if uid_problem(series_uid) is None
        else None
    )
    if series is None:
        raise NotFound(
            f"Series {_shown(series_uid)} not found in study {study.study_uid}.",
            code="series_not_found",
        )
    return series


def instance_get(*, org: Organization, series: Series, sop_uid: str) -> Instance:
    instance = (
        Instance.objects.for_org(org)
        .filter(series=series, sop_instance_uid=sop_uid)
        .select_related("location")
        .first()
        if uid_problem(sop_uid) is None
        else None
    )
    if instance is None:
        raise NotFound(
            f"Instance {_shown(sop_uid)} not found in series {series.series_uid}.",
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
