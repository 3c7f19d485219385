"""Names inside a study's ZIP download, as a person browsing the unzipped folders reads them:

    Curie, Marie (PAT10001)/2026-12-07 CT CT CHEST W CONTRAST/001 CT AXIAL 3mm/00001-<SOP UID>.dcm

one folder per patient, then per study (date, modalities, description), then per series (number,
modality, description); each file keeps its instance number and SOP Instance UID, so that every
name is unique and traceable to the index.

Every part comes from index rows, which may hold anything (rows written before input was
validated, hostile headers): a part keeps letters and digits of any script, space and
``- _ , . ( ) '`` only; other white space becomes a space, anything else (``/``, ``\\``, ``:``, control characters, ...) becomes a
``-``; runs of dots collapse (never ``..``); dots, spaces and dashes are trimmed from the ends
(Windows drops trailing ones); Windows device names (``CON``, ``NUL``, ``COM1``, ...) get a ``_``
in front; each folder name is cut to a length that keeps the whole path under Windows' 260
characters. A part left empty falls back to a fixed word (``Unknown patient``, ``Study``,
``Series``). Two series whose folder names come out the same get `` (2)``, `` (3)``... in the
order the ZIP lists them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from archive.models import Series, Study
from tenants.labels import person_name_label

PATIENT_MAX = 48
STUDY_MAX = 64
SERIES_MAX = 48

_KEPT_PUNCTUATION = frozenset(" -_,.()'")
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10)]
)
# PS3.5 9.1: digits and dots, at most 64 characters. Only such a UID names a ZIP entry as it is.
_SAFE_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SAFE_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")


def safe_name(text: str, *, max_length: int, fallback: str) -> str:
    """``text`` as one folder or file name that no unzip tool takes for a path (see above)."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(
        ch if ch.isalnum() or ch in _KEPT_PUNCTUATION else " " if ch.isspace() else "-"
        for ch in text
    )
    kept = re.sub(r"\.{2,}", ".", kept)
    kept = re.sub(r"\s+", " ", re.sub(r"-{2,}", "-", kept))
    name = kept.strip(" .-")[:max_length].strip(" .-")
    if not name:
        return fallback
    if name.split(".")[0].strip().upper() in _WINDOWS_DEVICES:
        name = f"_{name}"
    return name


def zip_name_part(uid: str) -> str:
    """A UID as (part of) a ZIP entry's file name: as it is when it follows the DICOM UID grammar,
    else ``uid-`` and a hash of it (never ``/``, ``\\``, ``..`` or a NUL)."""
    if len(uid) <= 64 and _SAFE_UID.fullmatch(uid):
        return uid
    return "uid-" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def patient_folder(study: Study) -> str:
    """``Curie, Marie (PAT10001)``: the person name as people read it, then the patient ID."""
    name = person_name_label(study.patient_name)
    patient_id = study.patient_id.strip()
    text = f"{name} ({patient_id})" if name and patient_id else name or patient_id
    return safe_name(text, max_length=PATIENT_MAX, fallback="Unknown patient")


def _modality(value: str | None) -> str:
    return value if value and _SAFE_MODALITY.fullmatch(value) else ""


def study_folder(study: Study) -> str:
    """``2026-12-07 CT CT CHEST W CONTRAST``: study date, modalities, description."""
    parts = [
        study.study_date.isoformat() if study.study_date else "",
        " ".join(m for m in study.modality_list if _modality(m)),
        study.study_description,
    ]
    return safe_name(" ".join(p for p in parts if p), max_length=STUDY_MAX, fallback="Study")


def series_folder(series: Series) -> str:
    """``001 CT AXIAL 3mm``: series number (three digits), modality, description."""
    parts = [
        f"{series.series_number:03d}" if series.series_number is not None else "",
        _modality(series.modality),
        series.series_description,
    ]
    return safe_name(" ".join(p for p in parts if p), max_length=SERIES_MAX, fallback="Series")


@dataclass
class SeriesFolders:
    """Each series' folder name, unique within one ZIP: a repeated name gets `` (2)``, ..."""

    _by_series: dict[int, str] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)

    def name(self, series: Series) -> str:
        known = self._by_series.get(series.pk)
        if known is not None:
            return known
        base = name = series_folder(series)
        n = 1
        # Case-insensitive: Windows and macOS unzip "CT" and "ct" into one folder.
        while name.casefold() in self._taken:
            n += 1
            name = f"{base} ({n})"
        self._taken.add(name.casefold())
        self._by_series[series.pk] = name
        return name
