"""QIDO-RS (PS3.18 10.6): search the study / series / instance index of one organization.

Matching (PS3.4 C.2.2.2) runs in SQL on the index columns, never on the JSON metadata:
- single value: exact; PN attributes (PatientName, ReferringPhysicianName) ignore case;
- wildcards ``*`` and ``?`` on text attributes -> ``LIKE`` with ``%``/``_``/``\\`` escaped
  (``*`` alone is universal matching);
- ranges on dates and times: ``20260101-20260131``, ``20260101-``, ``-20260131``;
- UID lists: ``StudyInstanceUID=1.2,1.3`` (comma or backslash);
- ``ModalitiesInStudy=CT,MR``: studies with any of them;
- an empty value is universal matching: the attribute is only returned.
``fuzzymatching=true`` is accepted and ignored (fuzzy matching is off). Results come from the
stored metadata plus computed attributes (counts, modalities, availability, RetrieveURL).

Every parameter is checked before it reaches SQL, and each problem is a 400 naming it: ``limit``
and ``offset`` are ASCII whole numbers (``offset`` at most ``MAX_OFFSET``, ``limit`` capped at
``MAX_LIMIT``), integer keys stay in the range of DICOM's IS, every UID of a UID list follows the
archive's UID rule (``archive.ingest.dicom.uid_problem``) and a list holds at least one, no value holds a
NUL character.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import F, Lookup, Q, QuerySet, Value
from django.db.models.functions import Upper
from django.http import HttpRequest, QueryDict

from archive.dicomweb import dicomjson as dj
from archive.dicomweb.common import base_url, instance_url, series_url, study_url
from archive.ingest.dicom import uid_problem
from archive.models import Instance, Series, Study
from tenants.errors import ValidationFailed
from tenants.models import Organization

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Deeper than any archive's result list; keeps OFFSET inside every database's integer range.
MAX_OFFSET = 1_000_000_000
# DICOM IS (Integer String): a signed 32-bit value (PS3.5 6.2).
IS_MIN, IS_MAX = -(2**31), 2**31 - 1
_WHOLE = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
LEVELS = ("study", "series", "instance")
# Query parameters of PS3.18 8.3 that are not attributes.
_IGNORED_PARAMS = {"accept", "charset"}


class Like(Lookup):
    """``lhs LIKE rhs`` with backslash as the escape character on every backend.

    PostgreSQL's LIKE escapes with backslash by default; keeping the pattern free of an ESCAPE
    clause lets the planner use a prefix (``text_pattern_ops``) or trigram index.
    SQLite needs the clause; its LIKE ignores ASCII case, so case-sensitive matching uses GLOB there.
    """

    lookup_name = "dicom_like"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} LIKE {rhs}", (*lhs_params, *rhs_params)

    def as_sqlite(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", (*lhs_params, *rhs_params)


class Glob(Lookup):
    """SQLite's case-sensitive wildcard match (``*``, ``?``, ``[...]``)."""

    lookup_name = "dicom_glob"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} GLOB {rhs}", (*lhs_params, *rhs_params)


def like_pattern(value: str) -> str:
    """DICOM wildcards -> a LIKE pattern with backslash escapes."""
    out = []
    for char in value:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def glob_pattern(value: str) -> str:
    return "".join(f"[{c}]" if c in "[]" else c for c in value)


# --- the matching keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    keyword: str
    level: str
    column: str
    kind: str  # uid, text, pn, date, time, int, modalities, list

    @property
    def tag(self) -> str:
        return dj.tag_of(self.keyword)


KEYS: dict[str, Key] = {
    key.tag: key
    for key in [
        Key("StudyInstanceUID", "study", "study_uid", "uid"),
        Key("PatientID", "study", "patient_id", "text"),
        Key("PatientName", "study", "patient_name", "pn"),
        Key("PatientBirthDate", "study", "patient_birth_date", "date"),
        Key("PatientSex", "study", "patient_sex", "text"),
        Key("AccessionNumber", "study", "accession_number", "text"),
        Key("StudyDate", "study", "study_date", "date"),
        Key("StudyTime", "study", "study_time", "time"),
        Key("StudyDescription", "study", "study_description", "text"),
        Key("StudyID", "study", "study_id", "text"),
        Key("ReferringPhysicianName", "study", "referring_physician", "pn"),
        Key("ModalitiesInStudy", "study", "modalities", "modalities"),
        Key("SeriesInstanceUID", "series", "series_uid", "uid"),
        Key("Modality", "series", "modality", "list"),
        Key("SeriesNumber", "series", "series_number", "int"),
        Key("SeriesDescription", "series", "series_description", "text"),
        Key("BodyPartExamined", "series", "body_part", "text"),
        Key("SOPInstanceUID", "instance", "sop_instance_uid", "uid"),
        Key("SOPClassUID", "instance", "sop_class_uid", "uid"),
        Key("InstanceNumber", "instance", "instance_number", "int"),
    ]
}

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

# Which relation reaches a higher level's column from a lower level's model.
_PREFIX = {
    ("study", "study"): "",
    ("series", "study"): "study__",
    ("series", "series"): "",
    ("instance", "study"): "study__",
    ("instance", "series"): "series__",
    ("instance", "instance"): "",
}


