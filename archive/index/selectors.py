"""Every archive read a view, API or task needs, always scoped to one organization.

An unknown id, or another organization's, raises ``tenants.errors.NotFound``: the API answers 404
and the portal turns it into its 404 page, so another tenant's object is never confirmed to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import cast

from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from archive.models import (
    TIERS,
    AccessEvent,
    ArchiveSettings,
    FrameIndex,
    Instance,
    Series,
    StorageLocation,
    Study,
)
from billing.pricing import MeterUse, PriceSpec, marginal_cost
from tenants.errors import NotFound
from tenants.models import Organization
from tenants.rows import Join, columns

EGRESS_METER = "egress.bytes"

# --- studies, series, instances ----------------------------------------------------------------


def study_list(
    *,
    org: Organization,
    patient: str = "",
    accession: str = "",
    modality: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[Study]:
    """Studies matching every given filter, newest study date first (undated ones last).

    ``patient`` matches part of the patient name (any order of case) or the start of the patient
    ID; ``modality`` matches one modality exactly (CT does not match CTA).
    """
    # Trashed studies are out of every search until they are taken out of the trash.
    studies = Study.objects.for_org(org).filter(trashed_at__isnull=True)
    patient = (patient or "").strip()
    if patient:
        studies = studies.filter(
            Q(patient_name__icontains=patient) | Q(patient_id__istartswith=patient)
        )
    accession = (accession or "").strip()
    if accession:
        studies = studies.filter(accession_number__iexact=accession)
    modality = (modality or "").strip().upper()
    if modality:
        studies = studies.filter(modalities__contains=f"\\{modality}\\")
    if date_from is not None:
        studies = studies.filter(study_date__gte=date_from)
    if date_to is not None:
        studies = studies.filter(study_date__lte=date_to)
    return studies.order_by(F("study_date").desc(nulls_last=True), "-id")


def study_get(*, org: Organization, study_id: int | str) -> Study:
    try:
        return Study.objects.for_org(org).get(pk=int(study_id))
    except (Study.DoesNotExist, ValueError, TypeError):
        raise NotFound("Study not found.") from None


def series_list(*, org: Organization, study: Study) -> QuerySet[Series]:
    return (
        Series.objects.for_org(org)
        .filter(study=study)
        .order_by(F("series_number").asc(nulls_last=True), "id")
    )


def series_get(*, org: Organization, series_id: int | str) -> Series:
    try:
        return Series.objects.for_org(org).select_related("study").get(pk=int(series_id))
    except (Series.DoesNotExist, ValueError, TypeError):
        raise NotFound("Series not found.") from None


def instance_list(*, org: Organization, series: Series) -> QuerySet[Instance]:
    return Instance.objects.for_org(org).filter(series=series).order_by("instance_number", "id")


def instance_get(*, org: Organization, instance_id: int | str) -> Instance:
    try:
        return Instance.objects.for_org(org).get(pk=int(instance_id))
    except (Instance.DoesNotExist, ValueError, TypeError):
        raise NotFound("Instance not found.") from None


# The frame request's look-up, written out once: the ORM spends ten times the query's own time
# compiling a select_related of five tables (about 1.5 ms of a frame request's CPU).
_BY_UIDS = Join(
    [
        (Instance, "i", columns(Instance)),
        (Study, "st", columns(Study, ("metadata",))),
        (Series, "se", columns(Series, ("metadata",))),
        (StorageLocation, "l", columns(StorageLocation)),
        (FrameIndex, "f", columns(FrameIndex, ("boundaries",))),
    ]
)


def _by_uids_sql() -> str:
    table = _BY_UIDS.table
    return (
        f"SELECT {_BY_UIDS.select()} FROM {table(Instance)} i "  # noqa: S608 - names from the models
        f"JOIN {table(Study)} st ON st.id = i.study_id "
        f"JOIN {table(Series)} se ON se.id = i.series_id "
        f"JOIN {table(StorageLocation)} l ON l.id = i.location_id "
        f"LEFT JOIN {table(FrameIndex)} f ON f.instance_id = i.id "
        "WHERE i.organization_id = %s AND i.sop_instance_uid = %s AND se.series_uid = %s "
        "AND st.study_uid = %s AND st.trashed_at IS NULL LIMIT 1"
    )


def instance_by_uids(
    *, org: Organization, study_uid: str, series_uid: str, sop_uid: str
) -> Instance | None:
    """The instance the three UIDs name together (its study not in the trash), with its study,
    series, location and frame index (without the study's and series' DICOM JSON and the frame
    boundaries) in one query; None when they name none, and the caller finds out which of them
    is unknown.

    Precondition: the UIDs are checked (``archive.ingest.dicom.uid_problem``)."""
    with connection.cursor() as cursor:
        cursor.execute(_by_uids_sql(), [org.pk, sop_uid, series_uid, study_uid])
        row = cursor.fetchone()
    if row is None:
        return None
    instance, study, series, location, frame_index = _BY_UIDS.load(row)
    instance = cast(Instance, instance)
    instance.study = cast(Study, study)
    instance.series = cast(Series, series)
    instance.location = cast(StorageLocation, location)
    Instance.frame_index.related.set_cached_value(instance, frame_index)
    return instance


def study_accesses(*, org: Organization, study: Study) -> QuerySet[AccessEvent]:
    return AccessEvent.objects.for_org(org).filter(study=study).select_related("series")


def tiers_of(obj: Study | Series) -> list[str]:
    """The tiers an object's bytes are in, hottest first."""
    return [tier for tier in TIERS if getattr(obj, f"bytes_{tier}", 0)]


