"""Reads of retention: the trash and legal holds of an organization. Writes are in
``archive.retention.services``."""

from __future__ import annotations

from django.db.models import QuerySet

from archive.models import LegalHold, Study
from tenants.errors import NotFound
from tenants.models import Organization


def trash_list(*, org: Organization) -> QuerySet[Study]:
    """Studies in the trash, the next to be purged first."""
    return Study.objects.for_org(org).filter(trashed_at__isnull=False).order_by("purge_after", "id")


def trashed_study_get(*, org: Organization, study_id: int | str) -> Study:
    try:
        return Study.objects.for_org(org).get(pk=int(study_id), trashed_at__isnull=False)
    except (Study.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such study in the trash.", code="not_in_trash") from None


def hold_list(*, org: Organization, active: bool | None = None) -> QuerySet[LegalHold]:
    qs = LegalHold.objects.for_org(org).select_related("study")
    if active is True:
        qs = qs.filter(lifted_at__isnull=True)
    elif active is False:
        qs = qs.filter(lifted_at__isnull=False)
    return qs.order_by("-id")


def hold_get(*, org: Organization, hold_id: int | str) -> LegalHold:
    try:
        return LegalHold.objects.for_org(org).select_related("study").get(pk=int(hold_id))
    except (LegalHold.DoesNotExist, ValueError, TypeError):
        raise NotFound("Legal hold not found.", code="hold_not_found") from None


def study_holds(*, org: Organization, study: Study) -> QuerySet[LegalHold]:
    return LegalHold.objects.for_org(org).filter(study=study).order_by("-id")
