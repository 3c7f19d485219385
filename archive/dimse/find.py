"""C-FIND SCP (PS3.4 C.4.1): the Patient Root and Study Root Query/Retrieve Information Models,
searched in the index of the called AE title's organization only.

The listener (``archive.dimse.listener``) calls ``c_find`` for every C-FIND request of an admitted
association; it yields ``(status, identifier)`` pairs as pynetdicom's EVT_C_FIND contract says.

Levels: PATIENT (Patient Root only), STUDY, SERIES, IMAGE. A patient is the set of the
organization's studies that share a Patient ID (there is no patient table).

Matching (PS3.4 C.2.2.2) is the index's, the same rules and SQL as QIDO-RS
(``archive.index.query``): single value, wildcards ``*`` and ``?`` on text, list of UIDs
(backslash-separated), ranges on dates and times (``a-b``, ``a-``, ``-b``), universal matching (an
empty value, or ``*`` alone, returns the attribute without matching on it), person names matched
without regard to case. The matching keys: ``MATCHING_KEYS`` below. With fuzzy semantic matching
of person names negotiated (SOP Class Extended Negotiation byte 3 = 1, accepted), PatientName and
ReferringPhysicianName match as QIDO-RS's ``fuzzymatching=true``: every word of the value starts
some word of the name, in any order, without regard to case or accents (``archive.index.names``).

Hierarchical and relational queries (PS3.4 C.4.1.2.1, C.4.1.3.2): a query below the top level
must carry one value of each unique key above its level (PatientID in Patient Root, then
StudyInstanceUID, then SeriesInstanceUID), unless the caller negotiated relational queries with SOP
Class Extended Negotiation (byte 1 = 1) and Strata accepted it: ``sop_extended_answer`` is the
answer (relational queries and fuzzy semantic matching of person names accepted; combined
date-time matching and timezone adjustment declined) for the listener's EVT_SOP_EXTENDED handler.
Relational queries may leave out the keys above their level and match on keys of any level above.

The response identifier holds the keys of the request and nothing else, plus QueryRetrieveLevel,
the unique keys of the query level and the levels above, and SpecificCharacterSet (ISO_IR 192
when a value is not ASCII). Values come from the index: the stored attributes of the entity and
the levels above it, and the computed ones (NumberOfPatientRelatedStudies / Series / Instances,
NumberOfStudyRelatedSeries / Instances, NumberOfSeriesRelatedInstances, ModalitiesInStudy,
SOPClassesInStudy, InstanceAvailability ONLINE or NEARLINE when an instance of it is in the archive
tier, RetrieveAETitle: the called AE title). A key with no value for the entity, or one Strata does
not know, comes back empty. A key Strata does not match on (a return key, a key of a lower level,
a sequence, a private attribute) that was sent with a value is not matched on: the responses then
say 0xFF01 (PS3.4 C.4.1.1.4, "one or more Optional Keys were not supported").

Statuses (every failure carries an Error Comment, at most 64 characters; the value problems also
name the attribute in Offending Element):

    0xFF00  pending: a match
    0xFF01  pending: a match; a key with a value was not matched on (see above)
    0x0000  success: every match was sent
    0xFE00  cancel: a C-FIND-CANCEL arrived; no more matches are sent after the batch being
            sent (see Sending)
    0xA700  refused, out of resources: more than ``DIMSE_FIND_MAX_RESULTS`` entities match; the
            first ``DIMSE_FIND_MAX_RESULTS`` (in search order) were sent as pending responses,
            the comment says to narrow the query
    0xA900  identifier does not match SOP class: QueryRetrieveLevel missing or not a level of
            the information model; a unique key above the level missing, or not one value, in a
            hierarchical query; a matching value that is not valid for its attribute (a date
            range that is no range, a wildcard in a UID, an impossible time...)
    0xC000  unable to process: the identifier cannot be decoded
    0xC001  unable to process: the index could not be read (retry later)
    0x0124  refused, not authorised: the association was not admitted

Sending: over a Little Endian transfer syntax (Implicit or Explicit VR; nearly every caller) the
pending responses are encoded here, the command set once per query and the identifiers straight
from the index's DICOM JSON (the bytes pydicom would write; other kinds of attributes are left
to pydicom), and handed to the association's network thread in batches of ``BATCH_BYTES`` of
identifiers (``DirectAnswer``), a response's command and identifier in one PDU when they fit.
A C-FIND-CANCEL is looked for between two batches. pynetdicom's per-response path (a pydicom data
set per command and per identifier, a state-machine round and a wake-up of the network thread
per PDU) cost the listener about 1 ms of CPU per match: 83 ms for a name query with 84 matches
at 1M studies, 12 ms this way (bench/dimse_qr.py). Big Endian and Deflated associations go
through pynetdicom, one response at a time.

Order of the matches: patients by Patient ID; studies newest first (undated last); series and
instances by number, as QIDO-RS. A C-FIND is a read of metadata: like QIDO-RS it writes no access
event and no audit entry (WADO-RS and retrieves do); one log line per query says who asked, the
organization, the level, the matches sent, the final status and the time taken (search, total),
never the identifier's values.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Q, Sum
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from archive.dimse import activity
from archive.dimse.indexer import db_serial
from archive.dimse.peer import Peer
from archive.index.query import KEYS, PREFIX, Key, availability, key_condition, level_queryset
from archive.index.query import ordered as index_ordered
from archive.ingest.dicom import uid_problem
from archive.models import Instance, Series, Study
from tenants.errors import ValidationFailed
from tenants.models import Organization

logger = logging.getLogger("archive.dimse")

# Statuses; see the module docstring.
PENDING = 0xFF00
PENDING_WARNING = 0xFF01
SUCCESS = 0x0000
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900
CANNOT_DECODE = 0xC000
INDEX_UNAVAILABLE = 0xC001
NOT_AUTHORISED = 0x0124
ERROR_COMMENT_MAX = 64  # LO

# Patient Root and Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.1.3, C.6.2.3).
PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
# Each information model's levels, top down.
MODELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}
MODEL_NAMES = {PATIENT_ROOT: "Patient Root", STUDY_ROOT: "Study Root"}
# The index rows a level's entities are made of.
INDEX_LEVEL = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
# The patient module's attributes: their own level in Patient Root, the study level in Study Root.
PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")


def _tag(keyword: str) -> int:
    tag = Tag(keyword)
    return int(tag)


def _hex(tag: int) -> str:
    return f"{tag:08X}"


QUERY_RETRIEVE_LEVEL = _tag("QueryRetrieveLevel")
SPECIFIC_CHARACTER_SET = _tag("SpecificCharacterSet")
# The computed attributes (DICOM JSON keys).
RETRIEVE_AE_TITLE = _hex(_tag("RetrieveAETitle"))
INSTANCE_AVAILABILITY = _hex(_tag("InstanceAvailability"))
MODALITIES_IN_STUDY = _hex(_tag("ModalitiesInStudy"))
SOP_CLASSES_IN_STUDY = _hex(_tag("SOPClassesInStudy"))
PATIENT_STUDIES = _hex(_tag("NumberOfPatientRelatedStudies"))
PATIENT_SERIES = _hex(_tag("NumberOfPatientRelatedSeries"))
PATIENT_INSTANCES = _hex(_tag("NumberOfPatientRelatedInstances"))
STUDY_SERIES = _hex(_tag("NumberOfStudyRelatedSeries"))
STUDY_INSTANCES = _hex(_tag("NumberOfStudyRelatedInstances"))
SERIES_INSTANCES = _hex(_tag("NumberOfSeriesRelatedInstances"))
PATIENT_COUNTS = (PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES)
STUDY_TAG = _hex(_tag("StudyInstanceUID"))
SERIES_TAG = _hex(_tag("SeriesInstanceUID"))
SOP_INSTANCE_TAG = _hex(_tag("SOPInstanceUID"))
SOP_CLASS_TAG = _hex(_tag("SOPClassUID"))
PATIENT_ID_TAG = _hex(_tag("PatientID"))
PATIENT_TAGS = {_hex(_tag(k)) for k in PATIENT_KEYWORDS}
CHARSET_TAG = _hex(SPECIFIC_CHARACTER_SET)


def key_level(model: str, key: Key) -> str:
    """The level of ``model`` a matching key belongs to."""
    if key.level == "study":
        if model == PATIENT_ROOT and key.keyword in PATIENT_KEYWORDS:
            return "PATIENT"
        return "STUDY"
    return "SERIES" if key.level == "series" else "IMAGE"


def matching_keys(model: str, level: str) -> list[str]:
    """The keywords a query of ``level`` matches on (its level's and the levels' above)."""
    levels = MODELS[model]
    depth = levels.index(level)
    return [k.keyword for k in KEYS.values() if levels.index(key_level(model, k)) <= depth]


# --- extended negotiation ---------------------------------------------------------------------

# The bytes of the Query/Retrieve service class application information (PS3.4 C.5.1.1.1), from
# 0: relational queries, combined date-time matching, fuzzy semantic matching of person names,
# timezone query adjustment.
RELATIONAL_BYTE = 0
FUZZY_BYTE = 2


def sop_extended_answer(app_info: dict[Any, bytes]) -> dict[UID, bytes]:
    """The SOP Class Extended Negotiation answer (PS3.4 C.5.1.1) for the FIND SOP classes among
    ``app_info`` (the requestor's items: SOP class UID -> service class application information).

    Byte 1 relational-queries and byte 3 fuzzy semantic matching of person names: accepted (1)
    when asked; bytes 2 and 4 (combined date-time matching, timezone query adjustment): not
    supported (0). The answer has as many bytes as the question, at most four. Other SOP classes
    are not answered.
    """
    answers: dict[UID, bytes] = {}
    for sop_class, info in (app_info or {}).items():
        if str(sop_class) not in MODELS or not info:
            continue
        answer = bytearray(min(len(info), 4))
        for byte in (RELATIONAL_BYTE, FUZZY_BYTE):
            if byte < len(answer):
                answer[byte] = 1 if info[byte] == 1 else 0
        answers[UID(str(sop_class))] = bytes(answer)
    return answers


def on_sop_extended(event: Any) -> dict[UID, bytes]:
    """An EVT_SOP_EXTENDED handler answering the FIND SOP classes (``sop_extended_answer``)."""
    return sop_extended_answer(event.app_info)


def _negotiated(event: Any, sop_class: str, byte: int) -> bool:
    try:
        answered = event.assoc.acceptor.sop_class_extended
    except AttributeError:
        return False
    info: bytes | None = answered.get(sop_class) if answered else None
    return info is not None and len(info) > byte and info[byte] == 1


def relational_negotiated(event: Any, sop_class: str) -> bool:
    """Whether this association accepted relational queries for ``sop_class``."""
    return _negotiated(event, sop_class, RELATIONAL_BYTE)


def fuzzy_negotiated(event: Any, sop_class: str) -> bool:
    """Whether this association accepted fuzzy semantic matching of person names for
    ``sop_class``."""
    return _negotiated(event, sop_class, FUZZY_BYTE)


# --- statuses -----------------------------------------------------------------------------------


class Refused(Exception):
    """A request answered with a failure status."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = offending


def status_dataset(status: int, comment: str, offending: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # Error Comment is LO: 64 characters of the default repertoire, no backslash.
    text = comment.replace("\\", "/").encode("ascii", "replace").decode("ascii")
    if len(text) > ERROR_COMMENT_MAX:
        text = text[: ERROR_COMMENT_MAX - 3] + "..."
    ds.ErrorComment = text
    if offending is not None:
        ds.OffendingElement = [offending]
    return ds


# --- the request --------------------------------------------------------------------------------


@dataclass
class Requested:
    tag: str  # DICOM JSON key
    vr: str


@dataclass
class FindRequest:
    model: str
    level: str
    relational: bool
    conditions: list[Q] = field(default_factory=list)
    requested: list[Requested] = field(default_factory=list)
    wants_charset: bool = False
    # A key with a value that is not matched on: the pending responses say 0xFF01.
    unsupported: list[str] = field(default_factory=list)

    @property
    def index_level(self) -> str:
        return INDEX_LEVEL[self.level]

    def wants(self, *tags: str) -> bool:
        return any(r.tag in tags for r in self.requested)

    @cached_property
    def answer_keys(self) -> tuple[tuple[str, str, str], ...]:
        """What each response holds: (tag, VR when empty, where the value comes from) for the
        requested keys in the request's order ("entity"; "none" for a key of a level below the
        query's), then for the unique keys of the level and the levels above that were not
        requested ("unique")."""
        levels = MODELS[self.model]
        depth = levels.index(self.level)
        keys: dict[str, tuple[str, str, str]] = {}
        for wanted in self.requested:
            key = KEYS.get(wanted.tag)
            below = key is not None and levels.index(key_level(self.model, key)) > depth
            keys[wanted.tag] = (wanted.tag, wanted.vr, "none" if below else "entity")
        for level in levels[: depth + 1]:
            tag = _hex(_tag(UNIQUE_KEY[level]))
            if tag not in keys:
                keys[tag] = (tag, "LO" if level == "PATIENT" else "UI", "unique")
        return tuple(keys.values())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _has_value(element: DataElement) -> bool:
    if element.VR == "SQ":
        return any(_has_value(e) for item in element.value or [] for e in item)
    return _text(element.value).strip(" \x00") != ""


def _element_vr(tag: int, element: DataElement) -> str:
    vr = str(element.VR or "")
    if len(vr) == 2 and vr != "UN":
        return vr
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _elements(identifier: Dataset) -> list[DataElement]:
    """Every element, decoded now (pydicom decodes lazily): a value that cannot be decoded is
    a ``Refused`` 0xC000 naming it."""
    elements = []
    for tag in list(identifier.keys()):
        try:
            element = identifier[tag]
            if element.VR == "SQ":
                _has_value(element)  # decodes the items' elements
            else:
                _text(element.value)
        except Exception as exc:  # pydicom raises many kinds for broken values
            name = keyword_for_tag(tag) or str(BaseTag(tag))
            raise Refused(
                CANNOT_DECODE, f"{name} cannot be decoded: {exc}", offending=int(tag)
            ) from None
        elements.append(element)
    return elements


def request_parse(
    identifier: Dataset,
    *,
    model: str,
    relational: bool,
    fuzzy_org: Organization | None = None,
) -> FindRequest:
    """Validate the request identifier; every problem is a ``Refused``. ``fuzzy_org``: the
    organization searched, when fuzzy semantic matching of person names was negotiated."""
    elements = _elements(identifier)
    levels = MODELS[model]
    if QUERY_RETRIEVE_LEVEL not in identifier:
        raise Refused(
            IDENTIFIER_DOES_NOT_MATCH,
            "QueryRetrieveLevel (0008,0052) is missing.",
            QUERY_RETRIEVE_LEVEL,
        )
    level = _text(identifier[QUERY_RETRIEVE_LEVEL].value).strip().upper()
    if level not in levels:
        raise Refused(
            IDENTIFIER_DOES_NOT_MATCH,
            f"QueryRetrieveLevel {level[:16]!r} is not one of {'/'.join(levels)}.",
            QUERY_RETRIEVE_LEVEL,
        )
    request = FindRequest(model=model, level=level, relational=relational)
    depth = levels.index(level)
    values: dict[str, str] = {}
    for element in elements:
        tag = int(element.tag)
        group, number = tag >> 16, tag & 0xFFFF
        if tag == QUERY_RETRIEVE_LEVEL:
            continue
        if tag == SPECIFIC_CHARACTER_SET:
            request.wants_charset = True  # the request's values are decoded with it
            continue
        if group % 2 == 1 or number == 0 or group in (0x0000, 0x0002):
            # Private attributes, group lengths, command and file meta elements: not keys.
            if group % 2 == 1 and _has_value(element):
                request.unsupported.append(str(BaseTag(tag)))
            continue
        json_tag = _hex(tag)
        request.requested.append(Requested(tag=json_tag, vr=_element_vr(tag, element)))
        key = KEYS.get(json_tag)
        matched = key is not None and levels.index(key_level(model, key)) <= depth
        if element.VR == "SQ" or not matched:
            if _has_value(element):
                request.unsupported.append(element.keyword or str(BaseTag(tag)))
            continue
        assert key is not None
        value = _text(element.value).strip(" \x00")
        if "\x00" in value:
            raise Refused(
                IDENTIFIER_DOES_NOT_MATCH,
                f"{key.keyword} holds a NUL character.",
                tag,
            )
        values[key.keyword] = value
        if not value or value == "*":
            continue  # universal matching: the attribute is only returned
        try:
            condition = key_condition(
                key,
                key.keyword,
                value,
                PREFIX[(request.index_level, key.level)],
                uid_problem=uid_problem,
                separator="\\",
                fuzzy_org=fuzzy_org,
            )
        except ValidationFailed as exc:
            raise Refused(IDENTIFIER_DOES_NOT_MATCH, str(exc.message), tag) from None
        if condition is not None:
            request.conditions.append(condition)
    if not relational:
        for above in levels[:depth]:
            keyword = UNIQUE_KEY[above]
            value = values.get(keyword, "")
            if not value or "*" in value or "?" in value or "\\" in value:
                raise Refused(
                    IDENTIFIER_DOES_NOT_MATCH,
                    f"A {level} query needs one {keyword} (hierarchical query).",
                    _tag(keyword),
                )
    return request


# --- the search ---------------------------------------------------------------------------------


@dataclass
class Match:
    """One entity's attributes as DICOM JSON (stored and computed), and its keys for the
    attributes computed across rows."""

    attributes: dict[str, Any]
    patient_id: str | None = None
    study_pk: int | None = None


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _stored(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Stored attributes, less the character set they were received in (values are Unicode
    here; the response declares its own)."""
    attributes = dict(metadata or {})
    attributes.pop(CHARSET_TAG, None)
    return attributes


# What ``_study_attributes`` reads of a study (a study-level search loads nothing else).
STUDY_FIELDS = (
    "id",
    "study_uid",
    "patient_id",
    "modalities",
    "series_count",
    "instance_count",
    "bytes_archive",
    "metadata",
)


def _study_attributes(study: Study) -> dict[str, Any]:
    attributes = _stored(study.metadata)
    attributes[STUDY_TAG] = _element("UI", study.study_uid)
    if PATIENT_ID_TAG not in attributes:
        attributes[PATIENT_ID_TAG] = _element(
            "LO", *([study.patient_id] if study.patient_id else [])
        )
    attributes[MODALITIES_IN_STUDY] = _element("CS", *study.modality_list)
    attributes[STUDY_SERIES] = _element("IS", study.series_count)
    attributes[STUDY_INSTANCES] = _element("IS", study.instance_count)
    attributes[INSTANCE_AVAILABILITY] = _element("CS", availability(study.bytes_archive))
    return attributes


def _series_attributes(series: Series) -> dict[str, Any]:
    attributes = _study_attributes(series.study)
    attributes.update(_stored(series.metadata))
    attributes[SERIES_TAG] = _element("UI", series.series_uid)
    attributes[SERIES_INSTANCES] = _element("IS", series.instance_count)
    attributes[INSTANCE_AVAILABILITY] = _element("CS", availability(series.bytes_archive))
    return attributes


def _instance_attributes(instance: Instance) -> dict[str, Any]:
    attributes = _study_attributes(instance.study)
    attributes.update(_stored(instance.series.metadata))
    attributes[SERIES_TAG] = _element("UI", instance.series.series_uid)
    attributes[SERIES_INSTANCES] = _element("IS", instance.series.instance_count)
    attributes.update(_stored(instance.metadata))
    attributes[SOP_INSTANCE_TAG] = _element("UI", instance.sop_instance_uid)
    attributes[SOP_CLASS_TAG] = _element("UI", instance.sop_class_uid)
    attributes[INSTANCE_AVAILABILITY] = _element(
        "CS", availability(1 if instance.tier == "archive" else 0)
    )
    return attributes


@dataclass
class PatientGroup:
    studies: int
    series: int
    instances: int
    archived: int
    latest: int


def patient_groups(org: Organization, patient_ids: Iterable[str]) -> dict[str, PatientGroup]:
    """Per Patient ID: the organization's studies, series, instances, archive-tier bytes and
    newest study (its pk)."""
    rows = (
        level_queryset(org, "study")
        .filter(patient_id__in=set(patient_ids))
        .values("patient_id")
        .annotate(
            studies=Count("id"),
            series=Sum("series_count"),
            instances=Sum("instance_count"),
            archived=Sum("bytes_archive"),
            latest=Max("id"),
        )
        .order_by()
    )
    return {
        row["patient_id"]: PatientGroup(
            studies=row["studies"],
            series=row["series"] or 0,
            instances=row["instances"] or 0,
            archived=row["archived"] or 0,
            latest=row["latest"],
        )
        for row in rows
    }


def sop_classes_in_studies(org: Organization, study_pks: Iterable[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    rows = (
        Instance.objects.for_org(org)
        .filter(study_id__in=set(study_pks))
        .values_list("study_id", "sop_class_uid")
        .distinct()
        .order_by("study_id", "sop_class_uid")
    )
    for study_pk, sop_class in rows:
        found.setdefault(study_pk, []).append(sop_class)
    return found


def _patients(org: Organization, request: FindRequest, limit: int) -> list[Match]:
    matching = level_queryset(org, "study").filter(*request.conditions)
    patient_ids = list(
        matching.order_by("patient_id").values_list("patient_id", flat=True).distinct()[:limit]
    )
    groups = patient_groups(org, patient_ids)
    newest = level_queryset(org, "study").in_bulk([g.latest for g in groups.values()])
    matches = []
    for patient_id in patient_ids:
        group = groups.get(patient_id)
        if group is None:  # its studies went to the trash meanwhile
            continue
        study = newest.get(group.latest)
        stored = _stored(study.metadata if study is not None else {})
        attributes = {tag: value for tag, value in stored.items() if tag in PATIENT_TAGS}
        attributes[PATIENT_ID_TAG] = _element("LO", patient_id) if patient_id else {"vr": "LO"}
        attributes[PATIENT_STUDIES] = _element("IS", group.studies)
        attributes[PATIENT_SERIES] = _element("IS", group.series)
        attributes[PATIENT_INSTANCES] = _element("IS", group.instances)
        attributes[INSTANCE_AVAILABILITY] = _element("CS", availability(group.archived))
        matches.append(Match(attributes=attributes, patient_id=patient_id))
    return matches


def search(org: Organization, request: FindRequest, limit: int) -> list[Match]:
    """At most ``limit`` matches of ``request`` in ``org``'s index, in search order."""
    if request.level == "PATIENT":
        return _patients(org, request, limit)
    level = request.index_level
    qs = level_queryset(org, level).filter(*request.conditions)
    if level == "study":
        qs = qs.only(*STUDY_FIELDS)
    rows = list(index_ordered(qs, level)[:limit])
    matches = []
    for row in rows:
        if level == "study":
            attributes = _study_attributes(row)
            study = row
        elif level == "series":
            attributes = _series_attributes(row)
            study = row.study
        else:
            attributes = _instance_attributes(row)
            study = row.study
        matches.append(Match(attributes=attributes, patient_id=study.patient_id, study_pk=study.pk))
    if request.wants(*PATIENT_COUNTS):
        groups = patient_groups(org, (m.patient_id for m in matches if m.patient_id is not None))
        for match in matches:
            group = groups.get(match.patient_id or "")
            if group is not None:
                match.attributes[PATIENT_STUDIES] = _element("IS", group.studies)
                match.attributes[PATIENT_SERIES] = _element("IS", group.series)
                match.attributes[PATIENT_INSTANCES] = _element("IS", group.instances)
    if request.wants(SOP_CLASSES_IN_STUDY):
        classes = sop_classes_in_studies(org, (m.study_pk for m in matches if m.study_pk))
        for match in matches:
            match.attributes[SOP_CLASSES_IN_STUDY] = _element(
                "UI", *classes.get(match.study_pk or 0, [])
            )
    return matches


# --- the response -------------------------------------------------------------------------------


def _non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, dict):
        return any(_non_ascii(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_ascii(v) for v in value)
    return False


# Value representations whose DICOM JSON values are plain strings or numbers, taken as they are
# (Dataset.from_json handles the rest: sequences, binary, decimal strings, attribute tags).
_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_NUMBER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})


def _person_name(value: Any) -> str | None:
    """A DICOM JSON person name (its component groups) as the DICOM string ``A=I=P``."""
    if not isinstance(value, dict):
        return None
    groups = [value.get(group) or "" for group in ("Alphabetic", "Ideographic", "Phonetic")]
    if not all(isinstance(g, str) for g in groups):
        return None
    return "=".join(groups).rstrip("=")


def _data_element(tag: str, attribute: dict[str, Any]) -> DataElement | None:
    """The data element of one DICOM JSON attribute of the common kinds; None for the others."""
    vr = attribute.get("vr")
    values = attribute.get("Value")
    number = int(tag, 16)
    if values is None:
        if len(attribute) > 1 or not isinstance(vr, str):  # InlineBinary, BulkDataURI
            return None
        return DataElement(number, vr, [] if vr == "SQ" else None)
    if not isinstance(values, list) or not values:
        return None
    if vr in _STRING_VRS and all(isinstance(v, str) for v in values):
        converted: list[Any] = values
    elif vr in _NUMBER_VRS and all(isinstance(v, int | float) for v in values):
        converted = values
    elif vr == "PN":
        names = [_person_name(v) for v in values]
        if any(name is None for name in names):
            return None
        converted = names
    else:
        return None
    # Values from the index, written back as they were read: no second validation.
    return DataElement(
        number,
        vr,
        converted[0] if len(converted) == 1 else converted,
        validation_mode=config.IGNORE,
    )


def _json_dataset(attributes: dict[str, Any]) -> Dataset:
    """The data set of DICOM JSON attributes; an attribute pydicom cannot take back comes back
    empty."""
    ds = Dataset()
    for tag, attribute in attributes.items():
        element = _data_element(tag, attribute)
        if element is not None:
            ds.add(element)
            continue
        try:
            ds.update(Dataset.from_json({tag: attribute}))
        except Exception:
            ds.update(Dataset.from_json({tag: {"vr": attribute.get("vr", "UN")}}))
    return ds


def _chosen(match: Match, request: FindRequest, peer: Peer) -> dict[str, Any]:
    """The DICOM JSON attributes of one match's response (``FindRequest.answer_keys``): the
    entity's value, or an empty attribute when it has none."""
    available = match.attributes
    available[RETRIEVE_AE_TITLE] = _element("AE", peer.called_ae)
    chosen: dict[str, Any] = {}
    for tag, vr, source in request.answer_keys:
        if source == "entity":
            attribute = available.get(tag)
            chosen[tag] = attribute if attribute is not None else {"vr": vr}
        elif source == "unique":
            chosen[tag] = available.get(tag) or {"vr": vr}
        else:
            chosen[tag] = {"vr": vr}
    return chosen


def _charset(chosen: dict[str, Any], request: FindRequest) -> str | None:
    """The response's SpecificCharacterSet: UTF-8 when a value is not ASCII, empty (the
    default repertoire) when the request asked for it, else none."""
    if any(_non_ascii(attribute) for attribute in chosen.values()):
        return "ISO_IR 192"
    return "" if request.wants_charset else None


def response_identifier(match: Match, request: FindRequest, peer: Peer) -> Dataset:
    """The requested keys of one match, plus QueryRetrieveLevel, the unique keys of the level
    and above, and SpecificCharacterSet when needed."""
    chosen = _chosen(match, request, peer)
    ds = _json_dataset(chosen)
    ds.QueryRetrieveLevel = request.level
    charset = _charset(chosen, request)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


# --- the response, encoded --------------------------------------------------------------------
#
# What ``response_identifier`` builds as a pydicom data set and pynetdicom encodes, written
# straight to bytes for the common attributes, in a tenth of the time. The bytes
# are the same as pydicom's (tests/archive/test_dimse_find.py compares them); an identifier
# with any other kind of attribute is encoded by pydicom.

# Explicit VR Little Endian: these VRs have two reserved bytes and a 4-byte length (PS3.5
# 7.1.2); the others a 2-byte length.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL"}
    | {"SS", "ST", "TM", "UI", "UL", "US"}
)
# Text VRs whose values are encoded in the Specific Character Set (PS3.5 6.1.2.3); the values
# of the other string VRs take the default repertoire.
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_IMPLICIT_HEADER = struct.Struct("<HHI")
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_HEADER = struct.Struct("<HH2s2xI")
QUERY_RETRIEVE_LEVEL_TAG = _hex(QUERY_RETRIEVE_LEVEL)


