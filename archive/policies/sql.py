"""Archive policies compiled to SQL: the selection the planner and the preview run over the index.

Move rules and delete rules compile to one SQL selection each, so that planning and preview never
iterate instances in Python. The simulator evaluates the same rules in Python on its inventory's
buckets (``archive.policies.python``); one parametrized test proves that both select the
same instances for every condition kind.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import (
    Case,
    DateField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import (
    Coalesce,
    ExtractDay,
    ExtractMonth,
    ExtractYear,
    TruncDate,
)
from django.utils import timezone

from archive.models import (
    Instance,
    Study,
    TierMove,
)
from archive.storage.tiers import TIER_CATALOG
from tenants.models import Organization


class DaysStayed(Func):
    """Whole days (rounded down) from ``since`` to ``now``: the days an object has spent in its tier."""

    output_field = IntegerField()
    arity = 2

    def as_sql(  # type: ignore[override]
        self, compiler: Any, connection: Any, **extra: Any
    ) -> tuple[str, list[Any]]:
        now_sql, now_params = compiler.compile(self.source_expressions[0])
        since_sql, since_params = compiler.compile(self.source_expressions[1])
        if connection.vendor == "postgresql":
            sql = f"FLOOR(EXTRACT(EPOCH FROM ({now_sql} - {since_sql})) / 86400)"
        else:
            sql = f"CAST(julianday({now_sql}) - julianday({since_sql}) AS INTEGER)"
        return sql, [*now_params, *since_params]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _wildcard_regex(pattern: str) -> str:
    """A DICOM wildcard pattern (``*`` any run, ``?`` one character) as an anchored regex.

    Every other character is escaped, so ``%``, ``_``, ``.`` or brackets in a description match
    themselves; matching is case-insensitive (``iregex``) and over the whole description.
    """
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        elif ch.isalnum() or ch == " ":
            parts.append(ch)
        else:
            parts.append("\\" + ch)
    return "^" + "".join(parts) + "$"


def _datetime_days(field_name: str, fallback: str | None, rng: dict[str, int], now: datetime) -> Q:
    """``days since <field> (or <fallback> when null)`` within ``rng``; whole days, rounded down.

    days >= min  <=>  t <= now - min days;  days <= max  <=>  t > now - (max + 1) days.
    """
    q = Q()
    for key, op, delta in (("min", "lte", 0), ("max", "gt", 1)):
        if key not in rng:
            continue
        cutoff = now - timedelta(days=rng[key] + delta)
        cond = Q(**{f"{field_name}__{op}": cutoff})
        if fallback:
            cond |= Q(**{f"{field_name}__isnull": True, f"{fallback}__{op}": cutoff})
        q &= cond
    return q


def _date_days(prefix: str, rng: dict[str, int], now: datetime) -> Q:
    """``days since the study date`` within ``rng``; the date the study arrived when it has none."""
    today = now.astimezone(UTC).date()
    q = Q()
    if "min" in rng:
        last_day = today - timedelta(days=rng["min"])
        q &= Q(**{f"{prefix}study_date__lte": last_day}) | Q(
            **{
                f"{prefix}study_date__isnull": True,
                f"{prefix}created_at__lt": _midnight(last_day + timedelta(days=1)),
            }
        )
    if "max" in rng:
        first_day = today - timedelta(days=rng["max"])
        q &= Q(**{f"{prefix}study_date__gte": first_day}) | Q(
            **{
                f"{prefix}study_date__isnull": True,
                f"{prefix}created_at__gte": _midnight(first_day),
            }
        )
    return q


AGE_ALIAS = "policy_age_code"
LAST_READ_ALIAS = "policy_last_read"


def _study_last_read() -> Subquery:
    """The last time any instance of the study was read (retrieved or downloaded), or null."""
    return Subquery(
        Instance.objects.filter(study=OuterRef("pk"))
        .order_by()
        .values("study")
        .annotate(last=Max("last_accessed_at"))
        .values("last")[:1]
    )


def _age_code(prefix: str) -> Any:
    """Study date minus birth date as YYYYMMDD numbers: the age in whole years is this // 10000.

    (Comparing against ``years * 10000`` avoids integer division, which differs by database.)
    """
    study_day = Coalesce(
        F(f"{prefix}study_date"), TruncDate(f"{prefix}created_at"), output_field=DateField()
    )
    birth = F(f"{prefix}patient_birth_date")

    def code(day: Any) -> Any:
        return ExtractYear(day) * 10000 + ExtractMonth(day) * 100 + ExtractDay(day)

    return ExpressionWrapper(code(study_day) - code(birth), output_field=IntegerField())


def _conditions_q(conditions: dict[str, Any], *, now: datetime, level: str, prefix: str = "") -> Q:
    """The SQL condition of one rule. ``level`` "instance" (move rules, over Instance joined to
    Study and Series; ``prefix`` "study__") or "study" (delete rules, over Study)."""
    q = Q()
    for key, value in conditions.items():
        if key == "days_since_last_access":
            if level == "instance":
                q &= _datetime_days("last_accessed_at", "received_at", value, now)
            else:
                # The study's last read is its instances' (Instance.last_accessed_at counts
                # retrievals only); Study.last_accessed_at also counts metadata requests.
                q &= _datetime_days(LAST_READ_ALIAS, "created_at", value, now)
        elif key == "days_since_study_date":
            q &= _date_days(prefix, value, now)
        elif key == "modalities":
            if level == "instance":
                q &= Q(series__modality__in=value)
            else:
                any_of = Q()
                for modality in value:
                    any_of |= Q(modalities__contains=f"\\{modality}\\")
                q &= any_of
        elif key == "sop_classes":
            q &= Q(sop_class_uid__in=value)
        elif key == "description_pattern":
            q &= Q(**{f"{prefix}study_description__iregex": _wildcard_regex(value)})
        elif key == "patient_age_years":
            q &= Q(**{f"{prefix}patient_birth_date__isnull": False})
            if "min" in value:
                q &= Q(**{f"{AGE_ALIAS}__gte": value["min"] * 10000})
            if "max" in value:
                q &= Q(**{f"{AGE_ALIAS}__lt": (value["max"] + 1) * 10000})
    return q


def _uses_age(rules: list[dict[str, Any]]) -> bool:
    return any("patient_age_years" in r["conditions"] for r in rules)


def _warmer_than(tier: str) -> list[str]:
    order = TIER_CATALOG[tier].order
    return [t for t, spec in TIER_CATALOG.items() if spec.order < order]


def move_rules(rules: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, r) for i, r in enumerate(rules) if r["action"]["type"] == "move"]


def move_selection(
    *, org: Organization, rules: list[dict[str, Any]], now: datetime | None = None
) -> QuerySet[Instance]:
    """The instances the move rules would move now, annotated with ``rule_index``.

    ``rule_index`` is the position (in the whole rule list) of the first move rule the instance
    matches; instances whose first match is not colder than their tier match nothing (a policy
    never warms data, and a later rule does not get a second chance). Excluded: trashed
    studies, instances with an open TierMove. ``rules`` must be normalized (rules_validate).
    """
    now = now or timezone.now()
    movers = move_rules(rules)
    if not movers:
        return Instance.objects.none()
    coldest = max(TIER_CATALOG[r["action"]["tier"]].order for _, r in movers)
    qs = Instance.objects.for_org(org).filter(
        study__trashed_at__isnull=True,
        tier__in=[t for t, spec in TIER_CATALOG.items() if spec.order < coldest],
    )
    qs = qs.filter(
        ~Exists(TierMove.objects.filter(instance=OuterRef("pk"), state__in=TierMove.OPEN_STATES))
    )
    if _uses_age(rules):
        qs = qs.alias(**{AGE_ALIAS: _age_code("study__")})
    whens = [
        When(
            _conditions_q(rule["conditions"], now=now, level="instance", prefix="study__"),
            then=Case(
                When(tier__in=_warmer_than(rule["action"]["tier"]), then=Value(i)),
                default=Value(-1),
            ),
        )
        for i, rule in movers
    ]
    selected: Any = qs.annotate(rule_index=Case(*whens, default=None, output_field=IntegerField()))
    return selected.filter(rule_index__gte=0).order_by()


def trash_selection(
    *,
    org: Organization,
    rules: list[dict[str, Any]],
    now: datetime | None = None,
    held: bool = False,
) -> QuerySet[Study]:
    """Studies a delete rule sends to the trash now (``held=True``: the ones a legal hold keeps).

    A study matches when any delete rule's conditions hold and its retention (after_days since
    the study date, or the arrival date without one) has passed. Trashed studies never match.
    """
    now = now or timezone.now()
    deleters = [r for r in rules if r["action"]["type"] == "delete"]
    if not deleters:
        return Study.objects.none()
    match = Q()
    for rule in deleters:
        match |= _conditions_q(rule["conditions"], now=now, level="study") & _date_days(
            "", {"min": rule["action"]["after_days"]}, now
        )
    qs = Study.objects.for_org(org).filter(trashed_at__isnull=True, legal_hold=held)
    if any("days_since_last_access" in r["conditions"] for r in deleters):
        qs = qs.alias(**{LAST_READ_ALIAS: _study_last_read()})
    if _uses_age(deleters):
        qs = qs.alias(**{AGE_ALIAS: _age_code("")})
    return qs.filter(match).order_by()
