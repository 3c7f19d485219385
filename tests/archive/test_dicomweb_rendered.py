"""WADO-RS rendered resources: each rendering is compared with a reference computed here from
pydicom's own pixel_array and the PS3.3 grayscale pipeline (rescale, window, MONOCHROME1), for
native, color and every compressed family pydicom's test files have; the query parameters, the
Accept negotiation, the study and series multiparts and every refusal (no pixel data, a width of
0, a syntax no handler decodes, bad viewport and quality values, the archive tier, another
organization) under WADO-RS's reading rules."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pydicom
import pytest
from django.utils.http import parse_header_parameters
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive.dicomweb import rendered
from archive.ingest import pipeline
from archive.models import AccessEvent, Instance, RestoreRequest
from archive.storage import store_for
from archive.storage.s3 import S3Store
from archive.synthetic import make_instance, study_spec, to_bytes
from billing.models import UsageEvent
from tests.archive.test_restores_support import to_tier

pytest_plugins = ["tests.archive.conftest_s3"]
pytestmark = pytest.mark.django_db


# --- instances ------------------------------------------------------------------------------


class Stored:
    """Instances stored for one test: their datasets as sent, and URLs."""

    def __init__(self, org: Any, datasets: list[Dataset]):
        self.datasets = datasets
        store = store_for(pipeline.location_primary(org))
        for ds in datasets:
            result = pipeline.instance_ingest(
                org=org, spooled=pipeline.spool_file(store, io.BytesIO(to_bytes(ds)))
            )
            assert result.status == "stored", result.reason

    def study(self, index: int = 0) -> str:
        return f"/dicomweb/studies/{self.datasets[index].StudyInstanceUID}"

    def series(self, index: int = 0) -> str:
        return f"{self.study(index)}/series/{self.datasets[index].SeriesInstanceUID}"

    def instance(self, index: int = 0) -> str:
        return f"{self.series(index)}/instances/{self.datasets[index].SOPInstanceUID}"


def ct(
    *,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    number: int = 1,
    window: tuple[float, float] | None = (1000.0, 2000.0),
) -> Dataset:
    """A CT image with Rescale Slope/Intercept (HU) and its own window."""
    spec = study_spec("CT")
    if study_uid:
        spec.study_uid = study_uid
    ds = make_instance(
        spec,
        series_uid=series_uid or generate_uid(),
        instance_number=number,
        rows=rows,
        columns=columns,
        frames=frames,
        seed=number,
    )
    ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-1024"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = [f"{window[0]:g}", "50"], [f"{window[1]:g}", "10"]
    return ds


def from_testdata(name: str, **changes: Any) -> Dataset:
    """A pydicom test file with new UIDs (the files share theirs), kept in its transfer syntax."""
    ds = pydicom.dcmread(str(get_testdata_file(name)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = ds.get("PatientID") or "PAT-R"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


def image_of(response) -> np.ndarray:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    body = response.content
    assert int(response["Content-Length"]) == len(body)
    return np.asarray(Image.open(io.BytesIO(body)))


# --- the reference rendering ----------------------------------------------------------------


def first(value: Any) -> float:
    return float(value[0] if isinstance(value, (list, pydicom.multival.MultiValue)) else value)


def reference(
    ds: Dataset, *, frame: int = 0, window: tuple[float, float, str] | None = None
) -> np.ndarray:
    """PS3.3 C.11: rescale, the window (asked, else the image's first, else min to max), and
    MONOCHROME1 inverted, into 8 bits; written out here, independently of the server."""
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames") or 1) > 1:
        pixels = pixels[frame]
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    if window is None and "WindowCenter" in ds:
        window = (first(ds.WindowCenter), first(ds.WindowWidth), "linear")
    if window is None:
        low, high = values.min(), values.max()
        window = ((low + high) / 2, max(high - low, 1), "linear-exact")
    c, w, function = window
    if function == "linear":
        y = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    elif function == "linear-exact":
        y = np.clip((values - c) / w + 0.5, 0, 1)
    else:
        y = 1 / (1 + np.exp(-4 * (values - c) / w))
    y = y * 255
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 255 - y
    return np.rint(y)


def assert_close(actual: np.ndarray, expected: np.ndarray, *, lossy: bool) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if lossy:  # JPEG: close on average and nearly everywhere
        assert difference.mean() < 2.5, difference.mean()
        assert np.percentile(difference, 99) < 16
        assert abs(actual.mean() - expected.mean()) < 1.5
    else:
        assert difference.max() <= 1, difference.max()


# --- rendering against the reference --------------------------------------------------------


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
def test_ct_with_rescale_and_its_own_window(org, reader, media_type):
    ds = ct(rows=128, columns=96)
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT=media_type))

    assert image.dtype == np.uint8 and image.ndim == 2
    assert_close(image, reference(ds), lossy=media_type == "image/jpeg")


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_the_window_parameter_replaces_the_images_own(org, reader, function):
    ds = ct()
    stored = Stored(org, [ds])

    image = image_of(
        reader.get(
            f"{stored.instance()}/rendered?window=2500,3000,{function}", HTTP_ACCEPT="image/png"
        )
    )

    assert_close(image, reference(ds, window=(2500, 3000, function)), lossy=False)
    assert not np.array_equal(image, reference(ds))


@pytest.mark.parametrize(
    "window", ["1e300,1e-300,sigmoid", "-1e300,1e300,linear-exact", "0,1,linear", "1e308,1e308"]
)
def test_extreme_windows_render_without_error(org, reader, window):
    stored = Stored(org, [ct()])

    image = image_of(
        reader.get(f"{stored.instance()}/rendered?window={window}", HTTP_ACCEPT="image/png")
    )

    assert image.dtype == np.uint8


def test_without_a_window_the_frame_range_is_shown(org, reader):
    ds = ct(window=None)
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    assert_close(image, reference(ds), lossy=False)
    assert image.min() == 0 and image.max() == 255


def test_monochrome1_is_inverted(org, reader):
    ds = ct(window=None)
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME1"
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    assert_close(image, reference(ds), lossy=False)
    # The darkest stored value is shown white.
    low = np.unravel_index(np.argmin(ds.pixel_array), ds.pixel_array.shape)
    assert image[low] == 255


def test_a_512_ct_renders_as_baseline_jpeg(org, reader):
    ds = ct(rows=512, columns=512)
    stored = Stored(org, [ds])

    response = reader.get(f"{stored.instance()}/rendered")

    assert response["Content-Type"] == "image/jpeg"
    opened = Image.open(io.BytesIO(response.content))
    assert opened.format == "JPEG" and opened.mode == "L" and opened.size == (512, 512)
    assert not opened.info.get("progressive")
    assert_close(np.asarray(opened), reference(ds), lossy=True)


GRAYSCALE_FILES = [
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000, a CT with rescale
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # native, big endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
]


@pytest.mark.parametrize(("name", "syntax"), GRAYSCALE_FILES, ids=[n for n, _ in GRAYSCALE_FILES])
def test_grayscale_syntaxes_against_pydicom(org, reader, name, syntax):
    ds = from_testdata(name)
    assert ds.file_meta.TransferSyntaxUID == syntax
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    assert_close(image, reference(ds), lossy=False)


COLOR_FILES = [
    ("examples_rgb_color.dcm", "1.2.840.10008.1.2.1"),  # native RGB
    ("SC_ybr_full_422_uncompressed.dcm", "1.2.840.10008.1.2.1"),  # native YBR_FULL_422
    ("SC_rgb_dcmtk_+eb+cr.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline, RGB
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline, YBR_FULL
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless
    ("SC_rgb_jls_lossy_line.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("SC_rgb_gdcm_KY.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5"),  # RLE
    ("SC_rgb_rle_16bit.dcm", "1.2.840.10008.1.2.5"),  # RLE, 16 bits per sample
]


@pytest.mark.parametrize(("name", "syntax"), COLOR_FILES, ids=[n for n, _ in COLOR_FILES])
def test_color_syntaxes_against_pydicom(org, reader, name, syntax):
    ds = from_testdata(name)
    assert ds.file_meta.TransferSyntaxUID == syntax
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    expected = ds.pixel_array.astype(np.float64)  # pydicom converts YBR to RGB
    if ds.BitsAllocated == 16:
        expected = expected * 255 / 65535
    assert image.shape == (ds.Rows, ds.Columns, 3)
    assert_close(image, np.rint(expected), lossy=False)


@pytest.mark.parametrize("entries", [256, 4096], ids=["in-the-index", "from-the-object"])
def test_a_voi_lut_without_a_window(org, reader, monkeypatch, entries):
    # 256 entries are kept in the index's metadata; 4096 (8 KiB) are read from the object.
    ds = ct(window=None)
    del ds.RescaleSlope, ds.RescaleIntercept
    bits = 12
    lut = (np.sqrt(np.linspace(0, 1, entries)) * (2**bits - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, 0, bits])  # LUT Descriptor
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    ds.VOILUTSequence = pydicom.Sequence([item])
    stored = Stored(org, [ds])
    headers_read = []
    original = rendered._header_from_object
    monkeypatch.setattr(
        rendered,
        "_header_from_object",
        lambda *args: headers_read.append(1) or original(*args),
    )

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    assert len(headers_read) == (entries == 4096)
    expected = lut[np.clip(ds.pixel_array.astype(int), 0, entries - 1)] / (2**bits - 1) * 255
    assert_close(image, np.rint(expected), lossy=False)


def test_enhanced_multiframe_uses_each_frames_functional_groups(org, reader):
    ds = ct(frames=2, window=None)
    del ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = "2", "-100"
    shared.PixelValueTransformationSequence = pydicom.Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    per_frame = []
    for center, width in ((3000.0, 4000.0), (500.0, 800.0)):
        group, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = f"{center:g}", f"{width:g}"
        group.FrameVOILUTSequence = pydicom.Sequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(per_frame)
    stored = Stored(org, [ds])

    for number, (center, width) in ((1, (3000, 4000)), (2, (500, 800))):
        image = image_of(
            reader.get(f"{stored.instance()}/frames/{number}/rendered", HTTP_ACCEPT="image/png")
        )
        plain = ds.copy()
        plain.RescaleSlope, plain.RescaleIntercept = "2", "-100"
        expected = reference(plain, frame=number - 1, window=(center, width, "linear"))
        assert_close(image, expected, lossy=False)


def test_palette_color_goes_through_its_palette(org, reader):
    ds = from_testdata("examples_palette.dcm")
    stored = Stored(org, [ds])

    image = image_of(reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT="image/png"))

    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds) / 65535 * 255
    assert_close(image, np.rint(expected), lossy=False)


def test_jpeg_quality_and_gif(org, reader):
    ds = ct(rows=256, columns=256)
    stored = Stored(org, [ds])
    url = f"{stored.instance()}/rendered"

    low = reader.get(f"{url}?quality=10")
    high = reader.get(f"{url}?quality=100")
    gif = reader.get(url, HTTP_ACCEPT="image/gif")

    assert len(low.content) < len(high.content) / 2
    assert_close(image_of(high), reference(ds), lossy=True)
    assert gif["Content-Type"] == "image/gif"
    assert Image.open(io.BytesIO(gif.content)).format == "GIF"
    assert_close(
        np.asarray(Image.open(io.BytesIO(gif.content)).convert("L")), reference(ds), lossy=False
    )


# --- viewport -----------------------------------------------------------------------------


def test_viewport_scales_to_fit_keeping_the_aspect_ratio(org, reader):
    ds = ct(rows=100, columns=200)
    stored = Stored(org, [ds])

    image = image_of(
        reader.get(f"{stored.instance()}/rendered?viewport=50,50", HTTP_ACCEPT="image/png")
    )

    assert image.shape == (25, 50)
    expected = np.asarray(
        Image.fromarray(reference(ds).astype(np.uint8)).resize((50, 25), Image.Resampling.BILINEAR)
    )
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3


def test_viewport_region_crops_and_flips(org, reader):
    ds = ct(rows=64, columns=64)
    stored = Stored(org, [ds])
    url = f"{stored.instance()}/rendered"

    region = image_of(reader.get(f"{url}?viewport=20,10,8,4,20,10", HTTP_ACCEPT="image/png"))
    flipped = image_of(reader.get(f"{url}?viewport=20,10,8,4,-20,-10", HTTP_ACCEPT="image/png"))
    defaults = image_of(reader.get(f"{url}?viewport=64,64,,,,", HTTP_ACCEPT="image/png"))

    expected = reference(ds)[4:14, 8:28]
    assert_close(region, expected, lossy=False)
    assert_close(flipped, expected[::-1, ::-1], lossy=False)
    assert_close(defaults, reference(ds), lossy=False)


# --- annotation ---------------------------------------------------------------------------


def test_annotation_writes_text_in_the_corner_only(org, reader):
    ds = ct(rows=256, columns=256, window=(-3000, 10))  # all white: any text shows dark
    stored = Stored(org, [ds])
    url = f"{stored.instance()}/rendered"

    plain = image_of(reader.get(url, HTTP_ACCEPT="image/png"))
    annotated = image_of(reader.get(f"{url}?annotation=patient,technique", HTTP_ACCEPT="image/png"))
    patient = image_of(reader.get(f"{url}?annotation=patient", HTTP_ACCEPT="image/png"))

    changed = np.argwhere(plain != annotated)
    assert len(changed) > 100
    assert changed[:, 1].max() < 200 and changed[:, 0].max() < 160  # the top left
    assert np.count_nonzero(patient != plain) < np.count_nonzero(annotated != plain)


def test_annotation_lines_name_patient_and_technique(org):
    ds = ct()
    ds.NumberOfFrames = 1
    Stored(org, [ds])
    instance = Instance.objects.for_org(org).select_related("series", "study", "location").get()
    frame = rendered.frame_read(instance, 1)

    lines = rendered.annotation_lines(
        ("patient", "technique"),
        study=instance.study,
        instance=instance,
        frame=frame,
        applied=rendered.Applied(window=rendered.Window(1000, 2000, "LINEAR")),
    )

    family, given = str(ds.PatientName).split("^")[:2]
    assert lines[0] == f"{family}, {given}"
    assert ds.PatientID in lines[1]
    assert lines[2].startswith("CT")
    assert "W 2000  C 1000" in lines
    assert "64 x 64" in lines


# --- frames -------------------------------------------------------------------------------


def test_a_frame_and_a_frame_list(org, reader):
    ds = ct(frames=3, window=None)
    stored = Stored(org, [ds])
    url = stored.instance()

    second = image_of(reader.get(f"{url}/frames/2/rendered", HTTP_ACCEPT="image/png"))
    instance = image_of(reader.get(f"{url}/rendered", HTTP_ACCEPT="image/png"))
    response = reader.get(f"{url}/frames/3,1/rendered", HTTP_ACCEPT="image/png")

    assert_close(second, reference(ds, frame=1), lossy=False)
    assert_close(instance, reference(ds, frame=0), lossy=False)  # the first frame
    parts = multipart(response, "image/png")
    assert [headers["content-location"].rsplit("/", 2)[-2] for headers, _ in parts] == ["3", "1"]
    assert_close(
        np.asarray(Image.open(io.BytesIO(parts[0][1]))), reference(ds, frame=2), lossy=False
    )


@pytest.mark.parametrize("frames", ["0", "4", "1,1", "1,x", "-1", "99999999999"])
def test_bad_frame_numbers_are_400(org, reader, frames):
    stored = Stored(org, [ct(frames=3)])

    response = reader.get(f"{stored.instance()}/frames/{frames}/rendered")

    assert response.status_code == 400
    assert "frames" in response.json()["error"]["fields"]


# --- study and series: multipart ----------------------------------------------------------


def multipart(response, part_type: str) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, getattr(response, "content", b"")[:300]
    media_type, params = parse_header_parameters(response["Content-Type"])
    assert media_type == "multipart/related" and params["type"] == part_type
    body = b"".join(response.streaming_content)
    pieces = (b"\r\n" + body).split(b"\r\n--" + params["boundary"].encode())
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        head, _, content = piece.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").strip().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == part_type
        assert int(headers["content-length"]) == len(content)
        parts.append((headers, content))
    return parts


def sr_in(study_uid: str) -> Dataset:
    ds = from_testdata("test-SR.dcm")
    ds.StudyInstanceUID = study_uid
    return ds


def test_series_and_study_render_each_instance_in_order(org, reader):
    study_uid, series_uid = generate_uid(), generate_uid()
    images = [ct(study_uid=study_uid, series_uid=series_uid, number=n) for n in (2, 1, 3)]
    report = sr_in(study_uid)
    stored = Stored(org, [*images, report])

    series = reader.get(f"{stored.series()}/rendered")
    study = reader.get(
        f"{stored.study()}/rendered", HTTP_ACCEPT='multipart/related; type="image/png"'
    )

    series_parts = multipart(series, "image/jpeg")
    by_number = sorted(images, key=lambda d: d.InstanceNumber)
    assert [h["content-location"].split("/")[-2] for h, _ in series_parts] == [
        str(d.SOPInstanceUID) for d in by_number
    ]
    for (_, content), ds in zip(series_parts, by_number, strict=True):
        assert_close(np.asarray(Image.open(io.BytesIO(content))), reference(ds), lossy=True)
    study_parts = multipart(study, "image/png")
    assert len(study_parts) == 3  # the report has no image
    assert "1 instance(s) have no rendered image" in study["Warning"]
    events = AccessEvent.objects.for_org(org).order_by("id")
    assert [(e.kind, e.instances) for e in events] == [("retrieve", 3), ("retrieve", 3)]
    assert events[1].bytes == sum(len(c) for _, c in study_parts)


def test_study_of_reports_only_is_406(org, reader):
    stored = Stored(org, [sr_in(generate_uid())])

    response = reader.get(f"{stored.study()}/rendered")

    assert response.status_code == 406
    assert "no instance that can be rendered" in response.json()["error"]["message"]


# --- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        ("", "", "image/jpeg"),
        ("*/*", "", "image/jpeg"),
        ("image/*", "", "image/jpeg"),
        ("image/webp, image/png;q=0.9, */*;q=0.1", "", "image/png"),
        ("image/gif", "", "image/gif"),
        ("application/dicom", "accept=image/png", "image/png"),
        ("image/png", "accept=image%2Fjpeg", "image/jpeg"),
    ],
)
def test_accept_negotiation(org, reader, accept, query, expected):
    stored = Stored(org, [ct()])
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    response = reader.get(f"{stored.instance()}/rendered?{query}", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == expected


@pytest.mark.parametrize(
    "accept",
    ["application/dicom", "image/webp", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"],
)
def test_not_acceptable_names_what_can_be_served(org, reader, accept):
    stored = Stored(org, [ct()])

    response = reader.get(f"{stored.instance()}/rendered", HTTP_ACCEPT=accept)

    assert response.status_code == 406
    message = response.json()["error"]["message"]
    assert "image/jpeg, image/png, image/gif" in message and accept[:20] in message
    assert not AccessEvent.objects.exists()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("window=40,0", "window"),
        ("window=40,0,linear-exact", "window"),
        ("window=40,0.5,linear", "window"),
        ("window=40,-5,sigmoid", "window"),
        ("window=40", "window"),
        ("window=a,b", "window"),
        ("window=40,400,cubic", "window"),
        ("window=nan,400", "window"),
        ("window=40,400&window=50,100", "window"),
        ("viewport=0,100", "viewport"),
        ("viewport=100", "viewport"),
        ("viewport=5000,100", "viewport"),
        ("viewport=a,b", "viewport"),
        ("viewport=10,10,0,0,0,10", "viewport"),
        ("viewport=10,10,-1,0,5,5", "viewport"),
        ("viewport=10,10,60,0,10,10", "viewport"),
        ("viewport=10,10,0,0,65,10", "viewport"),
        ("viewport=10,10,1,2", "viewport"),
        ("quality=0", "quality"),
        ("quality=101", "quality"),
        ("quality=high", "quality"),
        ("annotation=everything", "annotation"),
        ("iccprofile=srgb", "iccprofile"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(org, reader, query, field):
    stored = Stored(org, [ct()])

    response = reader.get(f"{stored.instance()}/rendered?{query}")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == [field]
    assert not AccessEvent.objects.exists()


@pytest.mark.parametrize("name", ["test-SR.dcm", "waveform_ecg.dcm"])
def test_an_instance_without_pixel_data_is_406_with_a_reason(org, reader, name):
    stored = Stored(org, [from_testdata(name)])

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 406
    error = response.json()["error"]
    assert error["code"] == "not_renderable"
    assert "has no pixel data" in error["message"]
    assert str(stored.datasets[0].SOPInstanceUID) in error["message"]


@pytest.mark.parametrize(
    ("syntax", "name"),
    [
        ("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1"),
        ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.110"),  # JPEG XL: no decoder
    ],
)
def test_a_syntax_no_handler_decodes_is_406_naming_it(org, reader, monkeypatch, syntax, name):
    ds = ct()
    stored = Stored(org, [ds])
    # As if stored so: the refusal comes from the index, before any object is read.
    Instance.objects.for_org(org).update(transfer_syntax_uid=syntax)
    monkeypatch.setattr(rendered, "frame_read", lambda *a: pytest.fail("no read expected"))

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 406
    assert syntax in response.json()["error"]["message"]
    assert name in response.json()["error"]["message"]


def test_pixel_data_that_does_not_decode_is_406_naming_the_syntax(org, reader):
    # 12-bit JPEG Extended that neither pylibjpeg nor Pillow decodes.
    stored = Stored(org, [from_testdata("JPEG-lossy.dcm")])

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 406
    message = response.json()["error"]["message"]
    assert "cannot be decoded" in message and "1.2.840.10008.1.2.4.51" in message
    assert not AccessEvent.objects.exists()


def test_a_frame_too_large_to_render_is_406(org, reader, monkeypatch):
    stored = Stored(org, [ct(rows=64, columns=64)])
    monkeypatch.setattr(rendered, "MAX_FRAME_PIXELS", 64 * 64 - 1)

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 406
    assert "4,096 pixels" in response.json()["error"]["message"]


def test_deflated_is_406_naming_it(org, reader):
    stored = Stored(org, [from_testdata("image_dfl.dcm")])

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 406
    assert "Deflated Explicit VR Little Endian" in response.json()["error"]["message"]


def test_a_missing_object_is_a_clear_503(org, reader, archive_root):
    stored = Stored(org, [ct()])
    instance = Instance.objects.for_org(org).get()
    (archive_root / "hot" / instance.object_key).unlink()

    response = reader.get(f"{stored.instance()}/rendered")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert not AccessEvent.objects.exists()


def test_archive_tier_is_503_with_retry_after_and_a_restore(org, reader):
    study_uid, series_uid = generate_uid(), generate_uid()
    stored = Stored(org, [ct(study_uid=study_uid, series_uid=series_uid, number=n) for n in (1, 2)])
    to_tier(Instance.objects.for_org(org).get(instance_number=2), "archive")

    for url in (f"{stored.instance(1)}/rendered", f"{stored.series()}/rendered"):
        response = reader.get(url)
        assert response.status_code == 503
        assert int(response["Retry-After"]) > 0
        assert response.json()["restore"]["id"] == RestoreRequest.objects.for_org(org).get().pk
    assert reader.get(f"{stored.instance(0)}/rendered").status_code == 200
    assert AccessEvent.objects.for_org(org).count() == 1


def test_another_organizations_uids_are_404(org, other_org, token_client):
    stored = Stored(org, [ct(frames=2)])
    outsider = token_client(other_org, ["dicom:read"])

    for url in (
        f"{stored.study()}/rendered",
        f"{stored.series()}/rendered",
        f"{stored.instance()}/rendered",
        f"{stored.instance()}/frames/1/rendered",
    ):
        response = outsider.get(url)
        assert response.status_code == 404, url
    assert not AccessEvent.objects.exists()


def test_reading_needs_images_read(org, token_client):
    stored = Stored(org, [ct()])

    response = token_client(org, ["dicom:write"]).get(f"{stored.instance()}/rendered")

    assert response.status_code == 403


# --- metering and reading by ranges ---------------------------------------------------------


def test_access_is_recorded_once_with_the_bytes_sent(org, reader):
    stored = Stored(org, [ct()])

    response = reader.get(f"{stored.instance()}/rendered")

    (event,) = AccessEvent.objects.for_org(org)
    assert (event.kind, event.bytes, event.instances) == ("retrieve", len(response.content), 1)
    (egress,) = UsageEvent.objects.filter(organization=org, meter="egress.bytes")
    assert egress.quantity == len(response.content)


def test_an_instance_rendered_marks_only_it_read(org, reader):
    study_uid, series_uid = generate_uid(), generate_uid()
    stored = Stored(org, [ct(study_uid=study_uid, series_uid=series_uid, number=n) for n in (1, 2)])

    reader.get(f"{stored.instance(1)}/rendered")

    read = dict(Instance.objects.for_org(org).values_list("instance_number", "last_accessed_at"))
    assert read[2] is not None and read[1] is None


def test_a_frame_on_s3_is_read_by_ranges(org, reader, s3_bucket, make_bucket_location, monkeypatch):
    make_bucket_location(org, endpoint_url=s3_bucket.endpoint_url, bucket=s3_bucket.name)
    ds = ct(rows=256, columns=256, frames=40, window=None)  # 5 MiB of frames
    ds.add_new(0x60003000, "OW", os.urandom(2 * 1024 * 1024))  # a large value before them
    stored = Stored(org, [ds])
    instance = Instance.objects.for_org(org).select_related("location").get()
    assert instance.location.kind == "s3"
    offsets: list[int] = []
    consumed = [0]
    original = S3Store.iter_bytes

    def counting(self, **kwargs):
        offsets.append(kwargs.get("offset", 0))
        for chunk in original(self, **kwargs):
            consumed[0] += len(chunk)
            yield chunk

    monkeypatch.setattr(S3Store, "iter_bytes", counting)

    image = image_of(reader.get(f"{stored.instance()}/frames/33/rendered", HTTP_ACCEPT="image/png"))

    assert_close(image, reference(ds, frame=32), lossy=False)
    # One ranged read of the frame (its place comes from the index): not the header, not the
    # overlay, not the other frames.
    frame_bytes = 256 * 256 * 2
    assert len(offsets) == 1 and offsets[0] > 32 * frame_bytes + 2 * 1024 * 1024
    assert consumed[0] == frame_bytes
