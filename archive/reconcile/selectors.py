"""Reads of the consistency check's results (``Reconciliation``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max, QuerySet

from archive.models import Reconciliation
from tenants.errors import NotFound
from tenants.models import Organization


def reconciliation_list(*, org: Organization) -> QuerySet[Reconciliation]:
    return Reconciliation.objects.for_org(org).order_by("-started_at", "-id")


def reconciliation_get(*, org: Organization, reconciliation_id: int) -> Reconciliation:
    """Another organization's run answers NotFound like a missing one."""
    run = Reconciliation.objects.for_org(org).filter(pk=reconciliation_id).first()
    if run is None:
        raise NotFound("Reconciliation not found.")
    return run


@dataclass(frozen=True)
class OrgStanding:
    """An organization's latest finished check, for the platform staff's overview."""

    organization: Organization
    run: Reconciliation


def latest_per_organization(*, only_problems: bool = False) -> list[OrgStanding]:
    """Every organization's latest finished run (platform staff only: not tenant-scoped), those
    with differences or a failed check first; ``only_problems`` keeps just those."""
    finished = Reconciliation.objects.exclude(state=Reconciliation.State.RUNNING)
    latest_ids = (
        finished.values("organization_id").annotate(last=Max("id")).values_list("last", flat=True)
    )
    runs = Reconciliation.objects.filter(pk__in=list(latest_ids)).select_related("organization")
    if only_problems:
        runs = runs.exclude(state=Reconciliation.State.OK)
    ordered = sorted(
        runs,
        key=lambda r: (
            r.state == Reconciliation.State.OK,
            -r.difference_count,
            r.organization.slug,
        ),
    )
    return [OrgStanding(organization=r.organization, run=r) for r in ordered]
