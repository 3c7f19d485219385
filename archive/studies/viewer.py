"""The portal shows the images: a series viewer page, and the images it and the study pages
show (rendered slices, thumbnails), under ``/o/<slug>/archive/studies/<id>/...``.

The images are the DICOMweb rendered and thumbnail resources, answered by the same functions
(``archive.dicomweb.rendered.rendered_response``, ``archive.dicomweb.thumbnails.
thumbnail_response``) with the portal's session, organization and ``images.read``: each image
request is one read like any other (one access record, its bytes metered as egress, one audit
row), written by those functions; the viewer page itself reads no image and records nothing.

A series that cannot be read now (archive tier, no restored copy) shows what its restore costs
and a button to start it, instead of the viewer: a slice asked for would start that restore
without the cost being seen first. Thumbnails in the lists never start a restore: an archived
study shows a marker unless its thumbnail is kept already.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_http_methods

from archive.common.views import get_or_404
from archive.dicomweb import selectors as dicomweb_selectors
from archive.dicomweb import thumbnails
from archive.dicomweb.rendered import (
    NotRenderable,
    frame_count,
    render_problem,
    rendered_response,
)
from archive.index import selectors
from archive.models import Instance, Series, Study
from archive.restores import selectors as restore_selectors
from archive.restores import services as restore_services
from archive.storage import StorageUnavailable
from archive.studies import selectors as study_selectors
from archive.studies.views import study_series_get
from tenants.errors import ServiceError
from tenants.labels import bytes_label, duration_label, money_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

logger = logging.getLogger(__name__)

# CT windows (center, width) in Hounsfield units, as radiologists name them.
CT_PRESETS: list[tuple[str, str, int, int]] = [
    ("soft", "Soft tissue", 40, 400),
    ("lung", "Lung", -600, 1500),
    ("bone", "Bone", 400, 1800),
    ("brain", "Brain", 40, 80),
]
# A series' slices listed on the page at most: past this the page says it shows the first ones.
MAX_SLICES = 5000
# Slides (SM) are shown instance by instance through their thumbnail, at most this large.
SLIDE_VIEWPORT = thumbnails.THUMBNAIL_MAX
IMAGE_CACHE = "private, max-age=300"
WINDOW_CENTER_KEY = "00281050"
WINDOW_WIDTH_KEY = "00281051"
ROWS_KEY = "00280010"
COLUMNS_KEY = "00280011"


# --- looking objects up ------------------------------------------------------------------------


def _readable_study(ctx: PortalContext, study_id: int) -> Study:
    """The study, under DICOMweb's reading rule: a trashed one is not found."""
    study = get_or_404(selectors.study_get, org=ctx.org, study_id=study_id)
    if study.trashed_at is not None:
        raise Http404("The study is in the trash.")
    return study


def _error(exc: ServiceError) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}},
        status=exc.status,
    )


def _storage_error(exc: StorageUnavailable) -> JsonResponse:
    logger.warning("portal image: storage unavailable: %s", exc)
    return JsonResponse(
        {
            "error": {
                "code": "storage_unavailable",
                "message": "The image's storage cannot be reached right now; try again shortly.",
                "fields": {},
            }
        },
        status=503,
    )


def _image(answer: HttpResponseBase) -> HttpResponseBase:
    if answer.status_code == 200 and "Cache-Control" not in answer:
        # A rendering of an instance never changes; a browser's cache keeps it for the viewer's
        # scrolling back and forth (private: read with the member's session). Its media type
        # follows the Accept header.
        answer["Cache-Control"] = IMAGE_CACHE
        patch_vary_headers(answer, ["Accept"])
    return answer


# --- images ------------------------------------------------------------------------------------


@org_view(Perm.IMAGES_READ)
@require_GET
def instance_rendered(
    request: HttpRequest,
    ctx: PortalContext,
    study_id: int,
    series_id: int,
    instance_id: int,
    frame: int | None = None,
) -> HttpResponseBase:
    """One slice for the viewer: an instance (its first frame) or one frame, rendered with the
    request's ``window``, ``viewport`` and ``quality`` (DICOMweb's parameters)."""
    instance = get_or_404(
        study_selectors.viewer_instance,
        org=ctx.org,
        study_id=study_id,
        series_id=series_id,
        instance_id=instance_id,
    )
    try:
        return _image(
            rendered_response(
                request=request,
                org=ctx.org,
                actor=ctx.actor,
                study=instance.study,
                series=instance.series,
                instances=[instance],
                level="instance",
                frames=None if frame is None else str(frame),
            )
        )
    except ServiceError as exc:
        return _error(exc)
    except StorageUnavailable as exc:
        return _storage_error(exc)


