"""Valid DICOM objects made here, for the demo hospital, the tests and the benchmarks.

CT and MR single-frame images and a multi-frame breast tomosynthesis object, with plausible
patient/study/series attributes and pixel data of the requested size. Nothing is real patient data.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    BreastTomosynthesisImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "MG": BreastTomosynthesisImageStorage}


@dataclass
class StudySpec:
    patient_id: str
    patient_name: str
    modality: str
    study_uid: str
    accession: str
    study_date: dt.date
    description: str
    birth_date: dt.date = dt.date(1970, 1, 1)
    sex: str = "O"


def study_spec(
    modality: str = "CT", *, rng: random.Random | None = None, study_date: dt.date | None = None
) -> StudySpec:
    rng = rng or random.Random()
    n = rng.randint(10000, 99999)
    given = rng.choice(["Ada", "Alan", "Grace", "Marie", "Rosalind", "Niels", "Lise", "Emmy"])
    family = rng.choice(
        ["Lovelace", "Turing", "Hopper", "Curie", "Franklin", "Bohr", "Meitner", "Noether"]
    )
    descriptions = {
        "CT": "CT CHEST W CONTRAST",
        "MR": "MR BRAIN WO CONTRAST",
        "MG": "MAMMO TOMO SCREENING BILAT",
    }
    return StudySpec(
        patient_id=f"PAT{n}",
        patient_name=f"{family}^{given}",
        modality=modality,
        study_uid=generate_uid(),
        accession=f"ACC{rng.randint(100000, 999999)}",
        study_date=study_date or dt.date.today() - dt.timedelta(days=rng.randint(0, 30)),
        description=descriptions.get(modality, f"{modality} STUDY"),
        birth_date=dt.date(rng.randint(1940, 2010), rng.randint(1, 12), rng.randint(1, 28)),
        sex=rng.choice(["F", "M"]),
    )


def make_instance(
    spec: StudySpec,
    *,
    series_uid: str,
    series_number: int = 1,
    instance_number: int = 1,
    rows: int = 256,
    columns: int = 256,
    frames: int = 1,
    sop_instance_uid: str | None = None,
    seed: int = 0,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES.get(spec.modality, CTImageStorage)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date.strftime("%Y%m%d")
    ds.PatientSex = spec.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = spec.accession[-6:]
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = spec.description
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{spec.modality} series {series_number}"
    ds.Modality = spec.modality
    ds.BodyPartExamined = {"CT": "CHEST", "MR": "HEAD", "MG": "BREAST"}.get(spec.modality, "")
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = _pixels(rows, columns, frames, seed or instance_number)
    return ds


@functools.lru_cache(maxsize=64)
def _pixels(rows: int, columns: int, frames: int, seed: int) -> bytes:
    """A smooth gradient with a little noise: looks like an image, compresses like one. The same
    for the same arguments (kept for reuse: the demo makes hundreds of images of a few shapes)."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    base = ((x + y) * (4000 / max(rows + columns, 1))).astype(np.uint16)
    pixels = np.repeat(base[None, :, :], frames, axis=0) + generator.integers(
        0, 64, size=(frames, rows, columns), dtype=np.uint16
    )
    return pixels.astype(np.uint16).tobytes()


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def demo_studies(*, seed: int = 7) -> list[list[Dataset]]:
    """A CT (2 series), an MR and a multi-frame tomosynthesis study: the demo hospital's first images."""
    rng = random.Random(seed)
    studies: list[list[Dataset]] = []
    ct = study_spec("CT", rng=rng)
    ct_series = [generate_uid(), generate_uid()]
    studies.append(
        [
            make_instance(
                ct,
                series_uid=s,
                series_number=i + 1,
                instance_number=n + 1,
                rows=256,
                columns=256,
                seed=n + 1,
            )
            for i, s in enumerate(ct_series)
            for n in range(6)
        ]
    )
    mr = study_spec("MR", rng=rng)
    mr_series = generate_uid()
    studies.append(
        [
            make_instance(
                mr, series_uid=mr_series, instance_number=n + 1, rows=192, columns=192, seed=n + 50
            )
            for n in range(8)
        ]
    )
    mg = study_spec("MG", rng=rng)
    studies.append(
        [
            make_instance(
                mg,
                series_uid=generate_uid(),
                instance_number=1,
                rows=256,
                columns=192,
                frames=24,
                seed=99,
            )
        ]
    )
    return studies
