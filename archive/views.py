"""Portal pages of the archive under ``/o/<slug>/archive/``: studies (search, detail, zip
download) and ingest (upload, bucket import, job progress, connection details, AE titles). Storage
(locations, connection tests, quota) is ``archive.locations.views``.

Thin views: a form checks the shape, a service writes (refusing with a ``ServiceError``), a
selector reads. Every id in a URL is looked up through a selector scoped to the organization in
the URL, so another tenant's id answers 404. The upload endpoints answer JSON for ``archive.js``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from archive import jobs, selectors
from archive.common.views import get_or_404
from archive.dimse import selectors as ae_selectors
from archive.forms import ImportForm, StudySearchForm
from archive.models import (
    TIERS,
    AccessEvent,
    IngestJob,
    Instance,
    RestoreRequest,
    Study,
)
from archive.restores import selectors as restore_selectors
from archive.restores import services as restore_services
from archive.restores.views import restore_row
from archive.retention import selectors as retention_selectors
from archive.services import access_record
from archive.storage import ObjectStore, StorageUnavailable, store_for
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error
from tenants.labels import bytes_label, duration_label, money_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

logger = logging.getLogger(__name__)


STUDIES_PAGE_SIZE = 50
JOBS_SHOWN = 20
FAILURES_SHOWN = 200
ACCESSES_SHOWN = 50
DEFAULT_SCP_HOST = "localhost"
DEFAULT_SCP_PORT = 11112


# --- studies -----------------------------------------------------------------------------------


@org_view(Perm.IMAGES_READ)
@require_safe
def studies(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    params = request.GET.copy()
    params.pop("page", None)
    form = StudySearchForm(params or None)
    context: dict[str, Any] = {"ctx": ctx, "active_section": "studies", "form": form}
    if form.is_bound and not form.is_valid():
        context["page"] = None
        return render(request, "archive/studies.html", context, status=400)
    filters = form.filters() if form.is_bound else {}
    page = Paginator(selectors.study_list(org=ctx.org, **filters), STUDIES_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    context["page"] = page
    context["rows"] = [
        {"study": s, "size": bytes_label(s.total_bytes), "tiers": selectors.tiers_of(s)}
        for s in page.object_list
    ]
    context["filtered"] = form.is_bound and any(filters.values())
    return render(request, "archive/studies.html", context)


def _tier_rows(obj: object) -> list[dict[str, Any]]:
    return [
        {"tier": tier, "bytes": bytes_label(getattr(obj, f"bytes_{tier}"))}
        for tier in TIERS
        if getattr(obj, f"bytes_{tier}")
    ]


def _restore_rows(ctx: PortalContext, study: Study) -> list[dict[str, Any]]:
    return [restore_row(r) for r in restore_selectors.study_restores(org=ctx.org, study=study)[:5]]


@org_view(Perm.IMAGES_READ)
@require_safe
def study_detail(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponse:
    study = get_or_404(selectors.study_get, org=ctx.org, study_id=study_id)
    series = [
        {"series": s, "size": bytes_label(s.total_bytes), "tiers": _tier_rows(s)}
        for s in selectors.series_list(org=ctx.org, study=study)
    ]
    accesses = [
        {"event": e, "bytes": bytes_label(e.bytes) if e.bytes else "—"}
        for e in selectors.study_accesses(org=ctx.org, study=study)[:ACCESSES_SHOWN]
    ]
    plan = selectors.study_download_plan(org=ctx.org, study=study)
    holds = list(retention_selectors.study_holds(org=ctx.org, study=study))
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "study": study,
        "size": bytes_label(study.total_bytes),
        "tiers": _tier_rows(study),
        "series_rows": series,
        "accesses": accesses,
        "plan": plan,
        "blocked_size": bytes_label(plan.blocked_bytes),
        "restore_state": restore_selectors.study_restore_state(org=ctx.org, study=study),
        "restore_rows": _restore_rows(ctx, study),
        "active_hold": next((h for h in holds if h.lifted_at is None), None),
        "holds": holds,
        "can_hold": ctx.can(Perm.HOLDS_MANAGE),
        "can_trash": ctx.can(Perm.POLICIES_MANAGE),
        "purge_due": study.purge_after is not None and study.purge_after <= timezone.now(),
    }
    return render(request, "archive/study_detail.html", context)


class _ZipSink:
    """A write-only, unseekable file: ``zipfile`` then writes each member's sizes and CRC in a
    data descriptor after its bytes and never seeks back, so the zip can be sent as it is made."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    @property
    def pending(self) -> int:
        # Not __len__: zipfile tests ``not self.fp`` for "closed", and an empty buffer is falsy.
        return len(self._buffer)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