class _NotAscii(Exception):
    """A text value is not ASCII: the response declares UTF-8 and is encoded again."""


_PN_GROUPS = frozenset({"Alphabetic", "Ideographic", "Phonetic"})


def _value_bytes(vr: str, attribute: dict[str, Any], utf8: bool) -> bytes | None:
    """The encoded, padded value of one DICOM JSON attribute of the common kinds (text, person
    name, integer string, or no value); None for the others. Without ``utf8``, a text value of
    the character set's VRs that is not ASCII raises ``_NotAscii``."""
    values = attribute.get("Value")
    if values is None:
        return b"" if len(attribute) == 1 and vr != "SQ" else None
    if not isinstance(values, list) or not values:
        return None
    if vr in _STRING_VRS:
        if not all(isinstance(v, str) for v in values):
            return None
        texts: list[str] = values
    elif vr == "PN":
        if not all(isinstance(v, dict) and v.keys() <= _PN_GROUPS for v in values):
            return None
        names = [_person_name(v) for v in values]
        if any(name is None for name in names):
            return None
        texts = [name for name in names if name is not None]
    elif vr == "IS":
        if not all(type(v) is int for v in values):
            return None
        texts = [str(v) for v in values]
    else:
        return None
    text = "\\".join(texts)
    if vr in _CHARSET_VRS:
        if not utf8 and not text.isascii():
            raise _NotAscii
        raw = text.encode("utf-8" if utf8 else "ascii")
    elif text.isascii():
        raw = text.encode("ascii")
    else:
        return None  # pydicom would write it in its own default encoding
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def _encoded(attributes: dict[str, Any], *, implicit: bool, utf8: bool) -> bytes | None:
    """The data set of DICOM JSON ``attributes`` in (Implicit or Explicit VR) Little Endian, as
    pydicom writes it; None when an attribute is not of the kinds ``_value_bytes`` encodes.
    Raises ``_NotAscii`` as ``_value_bytes`` does."""
    elements: dict[int, bytes] = {}
    for key, attribute in attributes.items():
        vr = attribute.get("vr")
        if not isinstance(vr, str) or vr not in _SHORT_VRS and vr not in _LONG_VRS:
            return None
        try:
            tag = int(key, 16)
        except ValueError:
            return None
        value = _value_bytes(vr, attribute, utf8)
        if value is None or tag in elements or not 0 <= tag <= 0xFFFFFFFF:
            return None
        group, number = tag >> 16, tag & 0xFFFF
        if implicit:
            head = _IMPLICIT_HEADER.pack(group, number, len(value))
        elif vr in _LONG_VRS:
            head = _LONG_HEADER.pack(group, number, vr.encode(), len(value))
        elif len(value) <= 0xFFFF:
            head = _SHORT_HEADER.pack(group, number, vr.encode(), len(value))
        else:
            return None
        elements[tag] = head + value
    return b"".join(elements[tag] for tag in sorted(elements))


