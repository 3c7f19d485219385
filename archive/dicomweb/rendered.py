"""WADO-RS rendered resources (PS3.18 10.4.1.1.3, 8.3.5.1, 8.7.4): images as a browser shows them.

``/studies/{study}/rendered``, ``.../series/{series}/rendered``, ``.../instances/{sop}/rendered``
and ``.../instances/{sop}/frames/{list}/rendered``, in ``image/jpeg`` (the default; baseline,
8 bits), ``image/png`` or ``image/gif`` (PS3.18 Table 8.7.4-1: JPEG is the default of a
single-frame image, GIF and PNG are required of the RESTful service). An instance or one frame is
one image; a study, a series and a list of frames are ``multipart/related`` with one rendered
image per part, streamed: one instance is read and decoded at a time. A multi-frame instance
renders its first frame (a frame list names others). Instances without pixel data (reports,
waveforms, key objects) have no rendered image: an instance answers 406 naming why, a study or
series leaves them out and says how many in a ``Warning`` header.

The rendering follows the grayscale pipeline of PS3.4 N.2: the stored values through the
Modality LUT (Rescale Slope and Intercept, or the Modality LUT Sequence), the VOI transform
(the ``window`` parameter; else the image's own first Window Center/Width with its VOI LUT
Function; else its first VOI LUT; else the frame's minimum to maximum), then the presentation
(MONOCHROME1 and an INVERSE Presentation LUT Shape are inverted) into 8 bits. Enhanced
multi-frame images take these values from the frame's functional groups. Color images (RGB, YBR
through pydicom's color conversion, PALETTE COLOR through its palette) are shown as stored:
``window`` does not apply to them. The frame is decoded by pydicom's pixel data handlers
(pylibjpeg with libjpeg and openjpeg, pydicom's own RLE decoder): JPEG, JPEG-LS, JPEG 2000,
HTJ2K and RLE. A transfer syntax no handler decodes (video, JPEG XL, deflated) answers 406
naming it, before any object is read.

Query parameters (PS3.18 8.3.5.1): ``window=center,width[,linear|linear-exact|sigmoid]``,
``viewport=vw,vh[,sx,sy,sw,sh]`` (the region of the frame from (sx, sy), |sw| x |sh| pixels,
flipped where sw or sh is negative, scaled to fit vw x vh with its aspect ratio kept),
``quality`` (1-100, JPEG only; 90 by default), ``annotation=patient,technique`` (a small text
overlay: the patient's name, ID, birth date and sex; the modality, date, series, instance and
frame numbers and the window applied), ``accept`` (a media type that replaces the Accept
header, for links that cannot set one) and ``iccprofile`` (``no`` only: no profile is embedded).
A value that cannot be honoured answers 400 naming the parameter; nothing is rendered.

Reading follows WADO-RS (``archive.dicomweb.wado``): archive-tier instances without a restored
copy answer 503 with Retry-After and start the restore; one access is recorded per request with
the bytes sent (an instance or frame by ``image_read_record``, gathered per reader, series and
minute; a series or study by ``access_record``); another organization's UIDs answer 404. The object is read by ranges
(``ObjectReader``; a filesystem store's file in place): the header up to the pixel data, then the
one frame, never the whole object.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from PIL import Image, ImageDraw, ImageFont
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID

from archive.dicomweb.bulkdata import ObjectReader
from archive.dicomweb.common import (
    MULTIPART_RELATED,
    MediaRange,
    NotAcceptable,
    accepted_ranges,
    base_url,
    instance_url,
    warning_header,
)
from archive.dicomweb.frames import (
    FrameReader,
    InvalidFrameList,
    NoPixelData,
    NotDecodable,
    decodable,
)
from archive.dicomweb.multipart import closing, header_parameters, part_header
from archive.dicomweb.wado import (
    RestorePending,
    StorageFailed,
    require_readable,
    restore_pending_response,
)
from archive.index.services import access_record, image_read_record
from archive.ingest.dicom import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    VIDEO_TRANSFER_SYNTAXES,
    is_encapsulated,
    pixel_bulk_data_of,
)
from archive.models import AccessEvent, FrameIndex, Instance, Series, Study
from archive.storage import StorageUnavailable, store_for
from tenants.context import Actor
from tenants.errors import ServiceError, ValidationFailed
from tenants.models import Organization

logger = logging.getLogger(__name__)

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
# In the order a wildcard picks them: JPEG is the default of PS3.18 Table 8.7.4-1.
RENDERED_TYPES = (JPEG, PNG, GIF)
DEFAULT_QUALITY = 90
# A viewport larger than this in either dimension is refused: the image is built in memory.
MAX_VIEWPORT = 4096
# A frame with more pixels than this is not decoded for rendering: the decoded frame and the
# image made of it are in memory (32 Mpixels: 64 MiB at 16 bits; the largest radiographs have
# about 15). A slide's tiles are frames of their own; its frames resource serves any frame.
MAX_FRAME_PIXELS = 32 * 1024 * 1024
ANNOTATIONS = ("patient", "technique")
WINDOW_FUNCTIONS = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "linear_exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}
NUMBER_OF_FRAMES_KEY = "00280008"
COLUMNS_KEY = "00280011"
ROWS_KEY = "00280010"
# Attributes outside the Image Pixel module the rendering reads from the object's header.
_PRESENTATION_LUT_SHAPE = "PresentationLUTShape"


class NotRenderable(ServiceError):
    """The resource has no rendering in an image media type: no pixel data, a transfer syntax
    no handler decodes, pixel data that does not decode, a frame too large to decode."""

    status = 406
    code = "not_renderable"


# --- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str  # LINEAR, LINEAR_EXACT or SIGMOID (the VOI LUT Function's values)


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None

    @property
    def has_region(self) -> bool:
        return any(v is not None for v in (self.sx, self.sy, self.sw, self.sh))


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    annotation: tuple[str, ...] = ()


def parameter_error(parameter: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_parameter", fields={parameter: [message]})


def single_parameter(request: HttpRequest, name: str) -> str | None:
    values = request.GET.getlist(name)
    if len(values) > 1:
        raise parameter_error(
            name, f"'{name}' may be given once; the request gives it {len(values)} times."
        )
    return values[0] if values else None


def _number(text: str, parameter: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise parameter_error(
            parameter, f"The {what} {text[:32]!r} of '{parameter}' is not a number."
        ) from None
    if not math.isfinite(value):
        raise parameter_error(parameter, f"The {what} of '{parameter}' must be a finite number.")
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]``: PS3.18 8.3.5.1.4; the width follows PS3.3 C.11.2.1.2 (at
    least 1 for LINEAR, above 0 otherwise)."""
    items = text.split(",")
    if len(items) not in (2, 3):
        raise parameter_error(
            "window",
            "'window' is center,width,function (function: linear, linear-exact or sigmoid).",
        )
    center = _number(items[0], "window", "center")
    width = _number(items[1], "window", "width")
    name = items[2].strip().lower() if len(items) == 3 and items[2].strip() else "linear"
    function = WINDOW_FUNCTIONS.get(name)
    if function is None:
        raise parameter_error(
            "window",
            f"The window function {name[:32]!r} is unknown; use linear, linear-exact or sigmoid.",
        )
    if function == "LINEAR" and width < 1:
        raise parameter_error(
            "window", f"A linear window's width must be at least 1; the request gives {width:g}."
        )
    if width <= 0:
        raise parameter_error(
            "window", f"A window's width must be above 0; the request gives {width:g}."
        )
    return Window(center, width, function)