@dataclass(frozen=True)
class ZipEntry:
    name: str
    size: int
    modified: dt.datetime
    chunks: Callable[[], Iterable[bytes]]


FLUSH_BYTES = 256 * 1024


def zip_stream(entries: Iterable[ZipEntry]) -> Iterator[bytes]:
    """A zip (stored, not compressed: DICOM pixel data rarely shrinks) produced piece by piece.

    Memory stays at one storage chunk plus ``FLUSH_BYTES`` whatever the total; members of 4 GiB
    and more, and archives past 4 GiB or 65,535 members, get ZIP64 records. A member whose bytes
    do not add up to its indexed size aborts the stream (the client sees a broken download rather
    than a silently wrong file).
    """
    sink = _ZipSink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for entry in entries:
            modified = max(
                entry.modified.astimezone(dt.UTC), dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
            )
            info = zipfile.ZipInfo(entry.name, date_time=modified.timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = entry.size  # decides whether the member needs ZIP64
            info.external_attr = 0o644 << 16
            written = 0
            with zf.open(info, mode="w") as member:
                for chunk in entry.chunks():
                    member.write(chunk)
                    written += len(chunk)
                    if sink.pending >= FLUSH_BYTES:
                        yield sink.take()
            if written != entry.size:
                raise StorageUnavailable(
                    f"{entry.name}: read {written} bytes, the index says {entry.size}."
                )
            yield sink.take()
    yield sink.take()


# PS3.5 9.1: digits and dots, at most 64 characters. Only such a UID names a ZIP entry as it is.
_ZIP_SAFE_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_ZIP_SAFE_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")


def zip_name_part(uid: str) -> str:
    """A UID as a ZIP entry name's folder or file name: as it is when it follows the DICOM UID
    grammar, else ``uid-`` and a hash of it. Index rows written before UIDs were validated may
    hold anything; a name made of them must never carry ``/``, ``\\``, ``..`` or a NUL, which an
    unzip tool would take for a path out of the folder it extracts to."""
    if len(uid) <= 64 and _ZIP_SAFE_UID.fullmatch(uid):
        return uid
    return "uid-" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _download_entries(ctx: PortalContext, study: Study) -> Iterator[ZipEntry]:
    stores: dict[int, ObjectStore] = {}
    folder = zip_name_part(study.study_uid)
    for instance in selectors.study_download_instances(org=ctx.org, study=study).iterator(
        chunk_size=200
    ):
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        series = instance.series
        series_name = "-".join(
            part
            for part in (
                f"{series.series_number:03d}" if series.series_number is not None else "",
                series.modality if _ZIP_SAFE_MODALITY.fullmatch(series.modality or "") else "",
                zip_name_part(series.series_uid),
            )
            if part
        )
        number = f"{instance.instance_number:05d}-" if instance.instance_number is not None else ""
        yield ZipEntry(
            name=f"{folder}/{series_name}/{number}{zip_name_part(instance.sop_instance_uid)}.dcm",
            size=instance.size_bytes,
            modified=instance.received_at,
            chunks=_reader(store, instance),
        )


def _reader(store: ObjectStore, instance: Instance) -> Callable[[], Iterable[bytes]]:
    return lambda: store.iter_bytes(key=instance.object_key, tier=instance.tier)


def _logged(stream: Iterator[bytes], study_id: int) -> Iterator[bytes]:
    try:
        yield from stream
    except Exception:
        # Headers are out: all that is left is to cut the stream, which the browser reports.
        logger.exception("study download %s aborted", study_id)
        raise


def _restore_blocked(ctx: PortalContext, study: Study) -> RestoreRequest | None:
    """Start (or find) the restore of a study's archived images that have no readable copy."""
    archived = list(
        Instance.objects.for_org(ctx.org).filter(study=study, tier="archive").order_by("id")
    )
    return restore_services.restore_for_read(org=ctx.org, instances=archived, actor=ctx.actor)


@org_view(Perm.IMAGES_READ)
@require_http_methods(["GET", "POST"])
def study_download(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponseBase:
    """GET: what the download contains and what its egress costs. POST: the zip itself, and a
    restore of the archived images it cannot contain yet (all archived: the restore alone)."""
    study = get_or_404(selectors.study_get, org=ctx.org, study_id=study_id)
    if study.trashed_at is not None:
        raise Http404("The study is in the trash.")
    plan = selectors.study_download_plan(org=ctx.org, study=study)
    restore = None
    if request.method == "POST" and plan.blocked_instances:
        restore = _restore_blocked(ctx, study)
    if request.method == "POST" and plan.possible:
        if restore is not None:
            messages.info(
                request,
                f"Restore {restore.pk} is bringing back the {plan.blocked_instances} archived "
                "image(s) left out of the ZIP; download again once it is ready.",
            )
        access_record(
            org=ctx.org,
            study=study,
            kind=AccessEvent.Kind.DOWNLOAD,
            actor=ctx.actor,
            bytes_read=plan.bytes,
            instances=plan.instances,
        )
        response = StreamingHttpResponse(
            _logged(zip_stream(_download_entries(ctx, study)), study.pk),
            content_type="application/zip",
        )
        date = f"-{study.study_date:%Y%m%d}" if study.study_date else ""
        response["Content-Disposition"] = f'attachment; filename="study-{study.pk}{date}.zip"'
        add_never_cache_headers(response)
        return response
    if restore is None:
        restore = (
            restore_selectors.study_restores(org=ctx.org, study=study)
            .filter(state=RestoreRequest.State.IN_PROGRESS)
            .first()
        )
    estimate = selectors.egress_estimate(org=ctx.org, bytes_out=plan.bytes)
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "study": study,
        "plan": plan,
        "size": bytes_label(plan.bytes),
        "blocked_size": bytes_label(plan.blocked_bytes),
        "estimate": estimate,
        "cost": money_label(estimate.amount, estimate.currency),
        "restore": restore,
        "restore_wait": duration_label(restore_selectors.retry_after_seconds(restore))
        if restore is not None
        else None,
    }
    status = 200
    if request.method == "POST":
        # Nothing readable yet: the restore the POST started is the answer (202).
        status = 202 if restore is not None else 409
    return render(request, "archive/study_download.html", context, status=status)


# --- ingest ------------------------------------------------------------------------------------


def job_payload(job: IngestJob) -> dict[str, Any]:
    """The progress figures ``archive.js`` shows, formatted here so the script stays small."""
    progress = selectors.job_progress(job)
    return {
        "id": job.pk,
        "kind": job.kind,
        "state": job.state,
        "phase": progress.phase,
        "phase_label": progress.phase_label,
        "finished": progress.finished,
        "percent": progress.percent,
        "total_files": job.total_files,
        "total_bytes": job.total_bytes,
        "received": job.received,
        "stored": job.stored,
        "duplicate": job.duplicate,
        "failed": job.failed,
        "bytes_received": job.bytes_received,
        "bytes_stored": job.bytes_stored,
        "rate_bytes_per_second": progress.rate_bytes_per_second,
        "eta_seconds": progress.eta_seconds,
        "error": job.error,
        "labels": {
            "bytes_received": bytes_label(job.bytes_received),
            "bytes_stored": bytes_label(job.bytes_stored),
            "total_bytes": bytes_label(job.total_bytes) if job.total_bytes else "—",
            "rate": f"{bytes_label(progress.rate_bytes_per_second)}/s"
            if progress.rate_bytes_per_second
            else "—",
            "eta": duration_label(progress.eta_seconds),
            "elapsed": duration_label(progress.elapsed_seconds),
        },
    }


def _job_rows(ctx: PortalContext) -> list[dict[str, Any]]:
    return [
        {"job": job, "p": job_payload(job)}
        for job in selectors.job_list(org=ctx.org)[:JOBS_SHOWN]
        if job.kind in (IngestJob.Kind.UPLOAD, IngestJob.Kind.IMPORT) or job.received
    ]


@org_view(Perm.IMAGES_WRITE)
@require_safe
def ingest_page(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    context = {
        "ctx": ctx,
        "active_section": "ingest",
        "jobs": _job_rows(ctx),
        "stow_url": f"{settings.SITE_URL}/dicomweb/studies",
        "dicomweb_url": f"{settings.SITE_URL}/dicomweb",
        "scp_host": getattr(settings, "DICOM_SCP_HOST", DEFAULT_SCP_HOST),
        "scp_port": getattr(settings, "DICOM_SCP_PORT", DEFAULT_SCP_PORT),
        "aes": list(ae_selectors.ae_list(org=ctx.org)),
        "can_manage_aes": ctx.can(Perm.STORAGE_MANAGE),
        "can_manage_tokens": ctx.can(Perm.TOKENS_MANAGE),
        "max_chunk": jobs.MAX_CHUNK_BYTES,
    }
    return render(request, "archive/ingest.html", context)


def _json_error(exc: ServiceError) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}},
        status=exc.status,
    )