def _marker(text: str) -> HttpResponse:
    """What a thumbnail shows when there is no image to show without a restore or at all: words
    only, never the patient's."""
    size = thumbnails.THUMBNAIL_SIZE
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}"><rect width="{size}" height="{size}" fill="#1e293b"/>'
        f'<text x="{size // 2}" y="{size // 2 + 8}" fill="#cbd5e1" font-size="22" '
        f'font-weight="600" font-family="system-ui, sans-serif" text-anchor="middle">'
        f"{escape(text)}</text></svg>"
    )
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=60"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response


def _thumbnail(
    request: HttpRequest, ctx: PortalContext, study: Study, chosen: Instance | None
) -> HttpResponseBase:
    """The thumbnail of the representative instance ``chosen`` (what the DICOMweb study or
    series thumbnail shows), unless reading it would start a restore."""
    if chosen is None:
        return _marker("No image")
    # The portal asks the default thumbnail (THUMBNAIL_SIZE square, JPEG).
    kept = study_selectors.thumbnail_kept(
        org=ctx.org, instance=chosen, size=thumbnails.THUMBNAIL_SIZE
    )
    if restore_selectors.needs_restore(chosen) and not kept:
        return _marker("Archived")
    try:
        return thumbnails.thumbnail_response(
            request=request,
            org=ctx.org,
            actor=ctx.actor,
            study=study,
            series=chosen.series,
            instance=chosen,
        )
    except NotRenderable:
        # Known only once its object is read (pixel data the index did not show as missing).
        return _marker("No image")
    except ServiceError as exc:
        return _error(exc)
    except StorageUnavailable as exc:
        return _storage_error(exc)


