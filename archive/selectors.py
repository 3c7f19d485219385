"""Every archive read a view, API or task needs, always scoped to one organization.

An unknown id, or another organization's, raises ``tenants.errors.NotFound``: the API answers 404
and the portal turns it into its 404 page, so another tenant's object is never confirmed to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from archive.models import (
    TIERS,
    AccessEvent,
    ArchiveSettings,
    IngestFailure,
    IngestJob,
    Instance,
    Series,
    Study,
)
from billing.pricing import MeterUse, PriceSpec, marginal_cost
from tenants.errors import NotFound
from tenants.models import Organization

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


def job_list(*, org: Organization, kind: str = "", state: str = "") -> QuerySet[IngestJob]:
    jobs = IngestJob.objects.for_org(org).select_related("created_by")
    if kind:
        jobs = jobs.filter(kind=kind)
    if state:
        jobs = jobs.filter(state=state)
    return jobs.order_by("-id")


def job_get(*, org: Organization, job_id: int | str) -> IngestJob:
    try:
        return IngestJob.objects.for_org(org).select_related("created_by").get(pk=int(job_id))
    except (IngestJob.DoesNotExist, ValueError, TypeError):
        raise NotFound("Ingest job not found.") from None


def job_failures(*, org: Organization, job: IngestJob) -> QuerySet[IngestFailure]:
    return IngestFailure.objects.for_org(org).filter(job=job).order_by("-id")


@dataclass(frozen=True)
class JobProgress:
    phase: str
    phase_label: str
    finished: bool
    processed: int
    percent: int | None
    rate_bytes_per_second: int | None
    eta_seconds: int | None
    elapsed_seconds: int | None


PHASE_LABELS = {
    "receiving": "Receiving files",
    "queued": "Queued",
    "count": "Listing the bucket",
    "ingest": "Ingesting",
    "done": "Done",
    "failed": "Failed",
}


def job_phase(job: IngestJob) -> str:
    if job.state == IngestJob.State.DONE:
        return "done"
    if job.state == IngestJob.State.FAILED:
        return "failed"
    phase = str((job.params or {}).get("phase", ""))
    if job.kind == IngestJob.Kind.UPLOAD:
        if phase == "receiving":
            return "receiving"
        return "ingest" if job.state == IngestJob.State.RUNNING else "queued"
    if job.kind == IngestJob.Kind.IMPORT:
        if job.state == IngestJob.State.PENDING:
            return "queued"
        return phase if phase in ("count", "ingest") else "ingest"
    return "ingest" if job.state == IngestJob.State.RUNNING else "queued"


def job_progress(job: IngestJob, *, now: datetime | None = None) -> JobProgress:
    """Rate over the job's run so far and the time left at that rate (when the total is known)."""
    now = now or timezone.now()
    phase = job_phase(job)
    finished = job.state in (IngestJob.State.DONE, IngestJob.State.FAILED)
    processed = job.received
    percent: int | None = None
    if finished and job.state == IngestJob.State.DONE:
        percent = 100
    elif job.total_bytes and phase == "ingest":
        percent = min(99, int(job.bytes_received * 100 / job.total_bytes))
    elif job.total_files and phase == "ingest":
        percent = min(99, int(job.received * 100 / job.total_files))
    elif phase in ("receiving", "queued", "count"):
        percent = 0
    rate: int | None = None
    eta: int | None = None
    elapsed: int | None = None
    if job.started_at is not None:
        end = job.finished_at if finished and job.finished_at else now
        seconds = max((end - job.started_at).total_seconds(), 0.0)
        elapsed = int(seconds)
        if seconds >= 1 and job.bytes_received:
            rate = int(job.bytes_received / seconds)
        if not finished and rate and job.total_bytes and phase == "ingest":
            eta = max(int((job.total_bytes - job.bytes_received) / rate), 0)
    return JobProgress(
        phase=phase,
        phase_label=PHASE_LABELS.get(phase, phase.capitalize()),
        finished=finished,
        processed=processed,
        percent=percent,
        rate_bytes_per_second=rate,
        eta_seconds=eta,
        elapsed_seconds=elapsed,
    )


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