def response_bytes(match: Match, request: FindRequest, peer: Peer, *, implicit: bool) -> bytes:
    """``response_identifier`` encoded in Little Endian, Implicit or Explicit VR."""
    chosen = _chosen(match, request, peer)
    attributes = dict(chosen)
    attributes[QUERY_RETRIEVE_LEVEL_TAG] = _element("CS", request.level)
    # The character set as ``_charset`` chooses it: in this encoding every string is a value
    # (VRs and person name groups are ASCII), so a value that is not ASCII means UTF-8.
    if request.wants_charset:
        attributes[CHARSET_TAG] = {"vr": "CS"}
    try:
        encoded = _encoded(attributes, implicit=implicit, utf8=False)
    except _NotAscii:
        attributes[CHARSET_TAG] = _element("CS", "ISO_IR 192")
        encoded = _encoded(attributes, implicit=implicit, utf8=True)
    if encoded is not None:
        return encoded
    data = encode(response_identifier(match, request, peer), implicit, True)
    if data is None:  # pynetdicom logged why
        raise ValueError("A response identifier cannot be encoded.")
    return bytes(data)


# --- sending the matches ------------------------------------------------------------------------

# Pending responses handed to the association's network thread at once, in bytes of
# identifiers: a C-FIND-CANCEL is looked for between two batches.
BATCH_BYTES = 64 * 1024
# PDUs the network thread may have waiting to be written before more are handed to it (a
# caller that reads slowly holds the matches back, not the listener's memory).
QUEUED_PDUS_MAX = 512
# A PDV item: item length (4 bytes), presentation context ID, message control header, data.
_PDV_HEADER = 6