# --- downloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadPlan:
    """What a study download would contain. Archive-tier instances need a restore first."""

    instances: int
    bytes: int
    blocked_instances: int
    blocked_bytes: int

    @property
    def possible(self) -> bool:
        return self.instances > 0


def _unreadable(now: datetime) -> Q:
    # Archive-tier objects are readable only while a restored copy exists.
    return Q(tier="archive") & (Q(restored_until__isnull=True) | Q(restored_until__lte=now))


def study_download_plan(*, org: Organization, study: Study) -> DownloadPlan:
    blocked_q = _unreadable(timezone.now())
    totals = (
        Instance.objects.for_org(org)
        .filter(study=study)
        .aggregate(
            n=Count("id"),
            size=Sum("size_bytes"),
            blocked=Count("id", filter=blocked_q),
            blocked_size=Sum("size_bytes", filter=blocked_q),
        )
    )
    blocked, blocked_size = int(totals["blocked"] or 0), int(totals["blocked_size"] or 0)
    return DownloadPlan(
        instances=int(totals["n"] or 0) - blocked,
        bytes=int(totals["size"] or 0) - blocked_size,
        blocked_instances=blocked,
        blocked_bytes=blocked_size,
    )


def study_download_instances(*, org: Organization, study: Study) -> QuerySet[Instance]:
    """The instances a study download streams, in a stable order (series, then instance number)."""
    return (
        Instance.objects.for_org(org)
        .filter(study=study)
        .exclude(_unreadable(timezone.now()))
        .select_related("series", "location")
        .order_by("series__series_number", "series_id", "instance_number", "id")
    )


@dataclass(frozen=True)
class EgressEstimate:
    """The expected charge for reading ``bytes`` out now, on the organization's current plan.

    ``amount`` is None when the plan does not price egress. It is the marginal charge as the
    invoice will price it: this month's egress so far (as rolled up) counts towards allowances
    and tiers, after a plan change only the new plan's part of the month with its share of them.
    """

    bytes: int
    amount: Decimal | None
    currency: str
    plan_name: str
    rate: str
    included_gib: Decimal


def egress_estimate(*, org: Organization, bytes_out: int) -> EgressEstimate:
    quote = marginal_cost(org=org, at=timezone.now(), uses=[MeterUse(EGRESS_METER, bytes_out)])
    [cost] = quote.costs
    if cost.spec is None:
        return EgressEstimate(bytes_out, None, quote.currency, quote.plan_name, "", Decimal(0))
    return EgressEstimate(
        bytes=bytes_out,
        amount=cost.amount,
        currency=quote.currency,
        plan_name=quote.plan_name,
        rate=_rate_note(cost.spec, quote.currency),
        included_gib=cost.spec.included,
    )


def _rate_note(spec: PriceSpec, currency: str) -> str:
    """The plan's egress price in a few words: "0.09 USD per GiB", "from 0.09 USD per GiB"."""
    if spec.model == "per_unit":
        return f"{spec.unit_price.normalize():f} {currency} per GiB"
    if spec.model == "package":
        return (
            f"{spec.package_price.normalize():f} {currency} per "
            f"{spec.package_size.normalize():f} GiB"
        )
    if spec.tiers:
        return f"from {spec.tiers[0][1].normalize():f} {currency} per GiB"
    return ""


# --- ingest jobs -------------------------------------------------------------------------------


def org_has_instances(*, org: Organization) -> bool:
    return Instance.objects.for_org(org).exists()


def bytes_by_tier(*, org: Organization) -> dict[str, int]:
    """Stored bytes per tier: the sum of the studies' per-tier aggregates."""
    totals = Study.objects.for_org(org).aggregate(**{tier: Sum(f"bytes_{tier}") for tier in TIERS})
    return {tier: int(totals[tier] or 0) for tier in TIERS}


def archive_settings_get(*, org: Organization | int) -> ArchiveSettings:
    """The organization's settings (``org`` or its id); when none were stored, an unsaved row
    with the model's defaults, so that no caller branches on None.

    The one way to read them: a change goes through ``archive_settings_update`` or, for the
    active policy, ``policies.policy_save``/``policy_activate`` (they lock the stored row).
    """
    stored = ArchiveSettings.objects.for_org(org).select_related("active_policy").first()
    if stored is not None:
        return stored
    if isinstance(org, Organization):
        return ArchiveSettings(organization=org)
    return ArchiveSettings(organization_id=org)


def archive_settings_org_ids_with_policy() -> list[int]:
    """Ids of the active organizations whose settings name an active policy. A read across
    organizations, for the policy engine's beat only: it fans out one task per id."""
    return list(
        ArchiveSettings.objects.filter(
            active_policy__isnull=False, organization__status=Organization.Status.ACTIVE
        ).values_list("organization_id", flat=True)
    )