def _job_urls(ctx: PortalContext, job: IngestJob) -> dict[str, str]:
    args = [ctx.org.slug, job.pk]
    return {
        "upload_url": reverse("portal-ingest-upload-chunk", args=args),
        "finish_url": reverse("portal-ingest-upload-finish", args=args),
        "progress_url": reverse("portal-ingest-job-progress", args=args),
        "job_url": reverse("portal-ingest-job", args=args),
    }


@org_view(Perm.IMAGES_WRITE)
@require_POST
def upload_create(request: HttpRequest, ctx: PortalContext) -> JsonResponse:
    job = jobs.upload_job_create(org=ctx.org, actor=ctx.actor)
    return JsonResponse({"id": job.pk, **_job_urls(ctx, job)}, status=201)


def _int_param(request: HttpRequest, name: str) -> int:
    try:
        return int(request.GET.get(name, ""))
    except ValueError:
        return -1


@org_view(Perm.IMAGES_WRITE)
@require_POST
def upload_chunk(request: HttpRequest, ctx: PortalContext, job_id: int) -> JsonResponse:
    """One slice of one file, as the raw request body (application/octet-stream), streamed to
    the job's folder. Query: ``upload`` (the file's id), ``name``, ``offset``, ``size``, ``final``."""
    job = get_or_404(selectors.job_get, org=ctx.org, job_id=job_id)
    try:
        result = jobs.upload_chunk_append(
            org=ctx.org,
            job=job,
            upload_id=request.GET.get("upload", ""),
            name=request.GET.get("name", ""),
            offset=_int_param(request, "offset"),
            size=_int_param(request, "size"),
            final=request.GET.get("final") == "1",
            # The WSGI input, read 1 MiB at a time: the body is never held in memory.
            stream=request,  # type: ignore[arg-type]
            length=_content_length(request),
        )
    except ServiceError as exc:
        return _json_error(exc)
    return JsonResponse(
        {"upload": result.upload_id, "received": result.received, "complete": result.complete}
    )


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return -1


