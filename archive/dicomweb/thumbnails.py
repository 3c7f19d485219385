"""WADO-RS thumbnails (PS3.18 10.4.1.1.4, 10.4.3.3.4) and the derived objects that cache them.

``/studies/{study}/thumbnail``, ``.../series/{series}/thumbnail``, ``.../instances/{sop}/thumbnail``
and ``.../instances/{sop}/frames/{n}/thumbnail``: one small image of a representative frame,
``image/jpeg`` by default (``image/png``, ``image/gif`` by Accept or ``accept``), fitted into
128 x 128 pixels or the ``viewport=vw,vh`` asked for (at most 512 each); the frame rendered as
``/rendered`` renders it by default (the image's own window, rescale, MONOCHROME1 inverted),
without any annotation: a thumbnail carries no patient information.

The representative frame: of a study, its first series' (by series number) that has an image;
of a series, the middle one of its image instances ordered by Instance Number, a slide's label
and overview images (which show the slide's label, patient data) left out; of a multi-frame
instance, its middle frame. A slide (modality SM) is shown by its THUMBNAIL image, else by its
level with the fewest frames; a tiled image (TILED_FULL) of at most 64 tiles is shown whole, its
tiles decoded one at a time and scaled into place; a larger one by its middle tile (one ranged
read).

The first request renders the thumbnail and keeps it as a derived object (``DerivedObject``):
``org-<id>/derived/thumbnails/...`` in the organization's primary location, hot tier, recorded
in the storage ledger under its own meter, ``storage.derived``, in the same transaction as its
row: stored bytes like any other, never the hospital's images (no instance, no study bytes, no
quota). Later requests read it back without decoding anything. A thumbnail of an instance that
is purged, of a trashed study, or whose location is removed is deleted by the beat job
``archive.tasks.derived_objects_sweep`` (bytes first, then the row and a negative ledger delta).

Reading rules as WADO-RS: another organization's UIDs answer 404; an instance that has to be
rendered from the archive tier answers 503 with Retry-After and starts the restore (a thumbnail
already kept is served: it lives in the hot tier); ``image_read_record`` runs once per request
with the bytes sent, as kind ``thumbnail``, and leaves the images' last-read times alone.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from PIL import Image

from archive.dicomweb.rendered import (
    COLUMNS_KEY,
    GIF,
    JPEG,
    NUMBER_OF_FRAMES_KEY,
    PNG,
    NotRenderable,
    RenderOptions,
    Target,
    encode,
    fitted_size,
    frame_count,
    frame_read,
    metadata_int,
    negotiate,
    parameter_error,
    parse_viewport,
    render,
    render_problem,
    render_target,
    single_parameter,
)
from archive.dicomweb.wado import (
    JsonPathText,
    RestorePending,
    require_readable,
    restore_pending_response,
)
from archive.index.services import image_read_record
from archive.ingest.dicom import ROWS_KEY
from archive.locations.selectors import location_primary
from archive.models import AccessEvent, DerivedObject, Instance, PendingObject, Series, Study
from archive.storage import ObjectStore, StorageUnavailable, store_for
from billing.metering import storage_delta
from tenants.context import Actor
from tenants.models import Organization

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 128
THUMBNAIL_MAX = 512
THUMBNAIL_QUALITY = 85
# billing's meter of derived objects (billing.meters.DERIVED_STORAGE; archive imports only
# billing's metering and pricing APIs).
DERIVED_STORAGE = "storage.derived"
IMAGE_TYPE_KEY = "00080008"
DIMENSION_ORGANIZATION_TYPE_KEY = "00209311"
TOTAL_COLUMNS_KEY = "00480006"
TOTAL_ROWS_KEY = "00480007"
# A tiled image of at most this many tiles is shown whole; a larger one by its middle tile.
MAX_SLIDE_TILES = 64
# Slide images that show the slide's label (patient identification): never a thumbnail.
_LABEL_TYPES = ("LABEL", "OVERVIEW")
_EXTENSIONS = {JPEG: "jpg", PNG: "png", GIF: "gif"}
# Rendering parameters a thumbnail does not take (it is the server's choice of a rendering).
_NOT_FOR_THUMBNAILS = ("window", "quality", "annotation")
SWEEP_BATCH = 500


# --- what the thumbnail shows ---------------------------------------------------------------


def _image_candidates(org: Organization, series: Series) -> list[int]:
    """Ids of the series' instances that have an image a thumbnail may show, by Instance
    Number (instances without one last). A slide's series (a pyramid of the same slide at
    several resolutions): its THUMBNAIL image if it has one, else its levels from the one with
    the fewest frames (the whole slide at the lowest resolution) up."""
    rows = list(
        Instance.objects.for_org(org)
        .filter(series=series)
        .annotate(
            pixel_rows=JsonPathText("metadata", ROWS_KEY),
            image_type=JsonPathText("metadata", IMAGE_TYPE_KEY, "Value"),
            frames=JsonPathText("metadata", NUMBER_OF_FRAMES_KEY, "Value", 0),
        )
        .filter(pixel_rows__isnull=False)
        .order_by(F("instance_number").asc(nulls_last=True), "id")
        .values_list("pk", "image_type", "frames")
    )
    shown = [
        (pk, str(image_type or "").upper(), frames)
        for pk, image_type, frames in rows
        if not any(word in str(image_type or "").upper() for word in _LABEL_TYPES)
    ]
    if series.modality.upper() != "SM":
        return [pk for pk, _, _ in shown]
    thumbnails = [pk for pk, image_type, _ in shown if "THUMBNAIL" in image_type]
    levels = sorted(shown, key=lambda row: _frames_of(row[2]))
    return thumbnails or [pk for pk, _, _ in levels]


def _frames_of(value: object) -> int:
    try:
        return max(int(str(value)), 1)
    except ValueError:
        return 1


def _loaded(org: Organization, pk: int) -> Instance:
    return Instance.objects.for_org(org).select_related("location", "series").get(pk=pk)


def _shows_no_label(instance: Instance) -> bool:
    value = (instance.metadata or {}).get(IMAGE_TYPE_KEY, {}).get("Value") or []
    return not any(word in str(v).upper() for v in value for word in _LABEL_TYPES)


def series_representative(org: Organization, series: Series) -> Instance | None:
    """The middle image instance of the series that can be rendered (a slide's: its thumbnail
    image or lowest resolution), or None.

    Most series are images only: their middle instance is found by its position alone (an
    indexed query, no instance's metadata read); only when that one cannot be shown, and for
    slides, are the candidates sorted out from every instance's metadata.
    """
    if series.modality.upper() != "SM" and series.instance_count:
        middle = (series.instance_count - 1) // 2
        found = list(
            Instance.objects.for_org(org)
            .filter(series=series)
            .select_related("location", "series")
            .order_by(F("instance_number").asc(nulls_last=True), "id")[middle : middle + 1]
        )
        if found and render_problem(found[0]) is None and _shows_no_label(found[0]):
            return found[0]
    candidates = _image_candidates(org, series)
    if not candidates:
        return None
    # The middle first, then outwards: an instance that cannot be rendered is passed over.
    middle = (len(candidates) - 1) // 2 if series.modality.upper() != "SM" else 0
    order = sorted(range(len(candidates)), key=lambda i: (abs(i - middle), i))
    for position in order[:16]:
        instance = _loaded(org, candidates[position])
        if render_problem(instance) is None:
            return instance
    return None


def study_representative(org: Organization, study: Study) -> Instance | None:
    """The representative instance of the study's first series that has one."""
    series_list = (
        Series.objects.for_org(org)
        .filter(study=study)
        .order_by(F("series_number").asc(nulls_last=True), "id")
    )
    for series in series_list:
        instance = series_representative(org, series)
        if instance is not None:
            return instance
    return None


def middle_frame(instance: Instance) -> int:
    return (frame_count(instance) + 1) // 2


@dataclass(frozen=True)
class TileGrid:
    """How the frames of a tiled image (TILED_FULL, PS3.3 C.7.6.17.3) cover its total pixel
    matrix: row by row, ``across`` x ``down`` tiles of ``tile_columns`` x ``tile_rows``."""

    across: int
    down: int
    tile_columns: int
    tile_rows: int
    columns: int
    rows: int


def tile_grid(instance: Instance) -> TileGrid | None:
    """The tiles of a tiled image small enough to show whole (at most ``MAX_SLIDE_TILES``:
    a slide's lowest levels), or None."""
    metadata = instance.metadata or {}
    organization = metadata.get(DIMENSION_ORGANIZATION_TYPE_KEY, {}).get("Value") or [""]
    if str(organization[0]).strip().upper() != "TILED_FULL":
        return None
    columns = metadata_int(metadata, TOTAL_COLUMNS_KEY, 0)
    rows = metadata_int(metadata, TOTAL_ROWS_KEY, 0)
    tile_columns = metadata_int(metadata, COLUMNS_KEY, 0)
    tile_rows = metadata_int(metadata, ROWS_KEY, 0)
    if min(columns, rows, tile_columns, tile_rows) <= 0:
        return None
    across, down = -(-columns // tile_columns), -(-rows // tile_rows)
    if not 1 < across * down <= min(MAX_SLIDE_TILES, frame_count(instance)):
        return None
    return TileGrid(across, down, tile_columns, tile_rows, columns, rows)


def render_tiles(instance: Instance, grid: TileGrid, options: RenderOptions) -> bytes:
    """The whole tiled image, fitted into the viewport: each tile decoded, rendered and scaled
    into its place, one at a time (memory: the thumbnail and one tile)."""
    assert options.viewport is not None
    width, height = fitted_size(
        grid.columns, grid.rows, options.viewport.width, options.viewport.height
    )
    scale = width / grid.columns
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    plain = RenderOptions(media_type=options.media_type)
    for position in range(grid.across * grid.down):
        x0 = position % grid.across * grid.tile_columns
        y0 = position // grid.across * grid.tile_rows
        x1, y1 = min(x0 + grid.tile_columns, grid.columns), min(y0 + grid.tile_rows, grid.rows)
        box = (round(x0 * scale), round(y0 * scale), round(x1 * scale), round(y1 * scale))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        tile = render(frame_read(instance, position + 1), plain).convert("RGB")
        tile = tile.crop((0, 0, x1 - x0, y1 - y0))
        canvas.paste(
            tile.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BILINEAR), box[:2]
        )
    return encode(canvas, options.media_type, options.quality)


# --- derived objects --------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def derived_key(org: Organization, instance: Instance, extension: str) -> str:
    """``org-<id>/derived/thumbnails/<study>/<instance>-<nonce>.<ext>``: digests of the UIDs and
    a nonce new for every attempt, so that two requests never write one key."""
    return (
        f"org-{org.pk}/derived/thumbnails/{_digest(instance.study.study_uid)}/"
        f"{_digest(instance.sop_instance_uid)}-{uuid.uuid4().hex[:16]}.{extension}"
    )


def derived_store(
    *, org: Organization, instance: Instance, variant: str, data: bytes, media_type: str
) -> DerivedObject | None:
    """Keep ``data`` as the thumbnail ``variant`` of ``instance``: stored and verified in the
    primary location's hot tier, then its row and its ledger delta (``storage.derived``) in one
    transaction. None when it could not be kept (the store failed, or a concurrent request kept
    the same variant first); nothing is left behind then.
    """
    location = location_primary(org)
    store = store_for(location)
    key = derived_key(org, instance, _EXTENSIONS[media_type])
    sha256 = hashlib.sha256(data).hexdigest()
    # The intent row first: a crash between storing and indexing leaves an object the orphan
    # cleanup removes (no instance names its key).
    intent = PendingObject.objects.create(
        organization=org, location=location, object_key=key, tier="hot"
    )
    spool = store.spool_dir() / f"{uuid.uuid4().hex}.part"
    try:
        spool.write_bytes(data)
        stored = store.put_file(key=key, path=spool, tier="hot", sha256=sha256)
        if stored.size != len(data):
            raise StorageUnavailable(f"Stored size {stored.size} differs from {len(data)}.")
    except (StorageUnavailable, OSError) as exc:
        logger.warning("thumbnails: not kept for org %s: %s", org.pk, exc)
        _forget(store, key, intent)
        spool.unlink(missing_ok=True)
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            row = DerivedObject.objects.create(
                organization=org,
                instance=instance,
                kind=DerivedObject.Kind.THUMBNAIL,
                variant=variant,
                location=location,
                object_key=key,
                tier="hot",
                size_bytes=len(data),
                sha256=sha256,
                created_at=now,
            )
            storage_delta(
                org=org,
                tier="hot",
                delta_bytes=len(data),
                at=now,
                idempotency_key=f"derived:{row.pk}",
                meter=DERIVED_STORAGE,
            )
            PendingObject.objects.filter(pk=intent.pk).delete()
    except IntegrityError:
        # Another request kept this variant first: ours goes.
        _forget(store, key, intent)
        return None
    return row


def _forget(store: ObjectStore, key: str, intent: PendingObject) -> None:
    try:
        store.delete(key=key, tier="hot")
    except StorageUnavailable:
        return  # the intent row stays: the orphan cleanup removes the object later
    PendingObject.objects.filter(pk=intent.pk).delete()


def derived_discard(*, org: Organization, row: DerivedObject) -> bool:
    """Delete a derived object: its bytes (where its location still exists), then its row with a
    negative ledger delta, in one transaction. False when the store could not delete it now (the
    row stays for the next sweep). Idempotent."""
    if row.location is not None:
        try:
            store_for(row.location).delete(key=row.object_key, tier=row.tier)
        except StorageUnavailable as exc:
            logger.warning("thumbnails: %s not deleted now: %s", row.object_key, exc)
            return False
    with transaction.atomic():
        deleted, _ = DerivedObject.objects.for_org(org).filter(pk=row.pk).delete()
        if deleted:
            storage_delta(
                org=org,
                tier=row.tier,
                delta_bytes=-row.size_bytes,
                at=timezone.now(),
                idempotency_key=f"derived:{row.pk}:out",
                meter=DERIVED_STORAGE,
            )
    return True


def derived_sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Beat: remove the derived objects whose instance is gone or trashed, or whose location was
    removed (bounded batch). Returns how many were removed."""
    stale = (
        DerivedObject.objects.filter(
            Q(instance__isnull=True)
            | Q(location__isnull=True)
            | Q(instance__study__trashed_at__isnull=False)
        )
        .select_related("location", "organization")
        .order_by("id")[:limit]
    )
    removed = 0
    for row in list(stale):
        removed += int(derived_discard(org=row.organization, row=row))
    if removed:
        logger.info("thumbnails: %d derived object(s) removed", removed)
    return removed


def _kept(org: Organization, instance: Instance, variant: str) -> bytes | None:
    """The kept thumbnail's bytes, or None (none kept, or it cannot be read now). A row whose
    object is gone is discarded, so that the next request keeps a new one."""
    row = (
        DerivedObject.objects.for_org(org)
        .filter(instance=instance, kind=DerivedObject.Kind.THUMBNAIL, variant=variant)
        .select_related("location")
        .first()
    )
    if row is None or row.location is None:
        return None
    store = store_for(row.location)
    try:
        data = b"".join(store.iter_bytes(key=row.object_key, tier=row.tier))
    except StorageUnavailable as exc:
        data = None
        logger.warning("thumbnails: %s not read: %s", row.object_key, exc)
    if data is not None and len(data) == row.size_bytes:
        return data
    try:
        missing = store.head(key=row.object_key, tier=row.tier) is None
    except StorageUnavailable:
        missing = False
    if missing or data is not None:  # gone, or not what was kept
        derived_discard(org=org, row=row)
    return None


# --- the response -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThumbnailTarget:
    instance: Instance
    frame: int


def thumbnail_options(request: HttpRequest) -> RenderOptions:
    for name in _NOT_FOR_THUMBNAILS:
        if name in request.GET:
            raise parameter_error(
                name,
                f"A thumbnail is the server's rendering and takes no '{name}'; ask .../rendered "
                "for that.",
            )
    media_type, _ = negotiate(request, multipart=False)
    text = single_parameter(request, "viewport")
    width = height = THUMBNAIL_SIZE
    if text is not None:
        viewport = parse_viewport(text, region=False)
        if viewport.width > THUMBNAIL_MAX or viewport.height > THUMBNAIL_MAX:
            raise parameter_error(
                "viewport",
                f"A thumbnail is at most {THUMBNAIL_MAX} x {THUMBNAIL_MAX} pixels; ask "
                ".../rendered for larger images.",
            )
        width, height = viewport.width, viewport.height
    return RenderOptions(
        media_type=media_type,
        viewport=parse_viewport(f"{width},{height}", region=False),
        quality=THUMBNAIL_QUALITY,
    )


def _variant(target: ThumbnailTarget, options: RenderOptions) -> str:
    assert options.viewport is not None
    return (
        f"f{target.frame}-{options.viewport.width}x{options.viewport.height}-"
        f"{_EXTENSIONS[options.media_type]}"
    )


def thumbnail_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series | None,
    instance: Instance | None,
    frames: str | None = None,
) -> HttpResponseBase:
    """The thumbnail of ``study``, ``series``, ``instance`` or one of its frames (all scoped to
    ``org`` already)."""
    options = thumbnail_options(request)
    if instance is not None:
        problem = render_problem(instance)
        if problem is not None:
            raise NotRenderable(problem)
        frame = middle_frame(instance)
        if frames is not None:
            if not frames.isdigit() or len(frames) > 9:
                raise parameter_error(
                    "frames", "A thumbnail is of one frame: name one frame number."
                )
            frame = int(frames)
            if not 1 <= frame <= frame_count(instance):
                raise parameter_error(
                    "frames",
                    f"The instance has {frame_count(instance)} frame(s); frame {frame} does not "
                    "exist.",
                )
        chosen = instance
    else:
        found = (
            series_representative(org, series)
            if series is not None
            else study_representative(org, study)
        )
        if found is None:
            what = (
                f"Series {series.series_uid}" if series is not None else f"Study {study.study_uid}"
            )
            raise NotRenderable(f"{what} has no image a thumbnail can show.")
        chosen, frame = found, middle_frame(found)
    chosen.study = study
    # A tiled image of a few tiles (a slide's lowest level) is shown whole: "frame 0".
    grid = tile_grid(chosen) if frames is None else None
    target = ThumbnailTarget(chosen, 0 if grid is not None else frame)
    variant = _variant(target, options)
    data = _kept(org, chosen, variant)
    if data is None:
        try:
            require_readable(request=request, org=org, actor=actor, instances=[chosen])
        except RestorePending as exc:
            return restore_pending_response(exc)
        if grid is not None:
            data = render_tiles(chosen, grid, options)
        else:
            data = render_target(Target(chosen, frame), options, study=study)
        derived_store(
            org=org, instance=chosen, variant=variant, data=data, media_type=options.media_type
        )
    # The series shown: a study's thumbnail reads one series, not the study. A thumbnail is
    # logged and its bytes metered, but it does not mark the images read: a list of studies
    # with their thumbnails is no sign that the images are needed (tier policies).
    image_read_record(
        org=org,
        study=study,
        series=chosen.series,
        kind=AccessEvent.Kind.THUMBNAIL,
        actor=actor,
        bytes_read=len(data),
        instances=1,
        instance=None,
    )
    response = HttpResponse(data, content_type=options.media_type)
    response["Content-Length"] = str(len(data))
    # The viewer's own cache may keep it a little (the thumbnail of a series changes only when
    # its instances do); private: it is read with the organization's credentials.
    response["Cache-Control"] = "private, max-age=300"
    return response