def _int_item(text: str, parameter: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise parameter_error(
            parameter, f"The {what} {text[:32]!r} of '{parameter}' is not an integer."
        ) from None


def parse_viewport(text: str, *, region: bool = True) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); region values may be left empty."""
    items = text.split(",")
    if len(items) not in (2, 6) or (not region and len(items) != 2):
        shape = "vw,vh[,sx,sy,sw,sh]" if region else "vw,vh"
        raise parameter_error(
            "viewport", f"'viewport' is {shape}; the request gives {text[:64]!r}."
        )
    vw = _int_item(items[0], "viewport", "width")
    vh = _int_item(items[1], "viewport", "height")
    if vw is None or vh is None or not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise parameter_error(
            "viewport",
            f"The viewport's width and height must be integers from 1 to {MAX_VIEWPORT}.",
        )
    if len(items) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = (
        _int_item(v, "viewport", what)
        for v, what in zip(items[2:], ("sx", "sy", "sw", "sh"), strict=True)
    )
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise parameter_error("viewport", "The region's sx and sy must not be negative.")
    if sw == 0 or sh == 0:
        raise parameter_error("viewport", "The region's sw and sh must not be 0.")
    return Viewport(vw, vh, sx, sy, sw, sh)


def parse_quality(text: str) -> int:
    try:
        quality = int(text.strip())
    except ValueError:
        raise parameter_error(
            "quality", f"'quality' is an integer from 1 to 100, not {text[:32]!r}."
        ) from None
    if not 1 <= quality <= 100:
        raise parameter_error("quality", f"'quality' is an integer from 1 to 100, not {quality}.")
    return quality


def parse_annotation(text: str) -> tuple[str, ...]:
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = sorted(set(items) - set(ANNOTATIONS))
    if unknown:
        raise parameter_error(
            "annotation",
            f"Unknown annotation {unknown[0][:32]!r}; 'annotation' takes patient and/or technique.",
        )
    return tuple(a for a in ANNOTATIONS if a in items)


# --- content negotiation ----------------------------------------------------------------------


def _requested_ranges(request: HttpRequest) -> tuple[list[MediaRange], str]:
    """The media ranges asked for: the ``accept`` query parameter replaces the Accept header
    (PS3.18 8.3.3.1). Highest q first, the order given among equals."""
    query = single_parameter(request, "accept")
    if query is None:
        ranges, asked = accepted_ranges(request), request.headers.get("Accept", "")
    else:
        ranges, asked = [], query
        for item in query.split(","):
            parsed = header_parameters(item)
            if parsed is not None:
                media_type, params = parsed
                params = {k: v.strip('"') for k, v in params.items()}
                ranges.append(MediaRange(media_type, params))
    return sorted(ranges, key=lambda r: -r.q), asked


def _rendered_type(wanted: str) -> str | None:
    wanted = wanted.lower()
    if wanted in RENDERED_TYPES:
        return wanted
    if wanted in ("image/*", "*/*"):
        return JPEG
    return None


def negotiate(request: HttpRequest, *, multipart: bool) -> tuple[str, bool]:
    """(the rendered media type, whether the body is multipart/related).

    ``multipart``: the resource has several images (a study, a series, a frame list), sent as
    ``multipart/related`` whatever form the request names them in (``image/png`` is read as
    ``multipart/related; type="image/png"``). A single image is sent alone, or as a one-part
    multipart/related when only that is acceptable. A transfer syntax parameter is not permitted
    on rendered media types (PS3.18 8.7.4): such a range matches nothing.
    """
    ranges, asked = _requested_ranges(request)
    for media in ranges:
        if "transfer-syntax" in media.params:
            continue
        if media.media_type == MULTIPART_RELATED:
            found = _rendered_type(media.params.get("type", "*/*"))
            if found:
                return found, True
            continue
        if media.media_type == "multipart/*":
            return JPEG, True
        found = _rendered_type(media.media_type)
        if found:
            return found, multipart
    offered = ", ".join(RENDERED_TYPES)
    raise NotAcceptable(
        f"Rendered images are sent as {offered} ({MULTIPART_RELATED} of them for a study, a "
        f"series or a frame list); the request accepts {asked[:200]!r}.",
        fields={"Accept": [f"Send 'Accept: {JPEG}' (or {PNG}, {GIF})."]},
    )


def rendering_options(request: HttpRequest, *, multipart: bool) -> tuple[RenderOptions, bool]:
    """The rendering the request asks for (every parameter checked before anything is read)."""
    media_type, as_multipart = negotiate(request, multipart=multipart)
    options = RenderOptions(media_type=media_type)
    window = single_parameter(request, "window")
    if window is not None:
        options = replace(options, window=parse_window(window))
    viewport = single_parameter(request, "viewport")
    if viewport is not None:
        options = replace(options, viewport=parse_viewport(viewport))
    quality = single_parameter(request, "quality")
    if quality is not None:
        options = replace(options, quality=parse_quality(quality))
    annotation = single_parameter(request, "annotation")
    if annotation is not None:
        options = replace(options, annotation=parse_annotation(annotation))
    icc = single_parameter(request, "iccprofile")
    if icc is not None and icc.strip().lower() != "no":
        raise parameter_error(
            "iccprofile",
            "Rendered images carry no ICC profile: 'iccprofile' may only be 'no'.",
        )
    return options, as_multipart


def parse_frame_list(text: str, *, frames: int) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.3): positive, at most ``frames``, without duplicates."""
    numbers = []
    for item in text.replace("%2C", ",").replace("%2c", ",").split(","):
        item = item.strip()
        if not item.isdigit() or len(item) > 9:
            raise parameter_error(
                "frames", f"Frame numbers are positive integers; {item[:16]!r} is not one."
            )
        numbers.append(int(item))
    if any(n < 1 for n in numbers):
        raise parameter_error("frames", "Frame numbers start at 1; 0 names no frame.")
    beyond = [n for n in numbers if n > frames]
    if beyond:
        raise parameter_error(
            "frames",
            f"The instance has {frames} frame(s); frame {beyond[0]} does not exist.",
        )
    if len(set(numbers)) != len(numbers):
        raise parameter_error("frames", "The frame list names a frame more than once.")
    return numbers