@org_view(Perm.IMAGES_WRITE)
@require_POST
def upload_finish(request: HttpRequest, ctx: PortalContext, job_id: int) -> JsonResponse:
    job = get_or_404(selectors.job_get, org=ctx.org, job_id=job_id)
    try:
        job = jobs.upload_job_finish(org=ctx.org, job=job, actor=ctx.actor)
    except ServiceError as exc:
        return _json_error(exc)
    job.refresh_from_db()
    return JsonResponse({**job_payload(job), **_job_urls(ctx, job)})


@org_view(Perm.IMAGES_WRITE)
@require_safe
def job_detail(request: HttpRequest, ctx: PortalContext, job_id: int) -> HttpResponse:
    job = get_or_404(selectors.job_get, org=ctx.org, job_id=job_id)
    failures = [
        {"failure": f, "code": f"{f.reason_code:#06x}"}
        for f in selectors.job_failures(org=ctx.org, job=job)[:FAILURES_SHOWN]
    ]
    context = {
        "ctx": ctx,
        "active_section": "ingest",
        "job": job,
        "p": job_payload(job),
        "failures": failures,
        "failures_shown": FAILURES_SHOWN,
        "failures_listed": settings.INGEST_MAX_FAILURE_ROWS,
        "progress_url": reverse("portal-ingest-job-progress", args=[ctx.org.slug, job.pk]),
    }
    return render(request, "archive/job_detail.html", context)


@org_view(Perm.IMAGES_WRITE)
@require_safe
def job_progress(request: HttpRequest, ctx: PortalContext, job_id: int) -> JsonResponse:
    job = get_or_404(selectors.job_get, org=ctx.org, job_id=job_id)
    response = JsonResponse(job_payload(job))
    add_never_cache_headers(response)
    return response


@org_view(Perm.IMAGES_WRITE)
@require_http_methods(["GET", "POST"])
def import_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = ImportForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                job = jobs.import_job_create(org=ctx.org, data=form.to_input(), actor=ctx.actor)
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(request, f"Import from {job.source} queued.")
                return redirect("portal-ingest-job", ctx.org.slug, job.pk)
    context = {"ctx": ctx, "active_section": "ingest", "form": form}
    response = render(request, "archive/import_form.html", context, status=status)
    add_never_cache_headers(response)
    return response
