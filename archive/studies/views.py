"""Portal pages of the studies under ``/o/<slug>/archive/studies/``: the study search, a study's
page (series, tiers, restores, holds, who read it), its zip download and one series', and the
images: thumbnails, the series viewer and the slices it shows.

Thin views: a form checks the shape, a service writes (refusing with a ``ServiceError``), a
selector reads. Every id in a URL is looked up through a selector scoped to the organization in
the URL, so another tenant's id answers 404.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
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
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_http_methods, require_safe

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
from archive.index.selectors import DownloadPlan
from archive.index.services import access_record
from archive.models import (
    TIERS,
    AccessEvent,
    Instance,
    RestoreRequest,
    Series,
    Study,
)
from archive.restores import selectors as restore_selectors
from archive.restores import services as restore_services
from archive.restores.views import restore_row
from archive.retention import selectors as retention_selectors
from archive.storage import ObjectStore, StorageUnavailable, store_for
from archive.studies import selectors as study_selectors
from archive.studies import zipnames
from archive.studies.forms import StudySearchForm
from tenants.errors import ServiceError
from tenants.labels import bytes_label, duration_label, money_label, person_name_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

logger = logging.getLogger(__name__)


STUDIES_PAGE_SIZE = 50
ACCESSES_SHOWN = 50


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


def _download_entries(study: Study, instances: QuerySet[Instance]) -> Iterator[ZipEntry]:
    """The ZIP's members, named as ``archive.studies.zipnames`` lays them out."""
    stores: dict[int, ObjectStore] = {}
    folder = f"{zipnames.patient_folder(study)}/{zipnames.study_folder(study)}"
    series_folders = zipnames.SeriesFolders()
    for instance in instances.iterator(chunk_size=200):
        store = stores.get(instance.location_id)
        if store is None:
            store = stores[instance.location_id] = store_for(instance.location)
        series_name = series_folders.name(instance.series)
        number = f"{instance.instance_number:05d}-" if instance.instance_number is not None else ""
        file_name = f"{number}{zipnames.zip_name_part(instance.sop_instance_uid)}.dcm"
        yield ZipEntry(
            name=f"{folder}/{series_name}/{file_name}",
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


@dataclass(frozen=True)
class _Download:
    """A study's or one series' zip download: what it contains and where its pages are."""

    study: Study
    series: Series | None
    plan: DownloadPlan
    instances: QuerySet[Instance]  # what the zip streams, in its order
    filename: str
    url: str

    def archived(self, ctx: PortalContext) -> list[Instance]:
        qs = Instance.objects.for_org(ctx.org).filter(study=self.study, tier="archive")
        if self.series is not None:
            qs = qs.filter(series=self.series)
        return list(qs.order_by("id"))


def _respond_download(request: HttpRequest, ctx: PortalContext, d: _Download) -> HttpResponseBase:
    """GET: what the download contains and what its egress costs. POST: the zip itself, and a
    restore of the archived images it cannot contain yet (all archived: the restore alone)."""
    plan, study = d.plan, d.study
    restore = None
    if request.method == "POST" and plan.blocked_instances:
        # Start (or find) the restore of the archived images that have no readable copy.
        restore = restore_services.restore_for_read(
            org=ctx.org, instances=d.archived(ctx), actor=ctx.actor
        )
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
            series=d.series,
            kind=AccessEvent.Kind.DOWNLOAD,
            actor=ctx.actor,
            bytes_read=plan.bytes,
            instances=plan.instances,
        )
        response = StreamingHttpResponse(
            _logged(zip_stream(_download_entries(study, d.instances)), study.pk),
            content_type="application/zip",
        )
        response["Content-Disposition"] = f'attachment; filename="{d.filename}"'
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
        "series": d.series,
        "download_url": d.url,
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


def _readable_study(ctx: PortalContext, study_id: int) -> Study:
    """The study, under DICOMweb's reading rule: one in the trash is not found (404)."""
    study = get_or_404(selectors.study_get, org=ctx.org, study_id=study_id)
    if study.trashed_at is not None:
        raise Http404("The study is in the trash.")
    return study


def _date_part(study: Study) -> str:
    return f"-{study.study_date:%Y%m%d}" if study.study_date else ""


@org_view(Perm.IMAGES_READ)
@require_http_methods(["GET", "POST"])
def study_download(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponseBase:
    """The study as a zip: the confirmation (GET), then the zip (POST)."""
    study = _readable_study(ctx, study_id)
    return _respond_download(
        request,
        ctx,
        _Download(
            study=study,
            series=None,
            plan=selectors.study_download_plan(org=ctx.org, study=study),
            instances=selectors.study_download_instances(org=ctx.org, study=study),
            filename=f"study-{study.pk}{_date_part(study)}.zip",
            url=reverse("portal-study-download", args=[ctx.org.slug, study.pk]),
        ),
    )


def study_series_get(ctx: PortalContext, study: Study, series_id: int) -> Series:
    """One series of ``study`` (another study's or organization's: 404)."""
    series = get_or_404(selectors.series_get, org=ctx.org, series_id=series_id)
    if series.study_id != study.pk:
        raise Http404("Series not found.")
    series.study = study
    return series


@org_view(Perm.IMAGES_READ)
@require_http_methods(["GET", "POST"])
def series_download(
    request: HttpRequest, ctx: PortalContext, study_id: int, series_id: int
) -> HttpResponseBase:
    """One series as a zip, under the study download's rules: confirmation, then the zip."""
    study = _readable_study(ctx, study_id)
    series = study_series_get(ctx, study, series_id)
    number = f"{series.series_number:03d}" if series.series_number is not None else f"id{series.pk}"
    return _respond_download(
        request,
        ctx,
        _Download(
            study=study,
            series=series,
            plan=study_selectors.series_download_plan(org=ctx.org, study=study, series=series),
            instances=study_selectors.series_download_instances(
                org=ctx.org, study=study, series=series
            ),
            filename=f"study-{study.pk}{_date_part(study)}-series-{number}.zip",
            url=reverse("portal-series-download", args=[ctx.org.slug, study.pk, series.pk]),
        ),
    )


# --- images: thumbnails, the series viewer and its slices --------------------------------------
#
# The images are the DICOMweb rendered and thumbnail resources, answered by the same functions
# (``archive.dicomweb.rendered.rendered_response``, ``archive.dicomweb.thumbnails.
# thumbnail_response``) with the portal's session, organization and ``images.read``: each image
# request is one read like any other (one access record, its bytes metered as egress, one audit
# row), written by those functions; the viewer page itself reads no image and records nothing.
#
# A series that cannot be read now (archive tier, no restored copy) shows what its restore costs
# and a button to start it, instead of the viewer: a slice asked for would start that restore
# without the cost being seen first. Thumbnails in the lists never start a restore: an archived
# study shows a marker unless its thumbnail is kept already.

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
    if restore_selectors.needs_restore(chosen) and not study_selectors.thumbnail_kept(
        org=ctx.org, instance=chosen, size=thumbnails.THUMBNAIL_SIZE
    ):
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
    """The attribute's first value as a finite number, else None (the index holds what the
    sender sent: text, NaN, infinities would break the page's JSON)."""
    try:
        value = float(metadata[key]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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
                    "patient": person_name_label(study.patient_name),
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