# --- what can be rendered, from the index ---------------------------------------------------


def metadata_int(metadata: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(metadata[key]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return default


def frame_count(instance: Instance) -> int:
    return max(metadata_int(instance.metadata or {}, NUMBER_OF_FRAMES_KEY, 1), 1)


def has_pixel_data(instance: Instance) -> bool:
    return pixel_bulk_data_of(
        instance.metadata or {}, instance.transfer_syntax_uid
    ) is not None or (
        instance.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        and ROWS_KEY in (instance.metadata or {})
    )


def syntax_label(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else uid or "(none)"


def render_problem(instance: Instance) -> str | None:
    """Why ``instance`` cannot be rendered, known from the index alone; None when it can be."""
    syntax = instance.transfer_syntax_uid
    sop = instance.sop_instance_uid
    if not has_pixel_data(instance):
        kind = UID(instance.sop_class_uid).name if instance.sop_class_uid else "this instance"
        return (
            f"Instance {sop} ({kind}) has no pixel data: there is no image to render. Retrieve "
            "it as application/dicom."
        )
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return (
            f"Instance {sop} is stored in {syntax_label(syntax)}: its pixel data is reached "
            "only by inflating the whole object, which rendering does not do. Retrieve it as "
            "application/dicom."
        )
    if syntax in VIDEO_TRANSFER_SYNTAXES:
        return (
            f"Instance {sop} is video ({syntax_label(syntax)}); rendered video is not offered. "
            "Retrieve its frames or the instance."
        )
    if is_encapsulated(syntax) and not decodable(syntax):
        return (
            f"Instance {sop} is stored in {syntax_label(syntax)}, which no installed "
            "pixel data decoder reads: it cannot be rendered. Retrieve it as stored."
        )
    metadata = instance.metadata or {}
    pixels = metadata_int(metadata, ROWS_KEY, 0) * metadata_int(metadata, COLUMNS_KEY, 0)
    if pixels > MAX_FRAME_PIXELS:
        return (
            f"A frame of instance {sop} has {pixels:,} pixels; frames of at most "
            f"{MAX_FRAME_PIXELS:,} pixels are rendered. Retrieve its frames as stored."
        )
    return None


# --- reading one frame ------------------------------------------------------------------------


@dataclass
class Frame:
    """One decoded frame and the attributes its rendering reads (``rendering_header``)."""

    pixels: np.ndarray
    header: Dataset
    number: int  # 1-based
    frames: int


# The attributes the rendering reads, by DICOM JSON key: the Image Pixel module's description,
# the Modality and VOI LUT modules, the palette and the Presentation LUT Shape.
_RENDERING_KEYWORDS = (
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "NumberOfFrames",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
    "SharedFunctionalGroupsSequence",
)
_RENDERING_KEYS = tuple(f"{tag_for_keyword(k):08X}" for k in _RENDERING_KEYWORDS)
_PER_FRAME_KEY = f"{tag_for_keyword('PerFrameFunctionalGroupsSequence'):08X}"


def _lut_data_missing(ds: Dataset) -> bool:
    """Whether a LUT the rendering needs lost its data to the metadata's size limit (values
    above ``BULK_THRESHOLD`` are not kept in the index)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR" and not any(
        ds.get(k)
        for k in ("RedPaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData")
    ):
        return True
    for keyword in ("VOILUTSequence", "ModalityLUTSequence"):
        items = ds.get(keyword)
        if items and not items[0].get("LUTData"):
            return True
    return False


def _from_json(subset: dict[str, Any]) -> Dataset:
    # A value the index kept as an empty BulkDataURI (over the size limit) becomes empty.
    return Dataset.from_json(subset, bulk_data_uri_handler=lambda *args: b"")


def _with_frame_groups(ds: Dataset, per_frame: Any, number: int) -> Dataset:
    """``ds`` with the Per-Frame Functional Groups of frame ``number`` only (as one item)."""
    if per_frame is not None and len(per_frame) >= number:
        ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([per_frame[number - 1]])
    return ds


@contextmanager
def _opened(instance: Instance) -> Iterator[BinaryIO]:
    """The stored object as a seekable file: a filesystem store's file in place, else ranged
    reads of the object store (``ObjectReader``)."""
    store = store_for(instance.location)
    local = store.open_local(key=instance.object_key, tier=instance.tier)
    if local is not None:
        try:
            yield cast(BinaryIO, local)
        finally:
            local.close()
        return
    reader = ObjectReader(
        store, key=instance.object_key, tier=instance.tier, size=instance.size_bytes
    )
    try:
        yield cast(BinaryIO, reader)
    finally:
        reader.close()


def _header_from_object(instance: Instance, number: int) -> Dataset:
    """The rendering attributes read from the stored object's header (up to the pixel data),
    for a LUT whose data the index does not keep."""
    with _opened(instance) as fileobj:
        ds = pydicom.dcmread(fileobj, stop_before_pixels=True, force=True)
    subset = Dataset()
    for keyword in _RENDERING_KEYWORDS:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return _with_frame_groups(subset, ds.get("PerFrameFunctionalGroupsSequence"), number)


def rendering_header(instance: Instance, number: int) -> Dataset:
    """The attributes frame ``number``'s rendering reads, from the index's metadata; from the
    object's header only when a LUT's data is too large for the metadata."""
    metadata = instance.metadata or {}
    ds = _from_json({key: metadata[key] for key in _RENDERING_KEYS if key in metadata})
    per_frame = metadata.get(_PER_FRAME_KEY, {}).get("Value")
    if per_frame and len(per_frame) >= number:
        ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([_from_json(per_frame[number - 1])])
    if _lut_data_missing(ds):
        ds = _header_from_object(instance, number)
    return ds


# What the metadata or the object's header may raise when a value cannot be used.
_HEADER_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    struct.error,
    EOFError,
)


def _cached_frame_index(instance: Instance) -> FrameIndex | None:
    """The frame index loaded with the instance (``instance_by_uids``), else None: the frame
    reader looks it up."""
    descriptor = Instance.frame_index
    if not descriptor.is_cached(instance):
        return None
    index = descriptor.related.get_cached_value(instance, default=None)
    return cast(FrameIndex | None, index)


def frame_read(instance: Instance, number: int) -> Frame:
    """Decode frame ``number`` (1-based) of ``instance`` (``archive.dicomweb.frames``: one
    ranged read of the frame) with the attributes its rendering reads.

    Raises NotRenderable (the data does not decode), ValidationFailed (no such frame) or
    StorageFailed (the store cannot be read). Preconditions: ``render_problem(instance)`` is
    None and the object is readable now (``require_readable``).
    """
    try:
        with FrameReader(instance, _cached_frame_index(instance)) as reader:
            decoded = reader.decoded(number)
            frames = reader.frames
    except NotDecodable as exc:
        raise NotRenderable(exc.message) from None
    except NoPixelData as exc:
        raise NotRenderable(exc.message) from None
    except InvalidFrameList as exc:
        raise ValidationFailed(exc.message, code=exc.code, fields=exc.fields) from None
    try:
        header = rendering_header(instance, number)
    except StorageUnavailable as exc:
        logger.warning("rendered: storage unavailable for %s: %s", instance.object_key, exc)
        raise StorageFailed(
            "The object store cannot be read right now; retry later.", code="storage_unavailable"
        ) from None
    except _HEADER_ERRORS as exc:
        raise NotRenderable(
            f"The rendering attributes of instance {instance.sop_instance_uid} cannot be read: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"
        ) from None
    # What the pixels are now (pydicom gives YCbCr-coded frames as RGB).
    header.PhotometricInterpretation = decoded.photometric_interpretation
    return Frame(pixels=decoded.pixels, header=header, number=number, frames=frames)


# --- the rendering: PS3.4 N.2 into 8 bits ----------------------------------------------------


def _functional(ds: Dataset, number: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from the frame's functional group ``sequence`` (per-frame, then shared), else
    the top-level attribute (PS3.3 C.7.6.16). ``ds`` holds frame ``number``'s per-frame
    functional groups only (``rendering_header``)."""
    for groups_keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_keyword)
        if not groups:
            continue
        macro = groups[0].get(sequence)
        if macro and keyword in macro[0]:
            return macro[0].get(keyword)
    return ds.get(keyword)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Applied:
    """What the rendering used, for the technique annotation."""

    window: Window | None = None
    voi_lut: bool = False


def _voi(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 into 0..255, as floats. Extreme windows overflow to the ends (inf is
    clipped, exp() of a huge argument is 0 or inf): not an error."""
    c, w = window.center, window.width
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if window.function == "SIGMOID":
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        elif window.function == "LINEAR_EXACT":
            out = np.clip((values - c) / w + 0.5, 0.0, 1.0) * 255.0
        elif w > 1:
            out = np.clip((values - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0) * 255.0
        else:
            out = np.where(values > c - 0.5, 255.0, 0.0)
    return np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)


def _voi_lut(values: np.ndarray, item: Dataset) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) into 0..255."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536
    first = descriptor[1]
    if first >= 32768 and values.min() < 0:  # the first value mapped is signed (US or SS)
        first -= 65536
    data = item.LUTData
    if isinstance(data, bytes):
        data = np.frombuffer(data, "<u2" if descriptor[2] > 8 else "u1")
    lut = np.asarray(data, dtype=np.float64)[:entries]
    top = max(float(lut.max()), float(2 ** min(max(descriptor[2], 1), 16) - 1))
    positions = np.clip(np.rint(values).astype(np.int64) - first, 0, len(lut) - 1)
    return lut[positions] / top * 255.0


def _modality(values: np.ndarray, ds: Dataset, number: int) -> np.ndarray:
    lut = ds.get("ModalityLUTSequence")
    if lut:
        return _voi_lut(values, lut[0]) / 255.0 * float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    slope = _first(_functional(ds, number, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first(
        _functional(ds, number, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    if slope is None and intercept is None:
        return values
    return values * (1.0 if slope is None else slope) + (intercept or 0.0)


def image_window(ds: Dataset, number: int) -> Window | None:
    """The image's own first window (PS3.3 C.11.2), with its VOI LUT Function."""
    center = _first(_functional(ds, number, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional(ds, number, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None:
        return None
    function = str(_functional(ds, number, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
    function = function.strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if (function == "LINEAR" and width < 1) or width <= 0:
        return None  # an unusable stored window: the frame's range serves instead
    return Window(center, width, function)


def _grayscale_map(
    domain: np.ndarray, ds: Dataset, number: int, options: RenderOptions, lo: float, hi: float
) -> tuple[np.ndarray, Applied]:
    """Stored values ``domain`` to 0..255 (floats); ``lo``/``hi``: the frame's stored range."""
    values = _modality(domain.astype(np.float64), ds, number)
    window = options.window or image_window(ds, number)
    if window is not None:
        out, applied = _voi(values, window), Applied(window=window)
    elif options.window is None and ds.get("VOILUTSequence"):
        out, applied = _voi_lut(values, ds.VOILUTSequence[0]), Applied(voi_lut=True)
    else:
        ends = _modality(np.array([lo, hi], dtype=np.float64), ds, number)
        low, high = float(ends.min()), float(ends.max())
        window = Window((low + high) / 2.0, max(high - low, 1.0), "LINEAR_EXACT")
        out, applied = _voi(values, window), Applied(window=window)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get(_PRESENTATION_LUT_SHAPE, "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = 255.0 - out
    return out, applied


def _grayscale(
    pixels: np.ndarray, ds: Dataset, number: int, options: RenderOptions
) -> tuple[np.ndarray, Applied]:
    """A 2-D frame to uint8. Integers of up to 16 bits go through a lookup table over every
    stored value (one gather per pixel); wider integers and floats are computed per pixel."""
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        native = pixels.dtype.newbyteorder("=")
        index_type = np.dtype(f"u{native.itemsize}")
        pixels = pixels.astype(native, copy=False)
        domain = np.arange(2 ** (8 * native.itemsize), dtype=np.int64).astype(index_type)
        lo, hi = float(pixels.min()), float(pixels.max())
        out, applied = _grayscale_map(domain.view(native), ds, number, options, lo, hi)
        lut = np.rint(out).astype(np.uint8)
        return lut[pixels.view(index_type)], applied
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    out, applied = _grayscale_map(np.nan_to_num(values, nan=lo), ds, number, options, lo, hi)
    return np.rint(out).astype(np.uint8), applied


def _color(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """A color frame (RGB after pydicom's conversion, or PALETTE COLOR) to 8-bit RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        bits = int(ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 8])[2])
        if rgb.dtype.itemsize > 1:
            top = 255 if bits <= 8 and rgb.max() <= 255 else 65535
            rgb = (rgb.astype(np.float32) * (255.0 / top)).round()
        return rgb.astype(np.uint8)
    if pixels.dtype == np.uint8:
        return pixels
    stored = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    scale = 255.0 / float(2**stored - 1)
    return np.clip(pixels.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)


def _region(frame: Frame, viewport: Viewport | None) -> tuple[np.ndarray, bool, bool]:
    """The source region of the viewport (PS3.18 8.3.5.1.3): (pixels, flip x, flip y)."""
    pixels = frame.pixels
    if viewport is None or not viewport.has_region:
        return pixels, False, False
    rows, columns = pixels.shape[0], pixels.shape[1]
    sx, sy = viewport.sx or 0, viewport.sy or 0
    sw = viewport.sw if viewport.sw is not None else columns - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    if (
        sx >= columns
        or sy >= rows
        or sx + abs(sw) > columns
        or sy + abs(sh) > rows
        or not sw
        or not sh
    ):
        raise parameter_error(
            "viewport",
            f"The region ({sx},{sy}) {abs(sw)}x{abs(sh)} is not inside the {columns}x{rows} frame.",
        )
    return pixels[sy : sy + abs(sh), sx : sx + abs(sw)], sw < 0, sh < 0


def fitted_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit the box, the aspect ratio kept."""
    scale = min(box_width / width, box_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(
    frame: Frame, options: RenderOptions, *, annotate: Callable[[Applied], list[str]] | None = None
) -> Image.Image:
    """The frame as an 8-bit image, the viewport applied (then the annotation)."""
    pixels, flip_x, flip_y = _region(frame, options.viewport)
    ds = frame.header
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    applied = Applied()
    if pixels.ndim == 3 or photometric == "PALETTE COLOR":
        image = Image.fromarray(_color(pixels, ds), "RGB")
    else:
        gray, applied = _grayscale(pixels, ds, frame.number, options)
        image = Image.fromarray(np.ascontiguousarray(gray), "L")
    if flip_x:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if options.viewport is not None:
        size = fitted_size(
            image.width, image.height, options.viewport.width, options.viewport.height
        )
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if options.annotation and annotate is not None:
        _draw_text(image, annotate(applied))
    return image


def _draw_text(image: Image.Image, lines: list[str]) -> None:
    """Lines of text at the top left, light on a dark outline, sized to the image."""
    lines = [line for line in lines if line]
    if not lines:
        return
    size = max(9, min(image.height // 36, 18))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    light = 255 if image.mode == "L" else (255, 255, 255)
    dark = 0 if image.mode == "L" else (0, 0, 0)
    y = 2
    for line in lines:
        draw.text((3, y), line, fill=light, font=font, stroke_width=1, stroke_fill=dark)
        y += size + 3


def _printable(value: Any, limit: int = 64) -> str:
    text = str(value or "")
    return "".join(c if c.isprintable() else " " for c in text)[:limit].strip()


def annotation_lines(
    kinds: Sequence[str], *, study: Study, instance: Instance, frame: Frame, applied: Applied
) -> list[str]:
    """The overlay's text (PS3.18 8.3.5.1.1): patient from the index, technique from the
    instance and the rendering."""
    lines: list[str] = []
    if "patient" in kinds:
        family, _, rest = (study.patient_name or "").partition("^")
        given = " ".join(p for p in rest.split("^")[:2] if p)
        name = f"{family}, {given}" if family and given else family or given
        lines.append(_printable(name))
        birth = study.patient_birth_date.isoformat() if study.patient_birth_date else ""
        lines.append(
            "  ".join(
                p
                for p in (_printable(study.patient_id), birth, _printable(study.patient_sex, 8))
                if p
            )
        )
    if "technique" in kinds:
        ds = frame.header
        modality = _printable(ds.get("Modality") or instance.series.modality, 16)
        date = study.study_date.isoformat() if study.study_date else ""
        lines.append("  ".join(p for p in (modality, date) if p))
        numbers = [
            f"Se {instance.series.series_number}"
            if instance.series.series_number is not None
            else ""
        ]
        if instance.instance_number is not None:
            numbers.append(f"Im {instance.instance_number}")
        if frame.frames > 1:
            numbers.append(f"Fr {frame.number}/{frame.frames}")
        lines.append("  ".join(p for p in numbers if p))
        if applied.window is not None:
            lines.append(f"W {applied.window.width:g}  C {applied.window.center:g}")
        elif applied.voi_lut:
            lines.append("VOI LUT")
        lines.append(f"{frame.pixels.shape[1]} x {frame.pixels.shape[0]}")
    return lines


def encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """JPEG baseline (PS3.18 8.7.4), PNG or GIF bytes."""
    buffer = io.BytesIO()
    if media_type == JPEG:
        image.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)
    elif media_type == PNG:
        image.save(buffer, "PNG", compress_level=3)
    else:
        if image.mode == "RGB":
            image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.save(buffer, "GIF")
    return buffer.getvalue()


# --- responses --------------------------------------------------------------------------------


@dataclass
class Target:
    """One image of the response: an instance's frame."""

    instance: Instance
    frame: int = 1


def _location(request: HttpRequest, study: Study, target: Target, frame_list: bool) -> str:
    instance = target.instance
    url = instance_url(
        base_url(request), study.study_uid, instance.series.series_uid, instance.sop_instance_uid
    )
    return f"{url}/frames/{target.frame}/rendered" if frame_list else f"{url}/rendered"


def render_target(target: Target, options: RenderOptions, *, study: Study) -> bytes:
    """One target decoded, rendered and encoded."""
    frame = frame_read(target.instance, target.frame)

    def annotate(applied: Applied) -> list[str]:
        return annotation_lines(
            options.annotation, study=study, instance=target.instance, frame=frame, applied=applied
        )

    image = render(frame, options, annotate=annotate)
    return encode(image, options.media_type, options.quality)


class RenderedStream:
    """The multipart body, rendered one image at a time; ``on_done(bytes, instances)`` runs
    exactly once (after the last image and before the closing delimiter, or with what was sent
    when the client goes away). An image that does not render is left out (logged)."""

    def __init__(
        self,
        *,
        first: bytes,
        rest: list[Target],
        render_one: Callable[[Target], bytes],
        header_of: Callable[[Target, int], bytes],
        first_target: Target,
        boundary: str,
        on_done: Callable[[int, int], None],
    ):
        self._first = first
        self._first_target = first_target
        self._rest = rest
        self._render_one = render_one
        self._header_of = header_of
        self._boundary = boundary
        self._on_done = on_done
        self._done = False
        self._sent = 0
        self._instances: set[int] = set()
        self._generator: Generator[bytes, None, None] = self._generate()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(self._sent, len(self._instances))

    def _part(self, target: Target, body: bytes) -> Iterator[bytes]:
        yield self._header_of(target, len(body))
        self._sent += len(body)
        self._instances.add(target.instance.pk)
        yield body + b"\r\n"

    def _generate(self) -> Generator[bytes, None, None]:
        try:
            yield from self._part(self._first_target, self._first)
            for target in self._rest:
                try:
                    body = self._render_one(target)
                except NotRenderable as exc:
                    logger.info("rendered: left out of a multipart: %s", exc.message)
                    continue
                except StorageFailed:
                    # Headers are out: all that is left is to cut the response short.
                    logger.warning("rendered: storage failed mid-response")
                    raise
                yield from self._part(target, body)
            self._finish()
            yield closing(self._boundary)
        finally:
            self._finish()

    def __iter__(self) -> Iterator[bytes]:
        return self._generator

    def close(self) -> None:
        self._generator.close()
        self._finish()


@dataclass
class RenderRequest:
    """What a rendered response is about, scoped to one organization already."""

    request: HttpRequest
    org: Organization
    actor: Actor
    study: Study
    series: Series | None
    targets: list[Target]
    options: RenderOptions
    multipart: bool
    frame_list: bool = False
    skipped: int = field(default=0)
    # An instance or its frames: only it is marked read (a study or series: all of theirs).
    single: Instance | None = None


def _record(req: RenderRequest) -> Callable[[int, int], None]:
    def record(sent_bytes: int, instances: int) -> None:
        if req.single is not None and req.series is not None:
            # An instance or one of its frames: what a viewer asks for slice by slice.
            image_read_record(
                org=req.org,
                study=req.study,
                series=req.series,
                instance=req.single,
                kind=AccessEvent.Kind.RETRIEVE,
                actor=req.actor,
                bytes_read=sent_bytes,
                instances=instances,
            )
            return
        access_record(
            org=req.org,
            study=req.study,
            series=req.series,
            kind=AccessEvent.Kind.RETRIEVE,
            actor=req.actor,
            bytes_read=sent_bytes,
            instances=instances,
            instances_read=None if req.single is None else [req.single],
        )

    return record


def _respond(req: RenderRequest) -> HttpResponseBase:
    """Render the targets (already checked renderable) and answer."""
    try:
        require_readable(
            request=req.request,
            org=req.org,
            actor=req.actor,
            instances=list({t.instance.pk: t.instance for t in req.targets}.values()),
        )
    except RestorePending as exc:
        return restore_pending_response(exc)

    def render_one(target: Target) -> bytes:
        return render_target(target, req.options, study=req.study)

    # The first image is rendered before answering, so that a frame that does not decode or an
    # unreachable store is a clear status, not a response cut short.
    position, first, error = 0, b"", None
    for position, target in enumerate(req.targets):  # noqa: B007 (position is used after)
        try:
            first = render_one(target)
            error = None
            break
        except NotRenderable as exc:
            if not req.multipart or len(req.targets) == 1:
                raise
            error = error or exc
            logger.info("rendered: left out of a multipart: %s", exc.message)
    if error is not None:
        raise error
    if not req.multipart:
        _record(req)(len(first), 1)
        single = HttpResponse(first, content_type=req.options.media_type)
        single["Content-Length"] = str(len(first))
        return single
    boundary = uuid.uuid4().hex
    media_type = req.options.media_type

    def header_of(target: Target, size: int) -> bytes:
        return part_header(
            boundary, media_type, size, _location(req.request, req.study, target, req.frame_list)
        )

    stream = RenderedStream(
        first=first,
        first_target=req.targets[position],
        rest=req.targets[position + 1 :],
        render_one=render_one,
        header_of=header_of,
        boundary=boundary,
        on_done=_record(req),
    )
    response = StreamingHttpResponse(
        stream, content_type=f'{MULTIPART_RELATED}; type="{media_type}"; boundary={boundary}'
    )
    if req.skipped:
        response["Warning"] = warning_header(
            req.request,
            f"{req.skipped} instance(s) have no rendered image (no pixel data, or a transfer "
            "syntax that is not rendered) and are left out.",
        )
    return response


def rendered_response(
    *,
    request: HttpRequest,
    org: Organization,
    actor: Actor,
    study: Study,
    series: Series | None,
    instances: list[Instance],
    level: str,
    frames: str | None = None,
) -> HttpResponseBase:
    """The rendered study, series, instance (``level``) or frames of ``instances`` (already
    scoped to ``org``, in the study's order; their ``series`` loaded)."""
    several = level in ("study", "series") or (
        frames is not None and "," in frames.replace("%2C", ",")
    )
    options, multipart = rendering_options(request, multipart=several)
    if level in ("study", "series"):
        renderable = [i for i in instances if render_problem(i) is None]
        skipped = len(instances) - len(renderable)
        if not renderable:
            what = (
                f"Series {series.series_uid}" if series is not None else f"Study {study.study_uid}"
            )
            reason = render_problem(instances[0]) if instances else "it has no instances"
            raise NotRenderable(
                f"{what} has no instance that can be rendered (for example: {reason})"
            )
        targets = [Target(i) for i in renderable]
        return _respond(
            RenderRequest(
                request, org, actor, study, series, targets, options, True, skipped=skipped
            )
        )
    (instance,) = instances
    problem = render_problem(instance)
    if problem is not None:
        raise NotRenderable(problem)
    if frames is None:
        targets = [Target(instance, 1)]
    else:
        targets = [
            Target(instance, n) for n in parse_frame_list(frames, frames=frame_count(instance))
        ]
    return _respond(
        RenderRequest(
            request,
            org,
            actor,
            study,
            series,
            targets,
            options,
            multipart or len(targets) > 1,
            frame_list=frames is not None,
            single=instance,
        )
    )
