"""Portal pages of the studies under ``/o/<slug>/archive/studies/``: the study search, a study's
page (series, tiers, restores, holds, who read it) and its zip download.

Thin views: a form checks the shape, a service writes (refusing with a ``ServiceError``), a
selector reads. Every id in a URL is looked up through a selector scoped to the organization in
the URL, so another tenant's id answers 404.
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

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_safe

from archive.common.views import get_or_404
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
from archive.studies.forms import StudySearchForm
from tenants.labels import bytes_label, duration_label, money_label
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


def _download_entries(study: Study, instances: QuerySet[Instance]) -> Iterator[ZipEntry]:
    stores: dict[int, ObjectStore] = {}
    folder = zip_name_part(study.study_uid)
    for instance in instances.iterator(chunk_size=200):
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


def _downloadable_study(ctx: PortalContext, study_id: int) -> Study:
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
    study = _downloadable_study(ctx, study_id)
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
    study = _downloadable_study(ctx, study_id)
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


# --- ingest ------------------------------------------------------------------------------------
