"""QIDO-RS (PS3.18 10.6): search the study / series / instance index of one organization.

Matching (PS3.4 C.2.2.2) runs in SQL on the index columns, never on the JSON metadata, by the
rules the C-FIND SCP shares (``archive.index.query``):
- single value: exact; PN attributes (PatientName, ReferringPhysicianName) ignore case;
- wildcards ``*`` and ``?`` on text attributes -> ``LIKE`` with ``%``/``_``/``\\`` escaped
  (``*`` alone is universal matching);
- ranges on dates and times: ``20260101-20260131``, ``20260101-``, ``-20260131``;
- UID lists: ``StudyInstanceUID=1.2,1.3`` (comma or backslash);
- ``ModalitiesInStudy=CT,MR``: studies with any of them;
- an empty value is universal matching: the attribute is only returned.
``fuzzymatching=true`` turns on fuzzy person-name matching for the PN keys (PatientName,
ReferringPhysicianName, at every level): each word of the value (words split at ``^``, ``=``,
spaces, commas, periods and hyphens) starts some word of the name, in any order, without regard
to case or accents: ``PatientName=smi`` finds ``SMITH^JOHN``, ``Smíth^John`` and
``JONES^SMITHERS``, ``PatientName=joh smi`` finds ``SMITH^JOHN``; ``*`` and ``?`` keep their
meaning inside a word (``sm?th``). ``fuzzymatching=false`` or none: the exact rules above.
Results come from the stored metadata plus computed attributes (counts, modalities,
availability, RetrieveURL).

Every parameter is checked before it reaches SQL, and each problem is a 400 naming it: ``limit``
and ``offset`` are ASCII whole numbers (``offset`` at most ``MAX_OFFSET``, ``limit`` capped at
``MAX_LIMIT``), integer keys stay in the range of DICOM's IS, every UID of a UID list follows the
archive's UID rule (``archive.ingest.dicom.uid_problem``) and a list holds at least one, no value holds a
NUL character, ``fuzzymatching`` is ``true`` or ``false`` and a fuzzy name has at most
``archive.index.query.FUZZY_WORDS_MAX`` words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest, QueryDict

from archive.dicomweb import dicomjson as dj
from archive.dicomweb.common import base_url, instance_url, series_url, study_url
from archive.index.query import (
    KEYS,
    LEVELS,
    PREFIX,
    availability,
    invalid,
    key_condition,
    level_queryset,
    ordered,
)
from archive.ingest.dicom import uid_problem
from archive.models import Instance, Series, Study
from tenants.models import Organization

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Deeper than any archive's result list; keeps OFFSET inside every database's integer range.
MAX_OFFSET = 1_000_000_000
_WHOLE = re.compile(r"[0-9]+")
# Query parameters of PS3.18 8.3 that are not attributes.
_IGNORED_PARAMS = {"accept", "charset"}


# Attributes each level returns without includefield (PS3.18 Tables 10.6.3-3 to -5), on top of
# everything its stored metadata holds for studies and series.
INSTANCE_DEFAULTS = [
    dj.tag_of(k)
    for k in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    )
]


# --- the query --------------------------------------------------------------------------------


@dataclass
class Query:
    level: str
    conditions: list[Q] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _int_param(name: str, value: str, *, maximum: int | None = None) -> int:
    """A non-negative ASCII whole number; above ``maximum`` is an error (None: no bound, for
    ``limit``, which the caller caps)."""
    text = value.strip()
    if not _WHOLE.fullmatch(text):
        raise invalid(name, f"{name} must be a non-negative whole number.")
    text = text.lstrip("0") or "0"
    # A number longer than the bound in digits is over it, without converting a huge string.
    number = int(text) if len(text) <= 18 else 10**18
    if maximum is not None and number > maximum:
        raise invalid(name, f"{name} must be a whole number from 0 to {maximum}.")
    return number


def _fuzzy(params: QueryDict) -> bool:
    """Whether ``fuzzymatching=true`` was asked for (the name in any case, the last value)."""
    fuzzy = False
    for name in params:
        if name.lower() == "fuzzymatching":
            value = params.getlist(name)[-1].strip().lower()
            if value not in ("true", "false"):
                raise invalid(name, "fuzzymatching must be true or false.")
            fuzzy = value == "true"
    return fuzzy


def query_parse(params: QueryDict, *, level: str, org: Organization) -> Query:
    """Validate the query string; every problem is a 400 that names the parameter. ``org``: the
    organization searched (fuzzy matching reads its name words)."""
    query = Query(level=level)
    allowed = LEVELS[: LEVELS.index(level) + 1]
    # Read first: it changes how the PN keys before it in the query string match.
    fuzzy_org = org if _fuzzy(params) else None
    for name in params:
        values = params.getlist(name)
        lowered = name.lower()
        if any("\x00" in value for value in values):
            raise invalid(name, f"{name}: a NUL character is not allowed in a value.")
        if lowered == "limit":
            query.limit = min(_int_param(name, values[-1]), MAX_LIMIT)
            continue
        if lowered == "offset":
            query.offset = _int_param(name, values[-1], maximum=MAX_OFFSET)
            continue
        if lowered == "fuzzymatching":
            continue  # read by _fuzzy
        if lowered == "includefield":
            for item in (v.strip() for value in values for v in value.split(",")):
                if not item:
                    continue
                if item.lower() == "all":
                    query.include_all = True
                    continue
                try:
                    query.include.add(dj.tag_of(item))
                except dj.UnknownAttribute:
                    raise invalid(
                        "includefield", f"includefield names an unknown attribute {item!r}."
                    ) from None
            continue
        if lowered in _IGNORED_PARAMS:
            continue
        if "." in name:
            raise invalid(name, f"{name}: matching on sequence items is not supported.")
        try:
            tag = dj.tag_of(name)
        except dj.UnknownAttribute:
            raise invalid(
                name, f"Unknown attribute {name!r}: use a DICOM keyword or an 8-digit hex tag."
            ) from None
        key = KEYS.get(tag)
        if key is None or key.level not in allowed:
            supported = ", ".join(k.keyword for k in KEYS.values() if k.level in allowed)
            raise invalid(
                name,
                f"{dj.keyword_of(tag)} is not a matching key for a {level} search; "
                f"the keys are {supported}.",
            )
        if len(values) > 1 and key.kind not in ("uid", "list", "modalities"):
            raise invalid(name, f"{name} is given {len(values)} times; give it once.")
        value = ",".join(values).strip() if len(values) > 1 else values[0].strip()
        query.include.add(tag)
        if not value:
            continue  # universal matching: return the attribute, match everything
        condition = key_condition(
            key,
            name,
            value,
            PREFIX[(level, key.level)],
            uid_problem=uid_problem,
            fuzzy_org=fuzzy_org,
        )
        if condition is not None:
            query.conditions.append(condition)
    return query


# --- the search -----------------------------------------------------------------------------


@dataclass
class Scope:
    """The part of the hierarchy the URL fixed (``/studies/{study}/series/{series}/...``)."""

    study: Study | None = None
    series: Series | None = None


def _pick(metadata: dict[str, Any], tags: set[str]) -> dict[str, Any]:
    return {tag: metadata[tag] for tag in tags if tag in metadata}


def _context(metadata: dict[str, Any] | None, fixed_by_url: bool, query: Query) -> dict[str, Any]:
    """A higher level's attributes on a lower level's result: all of them for a relational search
    (``/series``, ``/instances``), only those named by includefield under a fixed URL."""
    metadata = metadata or {}
    if not fixed_by_url or query.include_all:
        return dict(metadata)
    return _pick(metadata, query.include)


def _study_json(study: Study, base: str) -> dict[str, Any]:
    result = dict(study.metadata or {})
    result[dj.STUDY_INSTANCE_UID] = dj.element("UI", study.study_uid)
    result[dj.MODALITIES_IN_STUDY] = dj.element("CS", *study.modality_list)
    result[dj.NUMBER_OF_STUDY_RELATED_SERIES] = dj.element("IS", study.series_count)
    result[dj.NUMBER_OF_STUDY_RELATED_INSTANCES] = dj.element("IS", study.instance_count)
    result[dj.INSTANCE_AVAILABILITY] = dj.element("CS", availability(study.bytes_archive))
    result[dj.RETRIEVE_URL] = dj.element("UR", study_url(base, study.study_uid))
    return result


def _series_json(series: Series, base: str, query: Query, scope: Scope) -> dict[str, Any]:
    study = series.study
    result = _context(study.metadata, scope.study is not None, query)
    result.update(series.metadata or {})
    result[dj.STUDY_INSTANCE_UID] = dj.element("UI", study.study_uid)
    result[dj.SERIES_INSTANCE_UID] = dj.element("UI", series.series_uid)
    result[dj.NUMBER_OF_SERIES_RELATED_INSTANCES] = dj.element("IS", series.instance_count)
    result[dj.INSTANCE_AVAILABILITY] = dj.element("CS", availability(series.bytes_archive))
    result[dj.RETRIEVE_URL] = dj.element("UR", series_url(base, study.study_uid, series.series_uid))
    return result


def _instance_json(instance: Instance, base: str, query: Query, scope: Scope) -> dict[str, Any]:
    study, series = instance.study, instance.series
    result = _context(study.metadata, scope.study is not None, query)
    result.update(_context(series.metadata, scope.series is not None, query))
    metadata = instance.metadata or {}
    if query.include_all:
        result.update(metadata)
    else:
        result.update(_pick(metadata, set(INSTANCE_DEFAULTS) | query.include))
    result[dj.STUDY_INSTANCE_UID] = dj.element("UI", study.study_uid)
    result[dj.SERIES_INSTANCE_UID] = dj.element("UI", series.series_uid)
    result[dj.SOP_CLASS_UID] = dj.element("UI", instance.sop_class_uid)
    result[dj.SOP_INSTANCE_UID] = dj.element("UI", instance.sop_instance_uid)
    result[dj.INSTANCE_AVAILABILITY] = dj.element(
        "CS", availability(1 if instance.tier == "archive" else 0)
    )
    result[dj.RETRIEVE_URL] = dj.element(
        "UR", instance_url(base, study.study_uid, series.series_uid, instance.sop_instance_uid)
    )
    return result


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    more: bool


def search(
    *, org: Organization, request: HttpRequest, level: str, scope: Scope | None = None
) -> SearchResult:
    """Run one QIDO-RS search. ``scope`` rows were already looked up for this organization."""
    scope = scope or Scope()
    query = query_parse(request.GET, level=level, org=org)
    base = base_url(request)
    # Trashed studies are out of every search until they are taken out of the trash.
    qs: QuerySet[Any] = level_queryset(org, level)
    if scope.study is not None:
        qs = qs.filter(study=scope.study)
    if scope.series is not None:
        qs = qs.filter(series=scope.series)
    for condition in query.conditions:
        qs = qs.filter(condition)
    rows = list(ordered(qs, level)[query.offset : query.offset + query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if level == "study":
        items = [_study_json(s, base) for s in rows]
    elif level == "series":
        items = [_series_json(s, base, query, scope) for s in rows]
    else:
        items = [_instance_json(i, base, query, scope) for i in rows]
    return SearchResult(items=items, more=more)