@org_view(Perm.IMAGES_READ)
@require_GET
def study_thumbnail(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponseBase:
    """The study list's thumbnail: its first image series' middle image."""
    study = _readable_study(ctx, study_id)
    return _thumbnail(request, ctx, study, thumbnails.study_representative(ctx.org, study))


@org_view(Perm.IMAGES_READ)
@require_GET
def series_thumbnail(
    request: HttpRequest, ctx: PortalContext, study_id: int, series_id: int
) -> HttpResponseBase:
    """The study page's thumbnail of one series: its middle image."""
    study = _readable_study(ctx, study_id)
    series = study_series_get(ctx, study, series_id)
    return _thumbnail(request, ctx, study, thumbnails.series_representative(ctx.org, series))


@org_view(Perm.IMAGES_READ)
@require_GET
def instance_thumbnail(
    request: HttpRequest, ctx: PortalContext, study_id: int, series_id: int, instance_id: int
) -> HttpResponseBase:
    """One instance's thumbnail (``viewport`` up to 512): how the viewer shows a slide."""
    instance = get_or_404(
        study_selectors.viewer_instance,
        org=ctx.org,
        study_id=study_id,
        series_id=series_id,
        instance_id=instance_id,
    )
    try:
        return thumbnails.thumbnail_response(
            request=request,
            org=ctx.org,
            actor=ctx.actor,
            study=instance.study,
            series=instance.series,
            instance=instance,
        )
    except ServiceError as exc:
        return _error(exc)
    except StorageUnavailable as exc:
        return _storage_error(exc)


# --- the viewer page ---------------------------------------------------------------------------


def _first_number(metadata: dict[str, Any], key: str) -> float | None:
    try:
        return float(metadata[key]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _metadata_int(metadata: dict[str, Any], key: str) -> int:
    value = _first_number(metadata, key)
    return int(value) if value is not None else 0


@dataclass
class Slices:
    items: list[dict[str, Any]]
    left_out: int  # instances without an image the viewer can show
    reason: str  # why, for the first of them
    truncated: bool


def _slices(ctx: PortalContext, study: Study, series: Series) -> Slices:
    """What the viewer scrolls through, in the study's order: each image instance, each frame
    of a multi-frame one; a slide's instances one by one (as their thumbnails)."""
    slide = (series.modality or "").upper() == "SM"
    items: list[dict[str, Any]] = []
    left_out, reason, truncated = 0, "", False
    instances = dicomweb_selectors.instances_of(org=ctx.org, study=study, series=series)
    args = [ctx.org.slug, study.pk, series.pk]
    for instance in instances.iterator(chunk_size=500):
        problem = render_problem(instance)
        if problem is not None:
            left_out += 1
            reason = reason or problem
            continue
        metadata = instance.metadata or {}
        own = {
            "wc": _first_number(metadata, WINDOW_CENTER_KEY),
            "ww": _first_number(metadata, WINDOW_WIDTH_KEY),
            "r": _metadata_int(metadata, ROWS_KEY),
            "c": _metadata_int(metadata, COLUMNS_KEY),
            "n": instance.instance_number,
        }
        frames = 1 if slide else frame_count(instance)
        if slide:
            url = reverse("portal-instance-thumbnail", args=[*args, instance.pk])
            items.append({"u": url, "f": 0, "slide": True, **own})
        elif frames == 1:
            url = reverse("portal-instance-rendered", args=[*args, instance.pk])
            items.append({"u": url, "f": 0, **own})
        else:
            for number in range(1, frames + 1):
                url = reverse("portal-frame-rendered", args=[*args, instance.pk, number])
                # A multi-frame object's window may differ per frame: its own, unnamed here.
                items.append({"u": url, "f": number, **own, "wc": None, "ww": None})
                if len(items) >= MAX_SLICES:
                    break
        if len(items) >= MAX_SLICES:
            truncated = True
            break
    return Slices(items[:MAX_SLICES], left_out, reason, truncated)


def _restore_context(ctx: PortalContext, need: study_selectors.SeriesRestoreNeed) -> dict[str, Any]:
    restore = need.restore
    return {
        "need": need,
        "need_size": bytes_label(need.bytes),
        "need_cost": money_label(need.price.amount, need.price.currency),
        "need_time": duration_label(need.typical_seconds),
        "open_restore": restore,
        "restore_wait": duration_label(restore_selectors.retry_after_seconds(restore))
        if restore is not None
        else None,
    }


@org_view(Perm.IMAGES_READ)
@require_http_methods(["GET", "POST"])
def series_view(
    request: HttpRequest, ctx: PortalContext, study_id: int, series_id: int
) -> HttpResponseBase:
    """GET: the viewer of one series, or, when some of its images must be restored first, what
    the restore costs and a button to start it. POST: start that restore."""
    study = _readable_study(ctx, study_id)
    series = study_series_get(ctx, study, series_id)
    need = study_selectors.series_restore_need(org=ctx.org, series=series)
    here = reverse("portal-series-view", args=[ctx.org.slug, study.pk, series.pk])
    if request.method == "POST":
        restore = restore_services.restore_for_read(
            org=ctx.org, instances=need.needing, actor=ctx.actor
        )
        if restore is None:
            messages.info(request, "Every image of this series is readable: nothing to restore.")
        else:
            messages.success(
                request,
                f"Restore {restore.pk} is bringing the series back; the viewer opens once it is "
                "ready.",
            )
        return redirect(here)
    context: dict[str, Any] = {
        "ctx": ctx,
        "active_section": "studies",
        "study": study,
        "series": series,
        "here": here,
        "download_url": reverse("portal-series-download", args=[ctx.org.slug, study.pk, series.pk]),
    }
    if need.blocked:
        context.update(_restore_context(ctx, need))
        return render(request, "archive/series_viewer.html", context)
    slices = _slices(ctx, study, series)
    modality = (series.modality or "").upper()
    presets: list[dict[str, Any]] = [{"key": "own", "label": "Image's own"}]
    if modality == "CT":
        presets += [{"key": k, "label": label, "c": c, "w": w} for k, label, c, w in CT_PRESETS]
    context.update(
        {
            "slices": slices,
            "presets": presets,
            "viewer_data": {
                "slices": slices.items,
                "presets": presets,
                "overlay": {
                    "patient": study.patient_name or "",
                    "patientId": study.patient_id or "",
                    "studyDate": study.study_date.isoformat() if study.study_date else "",
                    "series": " · ".join(
                        part
                        for part in (
                            f"Se {series.series_number}"
                            if series.series_number is not None
                            else "",
                            series.modality or "",
                            series.series_description or "",
                        )
                        if part
                    ),
                },
                "slideViewport": SLIDE_VIEWPORT,
            },
        }
    )
    return render(request, "archive/series_viewer.html", context)
