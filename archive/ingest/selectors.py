"""Reads of ingest jobs: lists, one job, its failures, and the progress the portal and the API show
(phase, counts, rate, time left).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from archive.models import (
    IngestFailure,
    IngestJob,
)
from tenants.errors import NotFound
from tenants.models import Organization

PHASE_LABELS = {
    "receiving": "Receiving files",
    "queued": "Queued",
    "count": "Listing the bucket",
    "ingest": "Ingesting",
    "done": "Done",
    "failed": "Failed",
}


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


def job_source_label(job: IngestJob) -> str:
    """Where a job's files came from, for the jobs table whose first column already names the
    kind: an upload by whom and how many files ("Portal upload" twice said nothing), an import
    its bucket, a STOW-RS or C-STORE job its client."""
    if job.kind == IngestJob.Kind.UPLOAD:
        who = job.created_by.email if job.created_by is not None else "a removed user"
        files = job.total_files or 0
        return f"{files:,} file{'' if files == 1 else 's'} from {who}"
    source = job.source.strip()
    return source if source and source != job.get_kind_display() else "—"


def job_failures(*, org: Organization, job: IngestJob) -> QuerySet[IngestFailure]:
    return IngestFailure.objects.for_org(org).filter(job=job).order_by("-id")


@dataclass(frozen=True)
class JobProgress:
    phase: str
    phase_label: str
    badge: str  # the badge's style: the phase, or "warning" for a job done with failures
    finished: bool
    processed: int
    percent: int | None
    rate_bytes_per_second: int | None
    eta_seconds: int | None
    elapsed_seconds: int | None


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
    label, badge = PHASE_LABELS.get(phase, phase.capitalize()), phase
    if phase == "done" and job.failed:
        # "Done" alone reads as "all stored"; the files that failed are the ones to look at.
        label = f"Done with {job.failed:,} failure{'' if job.failed == 1 else 's'}"
        badge = "warning"
    return JobProgress(
        phase=phase,
        phase_label=label,
        badge=badge,
        finished=finished,
        processed=processed,
        percent=percent,
        rate_bytes_per_second=rate,
        eta_seconds=eta,
        elapsed_seconds=elapsed,
    )
