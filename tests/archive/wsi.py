"""Whole-slide images for the tests and the benchmark (no tests here): a VL Whole Slide Microscopy
Image of JPEG baseline tiles (PS3.3 A.32.8), written frame by frame to disk so that memory stays
that of one tile whatever the slide's size.

Tiles are encoded by Pillow: a few distinct ones (textures of stained tissue, cheap to make),
reused across the slide, each frame made unique by a JPEG comment segment naming its number
(``tile_bytes`` gives any frame's bytes back). The pixel data is encapsulated with an empty Basic
Offset Table, as most slide scanners write it, or with a Basic or an Extended Offset Table.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, JPEGBaseline8Bit, generate_uid

from archive.synthetic import write

WSI_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.6")  # VL Whole Slide Microscopy Image Storage
DISTINCT_TILES = 16


@dataclass
class Slide:
    """A slide written by ``write_slide``; ``tile_bytes(n)`` is frame n's data (from 1)."""

    path: Path
    frames: int
    tile: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    pool: list[bytes] = field(repr=False, default_factory=list)

    def tile_bytes(self, number: int) -> bytes:
        return _numbered(self.pool[(number - 1) % len(self.pool)], number)

    @property
    def largest_tile(self) -> int:
        return max(map(len, self.pool)) + 16


def _texture(size: int, seed: int) -> Image.Image:
    """A tile of pink and purple blobs over noise: what H&E-stained tissue compresses like."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, 3), np.float32)
    image[:] = (236, 200, 222)  # the slide's background
    for _ in range(12):
        cx, cy, r = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        colour = np.array((120, 40, 140) if rng.random() < 0.5 else (200, 80, 150), np.float32)
        image = image * (1 - 0.8 * blob) + colour * 0.8 * blob
    image += rng.normal(0, 14, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def tile_pool(size: int, count: int = DISTINCT_TILES, quality: int = 90) -> list[bytes]:
    """``count`` distinct JPEG baseline tiles, 4:2:2 (YBR_FULL_422), each of even length."""
    pool = []
    for seed in range(count):
        out = io.BytesIO()
        _texture(size, seed).save(out, "JPEG", quality=quality, subsampling=1)
        pool.append(out.getvalue())
    return pool


def _numbered(tile: bytes, number: int) -> bytes:
    """``tile`` with a comment segment after its SOI marker naming the frame (even length)."""
    text = f"frame {number}".encode()
    if (len(tile) + 4 + len(text)) % 2:
        text += b" "
    return tile[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + tile[2:]


def _item(data: bytes, tag: int = 0xE000) -> bytes:
    return struct.pack("<HHL", 0xFFFE, tag, len(data)) + data


def _header(*, tile: int, columns: int, rows: int, frames: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = WSI_STORAGE
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = WSI_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC-WSI"
    ds.Modality = "SM"
    ds.Manufacturer = "Strata test slide scanner"
    ds.PatientName = "Slide^Test"
    ds.PatientID = "PAT-WSI"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ContainerIdentifier = "SLIDE-1"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns = columns
    ds.TotalPixelMatrixRows = rows
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = tile
    ds.Columns = tile
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    return ds


def write_slide(
    path: Path,
    *,
    megabytes: float,
    tile: int = 256,
    offset_table: str = "none",
    pool: list[bytes] | None = None,
) -> Slide:
    """A slide of about ``megabytes`` MB of tiles, written to ``path`` one tile at a time.

    ``offset_table``: ``none`` (an empty Basic Offset Table), ``basic`` or ``extended`` (the
    Extended Offset Table and its lengths, an empty Basic Offset Table).
    """
    pool = pool or tile_pool(tile)
    average = sum(map(len, pool)) / len(pool) + 16
    frames = max(1, int(megabytes * 1e6 / average))
    across = max(1, round(frames**0.5))
    down = -(-frames // across)
    frames = across * down
    ds = _header(tile=tile, columns=across * tile, rows=down * tile, frames=frames)
    offsets = list(_offsets(pool, frames))
    if offset_table == "extended":
        ds.ExtendedOffsetTable = struct.pack(f"<{frames}Q", *offsets[:-1])
        lengths = [b - a - 8 for a, b in zip(offsets, offsets[1:], strict=False)]
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{frames}Q", *lengths)
    write(ds, path)
    table = struct.pack(f"<{frames}L", *offsets[:-1]) if offset_table == "basic" else b""
    with open(path, "ab") as out:
        out.write(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")  # Pixel Data, undefined length
        out.write(_item(table))
        for number in range(1, frames + 1):
            out.write(_item(_numbered(pool[(number - 1) % len(pool)], number)))
        out.write(_item(b"", 0xE0DD))
    return Slide(
        path=path,
        frames=frames,
        tile=tile,
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        pool=pool,
    )


def _offsets(pool: list[bytes], frames: int) -> Iterator[int]:
    """Each frame's item offset from the first fragment's, then the end (a Basic Offset Table
    holds 32-bit offsets: a slide above 4 GiB has an Extended one)."""
    at = 0
    for number in range(1, frames + 1):
        yield at
        at += 8 + len(_numbered(pool[(number - 1) % len(pool)], number))
    yield at