def _command(element: int, value: bytes) -> bytes:
    """One element of a command set (group 0000, Implicit VR Little Endian, PS3.7 6.3.1)."""
    return _IMPLICIT_HEADER.pack(0x0000, element, len(value)) + value


def c_find_rsp_command(*, sop_class_uid: str, message_id: int, status: int) -> bytes:
    """The encoded command set of a C-FIND-RSP with an identifier (PS3.7 9.3.2.2), as pynetdicom
    encodes it."""
    uid = sop_class_uid.encode("ascii")
    body = b"".join(
        [
            _command(0x0002, uid + b"\0" if len(uid) % 2 else uid),  # Affected SOP Class UID
            _command(0x0100, struct.pack("<H", 0x8020)),  # Command Field: C-FIND-RSP
            _command(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
            _command(0x0800, struct.pack("<H", 0x0001)),  # Command Data Set Type: present
            _command(0x0900, struct.pack("<H", status)),  # Status
        ]
    )
    return _command(0x0000, struct.pack("<I", len(body))) + body


class DirectAnswer:
    """The pending responses of one C-FIND, encoded here and handed to the association's network
    thread as ready P-DATA primitives, a batch at a time.

    pynetdicom's own path costs about a millisecond per match in this thread: a pydicom data set
    per command, the identifier's encoding, a state-machine round and a wake-up of the network
    thread per PDU. Here the command set is encoded once per C-FIND (only the identifier differs
    between pending responses) and the PDUs of a batch are queued with one wake-up.

    A response's command and identifier PDVs go in one PDU when the caller's maximum PDU length
    allows (as dcm4che sends by default; PS3.8 9.3.5), otherwise in fragments that fit it;
    never two responses in one PDU (pynetdicom, as an SCU, reads one message per PDU and drops
    the rest). Half the PDUs of pynetdicom's one PDV per PDU: each costs the caller as much as
    the network thread. The network thread writes the PDUs in order with everything else sent on
    the association (the final response, a storage commitment report), and its state machine
    sees every one of them.

    Precondition: called from the association's thread inside its C-FIND handler, so no other
    DIMSE response of this association is being sent meanwhile.
    """

    def __init__(self, event: Any, *, implicit: bool):
        self.assoc = event.assoc
        self.event = event
        self.implicit = implicit
        self.context_id = int(event.context.context_id)
        # The caller's maximum PDU length (0: no limit): what one PDU may carry after its header.
        self.limit = int(self.assoc.dimse.maximum_pdu_size or 0)
        request = event.request
        self.sop_class_uid = str(request.AffectedSOPClassUID)
        self.message_id = int(request.MessageID)
        self.cancelled = False  # a C-FIND-CANCEL arrived

    @classmethod
    def for_event(cls, event: Any) -> DirectAnswer | None:
        """The direct answer for a C-FIND over a live association in a Little Endian transfer
        syntax; None otherwise (pynetdicom sends each response: Big Endian, Deflated)."""
        assoc = getattr(event, "assoc", None)
        dul = getattr(assoc, "dul", None)
        if dul is None or not hasattr(dul, "send_pdu"):
            return None
        try:
            syntax = UID(str(event.context.transfer_syntax))
            if not syntax.is_little_endian or syntax.is_deflated:
                return None
            return cls(event, implicit=syntax.is_implicit_VR)
        except (AttributeError, TypeError, ValueError):
            return None

    def _fragments(self, data: bytes, more: int, last: int) -> list[bytes]:
        """``data`` as PDV values (message control header, then the fragment) that fit the
        caller's maximum PDU; ``more``/``last``: the control header of the fragments."""
        # Fragments of an even length (PS3.8 E.1), as long as the caller takes.
        size = max((self.limit - _PDV_HEADER) & ~1, 2) if self.limit else max(len(data), 1)
        return [
            bytes([last if start + size >= len(data) else more]) + data[start : start + size]
            for start in range(0, len(data), size)
        ]

    def _message(self, command: list[bytes], identifier: bytes) -> list[P_DATA]:
        """One pending response as P-DATA primitives: its PDVs packed into as few PDUs as the
        caller's maximum PDU length allows, never with another response's."""
        primitives: list[P_DATA] = []
        used = 0
        for value in command + self._fragments(identifier, 0x00, 0x02):
            item = _PDV_HEADER - 1 + len(value)  # the value holds the control header
            if not primitives or (self.limit and used + item > self.limit):
                primitives.append(P_DATA())
                used = 0
            # Appended as pynetdicom's own encode_msg does (its setter wants lists).
            primitives[-1].presentation_data_value_list.append((self.context_id, value))
            used += item
        return primitives

    def _open(self) -> bool:
        """Whether matches may still be sent: the association stands and no C-FIND-CANCEL came.
        Waits while the network thread has ``QUEUED_PDUS_MAX`` PDUs to write."""
        dul = self.assoc.dul
        while dul.to_provider_queue.qsize() >= QUEUED_PDUS_MAX:
            if not self.assoc.is_established or not dul.is_alive():
                return False
            time.sleep(0.001)
        if not self.assoc.is_established:
            return False
        # pynetdicom forgets a C-FIND-CANCEL once it has said so.
        self.cancelled = self.cancelled or bool(self.event.is_cancelled)
        return not self.cancelled

    def _queue(self, batch: list[P_DATA]) -> None:
        """Hand ``batch`` to the network thread: queued as ``send_pdu`` queues a P-DATA, and one
        ``send_pdu`` at the end, which wakes the thread."""
        dul = self.assoc.dul
        for primitive in batch[:-1]:
            dul.to_provider_queue.put(primitive)
        dul.send_pdu(batch[-1])

    def send(self, identifiers: Iterable[bytes], status: int) -> tuple[int, bool]:
        """Send a pending response with ``status`` per identifier, in order, until a
        C-FIND-CANCEL arrives or the association ends; (responses sent, stopped early)."""
        command = c_find_rsp_command(
            sop_class_uid=self.sop_class_uid, message_id=self.message_id, status=status
        )
        # The command is the same for every match.
        commands = self._fragments(command, 0x01, 0x03)
        batch: list[P_DATA] = []
        size = in_batch = sent = 0
        for identifier in identifiers:
            batch.extend(self._message(commands, identifier))
            size += len(identifier)
            in_batch += 1
            if size >= BATCH_BYTES:
                if not self._open():
                    return sent, True
                self._queue(batch)
                sent += in_batch
                batch, size, in_batch = [], 0, 0
        if batch:
            if not self._open():
                return sent, True
            self._queue(batch)
            sent += in_batch
        return sent, False


# --- the service --------------------------------------------------------------------------------


def c_find(peer: Peer | None, event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND handler body: yield the pending matches, then the final status (an int, or a
    status Dataset with its Error Comment)."""
    if peer is None:
        yield status_dataset(NOT_AUTHORISED, "The association was not admitted."), None
        return
    started = time.monotonic()
    sop_class = str(getattr(event.context, "abstract_syntax", "") or "")
    if sop_class not in MODELS:
        yield status_dataset(0x0122, "SOP class not supported for C-FIND."), None
        return
    try:
        identifier = event.identifier
        request = request_parse(
            identifier,
            model=sop_class,
            relational=relational_negotiated(event, sop_class),
            fuzzy_org=peer.org if fuzzy_negotiated(event, sop_class) else None,
        )
    except Refused as refused:
        _log(peer, "?", 0, refused.status, started)
        yield status_dataset(refused.status, refused.comment, refused.offending), None
        return
    except Exception as exc:  # the identifier's bytes cannot be decoded at all
        _log(peer, "?", 0, CANNOT_DECODE, started)
        yield status_dataset(CANNOT_DECODE, f"The identifier cannot be decoded: {exc}"), None
        return
    cap = int(settings.DIMSE_FIND_MAX_RESULTS)
    direct = DirectAnswer.for_event(event)
    try:
        with db_serial():
            matches = search(peer.org, request, cap + 1)
        more = len(matches) > cap
        if direct is not None:
            encoded = [
                response_bytes(m, request, peer, implicit=direct.implicit) for m in matches[:cap]
            ]
        else:
            identifiers = [response_identifier(m, request, peer) for m in matches[:cap]]
    except Exception:
        logger.exception("dimse: C-FIND failed for org %s", peer.org.pk)
        connection.close()  # a broken connection must not fail the association's next request
        _log(peer, request.level, 0, INDEX_UNAVAILABLE, started)
        yield status_dataset(INDEX_UNAVAILABLE, "The index cannot be read now; retry later."), None
        return
    searched = time.monotonic()
    pending = PENDING_WARNING if request.unsupported else PENDING
    if direct is not None:
        total, stopped = direct.send(encoded, pending)
        # What was sent without passing through the handler's responses, for the activity
        # record (``find_observed`` counts the pending responses it sees).
        activity.find_counted(total)
        if stopped and not direct.cancelled:
            _log(peer, request.level, total, None, started, searched)
            return  # the association ended: nothing more can be answered
        if stopped:
            _log(peer, request.level, total, CANCEL, started, searched)
            yield CANCEL, None
            return
    else:
        total = len(identifiers)
        for sent, ds in enumerate(identifiers):
            if event.is_cancelled:
                _log(peer, request.level, sent, CANCEL, started, searched)
                yield CANCEL, None
                return
            yield pending, ds
    if event.is_cancelled:
        _log(peer, request.level, total, CANCEL, started, searched)
        yield CANCEL, None
        return
    if more:
        _log(peer, request.level, total, OUT_OF_RESOURCES, started, searched)
        yield (
            status_dataset(
                OUT_OF_RESOURCES,
                f"More than {cap} matches; the first {cap} were sent. Narrow the query.",
            ),
            None,
        )
        return
    _log(peer, request.level, total, SUCCESS, started, searched)
    yield SUCCESS, None


def _log(
    peer: Peer,
    level: str,
    matches: int,
    status: int | None,
    started: float,
    searched: float | None = None,
) -> None:
    """One line per C-FIND: who asked, the level, how many matches were sent with which final
    status (None: the association ended first), the time the search (and building the answers)
    took and the time until the final status; never the identifier's values."""
    now = time.monotonic()
    logger.info(
        "dimse: C-FIND %s level %s for org %s: %d match(es) sent, %s, search %.1f ms, "
        "total %.1f ms",
        peer.source,
        level,
        peer.org.pk,
        matches,
        "association ended" if status is None else f"status 0x{status:04X}",
        ((searched or now) - started) * 1000,
        (now - started) * 1000,
    )
