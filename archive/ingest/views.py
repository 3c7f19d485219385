"""Portal pages of ingest under ``/o/<slug>/archive/ingest/``: the Ingest page (upload, bucket import,
recent jobs, how to connect over DICOMweb; DICOM's listener, AE titles and destinations are on
the DICOM connections page, ``archive.dimse.views``), a job's page and its progress, and the JSON
endpoints of the resumable upload (``archive.js``). Another organization's job id answers 404.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from archive.common.views import get_or_404
from archive.ingest import jobs, selectors
from archive.ingest.forms import ImportForm
from archive.models import (
    IngestJob,
)
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error
from tenants.labels import bytes_label, duration_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

JOBS_SHOWN = 20


FAILURES_SHOWN = 200


def job_payload(job: IngestJob) -> dict[str, Any]:
    """The progress figures ``archive.js`` shows, formatted here so the script stays small."""
    progress = selectors.job_progress(job)
    return {
        "id": job.pk,
        "kind": job.kind,
        "state": job.state,
        "phase": progress.phase,
        "phase_label": progress.phase_label,
        "badge": progress.badge,
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
        {"job": job, "p": job_payload(job), "source": selectors.job_source_label(job)}
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
        "can_see_connections": ctx.can(Perm.IMAGES_READ),
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