def _invalid(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_query", fields={name: [message]})


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _parse_date(name: str, text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise _invalid(
            name, f"{name} must be a date YYYYMMDD or a range of them (YYYYMMDD-YYYYMMDD)."
        ) from None


_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def _parse_time(name: str, text: str, *, upper: bool) -> dt.time:
    """HH, HHMM, HHMMSS or HHMMSS.FFFFFF; an upper bound covers the whole unit it names."""
    match = _TIME.fullmatch(text)
    if not match:
        raise _invalid(name, f"{name} must be a time HHMMSS[.FFFFFF] or a range of them.")
    hh, mm, ss, frac = match.groups()
    try:
        return dt.time(
            int(hh),
            int(mm) if mm else (59 if upper else 0),
            int(ss) if ss else (59 if upper else 0),
            int(frac.ljust(6, "0")) if frac else (999999 if upper else 0),
        )
    except ValueError:
        raise _invalid(name, f"{name} has an impossible time {text!r}.") from None


def _range(name: str, value: str) -> tuple[str, str, bool]:
    if value.count("-") > 1:
        raise _invalid(name, f"{name} takes one value or one range low-high.")
    if "-" in value:
        low, high = value.split("-")
        if not low and not high:
            raise _invalid(name, f"{name} range needs at least one end.")
        return low, high, True
    return value, value, False


def _key_filter(key: Key, name: str, value: str, prefix: str) -> Q | None:
    """The SQL condition of one matching key; None for universal matching."""
    column = prefix + key.column
    wild = "*" in value or "?" in value
    if key.kind == "uid":
        if wild:
            raise _invalid(name, f"{name} takes UIDs (a comma-separated list), not wildcards.")
        uids = _split_list(value)
        if not uids:
            raise _invalid(name, f"{name} takes one or more UIDs, separated by commas.")
        for uid in uids:
            problem = uid_problem(uid)
            if problem is not None:
                raise _invalid(name, f"{name} value {uid[:80]!r} is not a UID: it {problem}.")
        return Q(**{f"{column}__in": uids}) if len(uids) > 1 else Q(**{column: uids[0]})
    if key.kind in ("text", "pn"):
        if wild:
            if not value.strip("*"):
                return None
            if key.kind == "pn":
                return Q(Like(Upper(F(column)), Upper(Value(like_pattern(value)))))
            return Q(_case_sensitive_wild(F(column), value))
        return Q(**{f"{column}__iexact" if key.kind == "pn" else column: value})
    if key.kind == "list":  # Modality: one value or a list, wildcards allowed for one value
        values = _split_list(value)
        if wild and len(values) == 1:
            return Q(_case_sensitive_wild(F(column), values[0])) if value.strip("*") else None
        if wild:
            raise _invalid(name, f"{name} takes one value with wildcards, or a list without.")
        return Q(**{f"{column}__in": values})
    if key.kind == "modalities":
        if wild:
            raise _invalid(name, f"{name} takes modalities (CT,MR), not wildcards.")
        condition = Q()
        for modality in _split_list(value):
            condition |= Q(**{f"{column}__contains": f"\\{modality}\\"})
        return condition
    if key.kind in ("date", "time"):
        if wild:
            raise _invalid(name, f"{name} takes a value or a range, not wildcards.")
        low, high, is_range = _range(name, value)
        parse: Callable[[str, bool], Any] = (
            (lambda text, upper: _parse_date(name, text))
            if key.kind == "date"
            else (lambda text, upper: _parse_time(name, text, upper=upper))
        )
        if not is_range and key.kind == "date":
            return Q(**{column: parse(low, False)})
        condition = Q()
        if low:
            condition &= Q(**{f"{column}__gte": parse(low, False)})
        if high:
            condition &= Q(**{f"{column}__lte": parse(high, True)})
        return condition
    if key.kind == "int":
        number = int(value) if _SIGNED.fullmatch(value) and len(value) <= 12 else None
        if number is None or not IS_MIN <= number <= IS_MAX:
            raise _invalid(name, f"{name} takes a whole number from {IS_MIN} to {IS_MAX}.")
        return Q(**{column: number})
    raise AssertionError(f"unknown matching kind {key.kind}")


def _case_sensitive_wild(expression: F, value: str) -> Lookup[Any]:

    if connection.vendor == "sqlite":
        return Glob(expression, Value(glob_pattern(value)))
    return Like(expression, Value(like_pattern(value)))


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
        raise _invalid(name, f"{name} must be a non-negative whole number.")
    text = text.lstrip("0") or "0"
    # A number longer than the bound in digits is over it, without converting a huge string.
    number = int(text) if len(text) <= 18 else 10**18
    if maximum is not None and number > maximum:
        raise _invalid(name, f"{name} must be a whole number from 0 to {maximum}.")
    return number


def query_parse(params: QueryDict, *, level: str) -> Query:
    """Validate the query string; every problem is a 400 that names the parameter."""
    query = Query(level=level)
    allowed = LEVELS[: LEVELS.index(level) + 1]
    for name in params:
        values = params.getlist(name)
        lowered = name.lower()
        if any("\x00" in value for value in values):
            raise _invalid(name, f"{name}: a NUL character is not allowed in a value.")
        if lowered == "limit":
            query.limit = min(_int_param(name, values[-1]), MAX_LIMIT)
            continue
        if lowered == "offset":
            query.offset = _int_param(name, values[-1], maximum=MAX_OFFSET)
            continue
        if lowered == "fuzzymatching":
            if values[-1].lower() not in ("true", "false"):
                raise _invalid(name, "fuzzymatching must be true or false.")
            continue
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
                    raise _invalid(
                        "includefield", f"includefield names an unknown attribute {item!r}."
                    ) from None
            continue
        if lowered in _IGNORED_PARAMS:
            continue
        if "." in name:
            raise _invalid(name, f"{name}: matching on sequence items is not supported.")
        try:
            tag = dj.tag_of(name)
        except dj.UnknownAttribute:
            raise _invalid(
                name, f"Unknown attribute {name!r}: use a DICOM keyword or an 8-digit hex tag."
            ) from None
        key = KEYS.get(tag)
        if key is None or key.level not in allowed:
            supported = ", ".join(k.keyword for k in KEYS.values() if k.level in allowed)
            raise _invalid(
                name,
                f"{dj.keyword_of(tag)} is not a matching key for a {level} search; "
                f"the keys are {supported}.",
            )
        if len(values) > 1 and key.kind not in ("uid", "list", "modalities"):
            raise _invalid(name, f"{name} is given {len(values)} times; give it once.")
        value = ",".join(values).strip() if len(values) > 1 else values[0].strip()
        query.include.add(tag)
        if not value:
            continue  # universal matching: return the attribute, match everything
        condition = _key_filter(key, name, value, _PREFIX[(level, key.level)])
        if condition is not None:
            query.conditions.append(condition)
    return query


# --- the search -----------------------------------------------------------------------------


@dataclass
class Scope:
    """The part of the hierarchy the URL fixed (``/studies/{study}/series/{series}/...``)."""

    study: Study | None = None
    series: Series | None = None


def _availability(archived_bytes: int) -> str:
    # Archive-tier objects need a restore before they can be read.
    return "NEARLINE" if archived_bytes else "ONLINE"


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
    result[dj.INSTANCE_AVAILABILITY] = dj.element("CS", _availability(study.bytes_archive))
    result[dj.RETRIEVE_URL] = dj.element("UR", study_url(base, study.study_uid))
    return result


def _series_json(series: Series, base: str, query: Query, scope: Scope) -> dict[str, Any]:
    study = series.study
    result = _context(study.metadata, scope.study is not None, query)
    result.update(series.metadata or {})
    result[dj.STUDY_INSTANCE_UID] = dj.element("UI", study.study_uid)
    result[dj.SERIES_INSTANCE_UID] = dj.element("UI", series.series_uid)
    result[dj.NUMBER_OF_SERIES_RELATED_INSTANCES] = dj.element("IS", series.instance_count)
    result[dj.INSTANCE_AVAILABILITY] = dj.element("CS", _availability(series.bytes_archive))
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
        "CS", _availability(1 if instance.tier == "archive" else 0)
    )
    result[dj.RETRIEVE_URL] = dj.element(
        "UR", instance_url(base, study.study_uid, series.series_uid, instance.sop_instance_uid)
    )
    return result


def _ordered(qs: QuerySet[Any], level: str) -> QuerySet[Any]:
    if level == "study":
        return qs.order_by(F("study_date").desc(nulls_last=True), "-id")
    if level == "series":
        return qs.order_by("study_id", F("series_number").asc(nulls_last=True), "id")
    return qs.order_by("study_id", "series_id", F("instance_number").asc(nulls_last=True), "id")


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    more: bool


def search(
    *, org: Organization, request: HttpRequest, level: str, scope: Scope | None = None
) -> SearchResult:
    """Run one QIDO-RS search. ``scope`` rows were already looked up for this organization."""
    scope = scope or Scope()
    query = query_parse(request.GET, level=level)
    base = base_url(request)
    qs: QuerySet[Any]
    # Trashed studies are out of every search until they are taken out of the trash.
    if level == "study":
        qs = Study.objects.for_org(org).filter(trashed_at__isnull=True)
    elif level == "series":
        qs = Series.objects.for_org(org).filter(study__trashed_at__isnull=True)
        qs = qs.select_related("study")
    else:
        qs = Instance.objects.for_org(org).filter(study__trashed_at__isnull=True)
        qs = qs.select_related("study", "series")
    if scope.study is not None:
        qs = qs.filter(study=scope.study)
    if scope.series is not None:
        qs = qs.filter(series=scope.series)
    for condition in query.conditions:
        qs = qs.filter(condition)
    rows = list(_ordered(qs, level)[query.offset : query.offset + query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if level == "study":
        items = [_study_json(s, base) for s in rows]
    elif level == "series":
        items = [_series_json(s, base, query, scope) for s in rows]
    else:
        items = [_instance_json(i, base, query, scope) for i in rows]
    return SearchResult(items=items, more=more)
