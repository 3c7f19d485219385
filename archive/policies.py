"""Archive policies: the rule language, its validation, versions, and its compilation to SQL.

A policy is an ordered list of rules (see README, "Archive policies"). Move rules give every
instance a target tier (the first matching rule decides; a policy never warms data); delete rules
send whole studies to the trash once their retention has passed. Both compile to one SQL
selection over the index, so planning and preview never iterate instances in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    DateField,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Sum,
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

from archive.index.selectors import archive_settings_get
from archive.models import (
    ArchiveSettings,
    Instance,
    PolicyVersion,
    StorageLocation,
    Study,
    TierMove,
)
from archive.tiers import TIER_CATALOG, location_serves
from billing.pricing import MeterUse, marginal_cost, month_bounds, round_money
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

MAX_RULES = 20
MAX_NAME = 100
MAX_DAYS = 100_000
MAX_AGE_YEARS = 200
MAX_PATTERN = 64
MAX_LIST = 50

RANGE_CONDITIONS = ("days_since_last_access", "days_since_study_date", "patient_age_years")
CONDITIONS = (
    "days_since_last_access",
    "days_since_study_date",
    "modalities",
    "sop_classes",
    "description_pattern",
    "patient_age_years",
)
ACTIONS = ("move", "delete")
MOVE_TIERS = tuple(t for t in TIER_CATALOG if t != "hot")

_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


# --- validation --------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _range(
    raw: Any, *, where: str, upper: int, errors: dict[str, list[str]]
) -> dict[str, int] | None:
    if not isinstance(raw, dict) or not raw:
        errors.setdefault(where, []).append('Give "min" and/or "max", e.g. {"min": 90}.')
        return None
    unknown = sorted(set(raw) - {"min", "max"})
    if unknown:
        errors.setdefault(where, []).append(
            f"Unknown key(s) {', '.join(unknown)}; only min and max are allowed."
        )
        return None
    out: dict[str, int] = {}
    for key in ("min", "max"):
        if key not in raw:
            continue
        value = _int(raw[key])
        if value is None:
            errors.setdefault(where, []).append(f"{key} must be a whole number.")
            return None
        if value < 0:
            errors.setdefault(where, []).append(f"{key} must not be negative.")
            return None
        if value > upper:
            errors.setdefault(where, []).append(f"{key} must be at most {upper}.")
            return None
        out[key] = value
    if "min" in out and "max" in out and out["min"] > out["max"]:
        errors.setdefault(where, []).append(
            f"min ({out['min']}) is greater than max ({out['max']}): no study can match."
        )
        return None
    return out


def _str_list(
    raw: Any, *, where: str, pattern: re.Pattern[str], what: str, errors: dict[str, list[str]]
) -> list[str] | None:
    if isinstance(raw, str):
        raw = [part for part in re.split(r"[\s,\\]+", raw) if part]
    if not isinstance(raw, list) or not raw:
        errors.setdefault(where, []).append(f"Give a non-empty list of {what}.")
        return None
    if len(raw) > MAX_LIST:
        errors.setdefault(where, []).append(f"At most {MAX_LIST} {what}.")
        return None
    out: list[str] = []
    for item in raw:
        value = item.strip() if isinstance(item, str) else ""
        if what == "modalities":
            value = value.upper()
        if not pattern.match(value) or len(value) > 64:
            errors.setdefault(where, []).append(f"{item!r} is not one of the valid {what}.")
            return None
        if value not in out:
            out.append(value)
    return out


def _rule_validate(
    raw: Any,
    *,
    i: int,
    location: StorageLocation | None,
    retention_minimum_days: int | None,
    errors: dict[str, list[str]],
) -> dict[str, Any] | None:
    prefix = f"rules[{i}]"
    if not isinstance(raw, dict):
        errors.setdefault(prefix, []).append("A rule is an object with conditions and an action.")
        return None
    before = sum(len(v) for v in errors.values())
    unknown_keys = sorted(set(raw) - {"name", "conditions", "action"})
    if unknown_keys:
        errors.setdefault(prefix, []).append(
            f"Unknown key(s) {', '.join(unknown_keys)}; a rule has name, conditions and action."
        )

    name = raw.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str):
        errors.setdefault(f"{prefix}.name", []).append("The name must be text.")
        name = ""
    name = name.strip()
    if len(name) > MAX_NAME:
        errors.setdefault(f"{prefix}.name", []).append(f"At most {MAX_NAME} characters.")

    action_raw = raw.get("action")
    action: dict[str, Any] | None = None
    where = f"{prefix}.action"
    if not isinstance(action_raw, dict) or action_raw.get("type") not in ACTIONS:
        kind = action_raw.get("type") if isinstance(action_raw, dict) else action_raw
        errors.setdefault(where, []).append(
            f"Unknown action {kind!r}; the action type is move (to a tier) or delete."
        )
    elif action_raw["type"] == "move":
        extra = sorted(set(action_raw) - {"type", "tier"})
        tier = action_raw.get("tier")
        if extra:
            errors.setdefault(where, []).append(
                f"Unknown key(s) {', '.join(extra)} in a move action."
            )
        elif tier == "hot":
            errors.setdefault(f"{where}.tier", []).append(
                "A policy never moves data to hot; restores bring archived data back."
            )
        elif tier not in MOVE_TIERS:
            errors.setdefault(f"{where}.tier", []).append(
                f"Unknown tier {tier!r}; move to one of {', '.join(MOVE_TIERS)}."
            )
        elif location is not None and not location_serves(location, tier):
            errors.setdefault(f"{where}.tier", []).append(
                f"The primary storage location {location.name!r} cannot serve the {tier} tier "
                "(no storage class is set for it)."
            )
        else:
            action = {"type": "move", "tier": tier}
    else:
        extra = sorted(set(action_raw) - {"type", "after_days"})
        after = _int(action_raw.get("after_days"))
        if extra:
            errors.setdefault(where, []).append(
                f"Unknown key(s) {', '.join(extra)} in a delete action."
            )
        elif after is None or after < 1 or after > MAX_DAYS:
            errors.setdefault(f"{where}.after_days", []).append(
                f"Give the retention in days: a whole number from 1 to {MAX_DAYS}."
            )
        elif retention_minimum_days and after < retention_minimum_days:
            errors.setdefault(f"{where}.after_days", []).append(
                f"The retention ({after} days) is shorter than the organization's legal minimum "
                f"of {retention_minimum_days} days."
            )
        else:
            action = {"type": "delete", "after_days": after}

    conditions_raw = raw.get("conditions")
    conditions: dict[str, Any] = {}
    where = f"{prefix}.conditions"
    if not isinstance(conditions_raw, dict) or not conditions_raw:
        errors.setdefault(where, []).append(
            "Give at least one condition (a rule without conditions would match everything)."
        )
        conditions_raw = {}
    for key, value in conditions_raw.items():
        cwhere = f"{where}.{key}"
        if key not in CONDITIONS:
            errors.setdefault(cwhere, []).append(
                f"Unknown condition {key!r}; conditions are {', '.join(CONDITIONS)}."
            )
            continue
        if (
            key == "sop_classes"
            and isinstance(action_raw, dict)
            and action_raw.get("type") == "delete"
        ):
            errors.setdefault(cwhere, []).append(
                "A delete rule applies to whole studies: SOP classes are for move rules only."
            )
            continue
        if key in RANGE_CONDITIONS:
            upper = MAX_AGE_YEARS if key == "patient_age_years" else MAX_DAYS
            parsed: Any = _range(value, where=cwhere, upper=upper, errors=errors)
        elif key == "modalities":
            parsed = _str_list(
                value, where=cwhere, pattern=_MODALITY, what="modalities", errors=errors
            )
        elif key == "sop_classes":
            parsed = _str_list(
                value, where=cwhere, pattern=_UID, what="SOP class UIDs", errors=errors
            )
        else:
            text = value.strip() if isinstance(value, str) else ""
            if not text or text.strip("*") == "" and "?" not in text:
                errors.setdefault(cwhere, []).append(
                    "Give a description pattern with * and ? as wildcards, e.g. *CHEST*."
                )
                parsed = None
            elif len(text) > MAX_PATTERN:
                errors.setdefault(cwhere, []).append(f"At most {MAX_PATTERN} characters.")
                parsed = None
            else:
                parsed = text
        if parsed is not None:
            conditions[key] = parsed

    if sum(len(v) for v in errors.values()) > before or action is None:
        return None
    rule: dict[str, Any] = {"conditions": {k: conditions[k] for k in CONDITIONS if k in conditions}}
    if name:
        rule = {"name": name, **rule}
    rule["action"] = action
    return rule


def rules_validate(*, org: Organization, rules: Any) -> list[dict[str, Any]]:
    """Check a policy's rules and return them normalized (canonical keys and order).

    Raises ValidationFailed with field errors keyed ``rules[i].conditions.<name>``,
    ``rules[i].action.tier`` etc., all problems at once.
    """
    if not isinstance(rules, list):
        raise ValidationFailed(
            "The rules must be a list.", fields={"rules": ["Give a list of rules (may be empty)."]}
        )
    if len(rules) > MAX_RULES:
        raise ValidationFailed(
            "Too many rules.", fields={"rules": [f"A policy has at most {MAX_RULES} rules."]}
        )
    location = (
        StorageLocation.objects.for_org(org).filter(role=StorageLocation.Role.PRIMARY).first()
    )
    minimum = archive_settings_get(org=org).retention_minimum_days
    errors: dict[str, list[str]] = {}
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(rules):
        rule = _rule_validate(
            raw, i=i, location=location, retention_minimum_days=minimum, errors=errors
        )
        if rule is not None:
            out.append(rule)
    if errors:
        first = next(iter(errors.values()))[0]
        raise ValidationFailed(f"The policy has errors: {first}", fields=errors)
    return out


# --- compilation to SQL ------------------------------------------------------------------------


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
                q &= _datetime_days("last_accessed_at", "created_at", value, now)
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
    if _uses_age(deleters):
        qs = qs.alias(**{AGE_ALIAS: _age_code("")})
    return qs.filter(match).order_by()


# --- versions ----------------------------------------------------------------------------------


def policy_version_list(*, org: Organization) -> QuerySet[PolicyVersion]:
    return PolicyVersion.objects.for_org(org).select_related("author").order_by("-number")


def policy_version_get(*, org: Organization, number: int | str) -> PolicyVersion:
    try:
        return PolicyVersion.objects.for_org(org).get(number=int(number))
    except (PolicyVersion.DoesNotExist, ValueError, TypeError):
        raise NotFound("Policy version not found.") from None


def policy_active(*, org: Organization) -> PolicyVersion | None:
    return archive_settings_get(org=org).active_policy


def _activate_locked(
    *, org: Organization, actor: Actor, config: ArchiveSettings, version: PolicyVersion
) -> None:
    before = config.active_policy.number if config.active_policy else None
    config.active_policy = version
    config.save(update_fields=["active_policy"])
    audit_record(
        org=org,
        actor=actor,
        action="policy.activated",
        target=version,
        details={"number": version.number, "previous": before},
    )


def policy_save(
    *,
    org: Organization,
    actor: Actor,
    rules: Any,
    note: str = "",
    activate: bool = False,
) -> PolicyVersion:
    """Write the rules as the next version (n + 1), and make it the active one if asked.

    The settings row is locked while the number is taken, so two saves get two numbers.
    """
    normalized = rules_validate(org=org, rules=rules)
    note = (note or "").strip()
    if len(note) > 500:
        raise ValidationFailed(
            "The note is too long.", fields={"note": ["At most 500 characters."]}
        )
    with transaction.atomic():
        config, _ = ArchiveSettings.objects.select_for_update().get_or_create(organization=org)
        last = PolicyVersion.objects.for_org(org).order_by("-number").first()
        version = PolicyVersion.objects.create(
            organization=org,
            number=(last.number if last else 0) + 1,
            rules=normalized,
            note=note,
            author=actor.user if actor.user is not None and actor.user.pk else None,
            author_label=actor.label[:255],
        )
        audit_record(
            org=org,
            actor=actor,
            action="policy.version_created",
            target=version,
            details={"number": version.number, "rules": len(normalized), "note": note},
        )
        if activate:
            _activate_locked(org=org, actor=actor, config=config, version=version)
    return version


def policy_activate(*, org: Organization, actor: Actor, version: PolicyVersion) -> PolicyVersion:
    """Make ``version`` the one the engine applies. Its rules are checked again: the primary
    location or the legal minimum retention may have changed since it was written."""
    if version.organization_id != org.pk:
        raise NotFound("Policy version not found.")
    rules_validate(org=org, rules=version.rules)
    with transaction.atomic():
        config, _ = ArchiveSettings.objects.select_for_update().get_or_create(organization=org)
        if config.active_policy_id != version.pk:
            _activate_locked(org=org, actor=actor, config=config, version=version)
    return version


# --- preview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetPreview:
    """What moves into one tier: instances, distinct studies, bytes, and from which tiers."""

    tier: str
    instances: int
    studies: int
    bytes: int
    from_tiers: dict[str, dict[str, int]]  # from tier -> {"instances", "bytes"}


@dataclass(frozen=True)
class BillLine:
    label: str
    meter: str
    tier: str
    quantity: Decimal  # in the meter's billing unit (GiB-months, 1,000 transitions, GiB-days)
    unit: str
    amount: Decimal | None  # None: the plan does not price it


@dataclass(frozen=True)
class BillChange:
    """The change on this month's bill if the moves happened now (to the end of the month)."""

    currency: str
    plan_name: str
    month_start: datetime
    month_end: datetime
    remaining_hours: Decimal
    lines: list[BillLine]

    @property
    def total(self) -> Decimal:
        return round_money(sum((ln.amount or Decimal(0) for ln in self.lines), Decimal(0)))


@dataclass(frozen=True)
class PolicyPreview:
    now: datetime
    rules: list[dict[str, Any]]
    targets: list[TargetPreview]
    instances: int
    studies: int
    bytes: int
    # Byte-days charged because objects leave a tier before its minimum storage duration.
    early_deletion_byte_days: dict[str, int]
    trash_studies: int
    trash_bytes: int
    held_studies: int
    held_bytes: int
    bill: BillChange
    rule_counts: dict[int, dict[str, int]] = field(default_factory=dict)


def _move_aggregates(
    *, org: Organization, rules: list[dict[str, Any]], now: datetime
) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """GROUP BY (rule, from tier) and the distinct studies per target tier, in SQL."""
    if not move_rules(rules):
        return [], {}, 0
    selection = move_selection(org=org, rules=rules, now=now)
    since = Coalesce(F("tier_changed_at"), F("received_at"))
    early_whens = []
    for tier, spec in TIER_CATALOG.items():
        m = spec.minimum_storage_days
        if m == 0:
            continue
        early_whens.append(
            When(
                Q(tier=tier, policy_since__gt=now - timedelta(days=m)),
                then=F("size_bytes")
                * (Value(m) - DaysStayed(Value(now, output_field=DateTimeField()), since)),
            )
        )
    grouped = (
        selection.alias(policy_since=since)
        .values("rule_index", "tier")
        .annotate(
            n=Count("id"),
            total=Sum("size_bytes"),
            early=Sum(Case(*early_whens, default=Value(0), output_field=BigIntegerField())),
        )
        .order_by()
    )
    rows = [dict(row) for row in grouped]
    by_target: dict[str, list[int]] = {}
    for i, rule in move_rules(rules):
        by_target.setdefault(rule["action"]["tier"], []).append(i)
    studies = selection.aggregate(
        all=Count("study_id", distinct=True),
        **{
            f"t_{tier}": Count("study_id", distinct=True, filter=Q(rule_index__in=indices))
            for tier, indices in by_target.items()
        },
    )
    per_target = {tier: int(studies[f"t_{tier}"] or 0) for tier in by_target}
    return rows, per_target, int(studies["all"] or 0)


def _bill_change(
    *,
    org: Organization,
    now: datetime,
    storage_delta: dict[str, int],
    transitions: dict[str, int],
    early_byte_days: dict[str, int],
) -> BillChange:
    """Price the changes marginally, as the invoice will, against this month's usage so far.

    Storage: the bytes that change tier are priced for the rest of the month in both tiers (the
    difference); what is already stored is projected to stay as it is. Transitions and early
    deletion are one-off charges. A plan's allowances and tiers are taken into account, after a
    plan change this month only the new plan's part of them.
    """
    from archive.index.selectors import bytes_by_tier

    start, end = month_bounds(now)
    remaining = int((end - now).total_seconds())
    balance = bytes_by_tier(org=org)
    uses: list[tuple[MeterUse, str]] = []
    for tier in TIER_CATALOG:
        if storage_delta.get(tier):
            # Byte-seconds to the month's end, on top of what is stored staying as it is.
            use = MeterUse(
                "storage",
                storage_delta[tier] * remaining,
                tier=tier,
                projected=balance[tier] * remaining,
            )
            uses.append((use, f"Storage ({tier})"))
    for tier, count in transitions.items():
        if count:
            uses.append((MeterUse("tier.transitions", count, tier=tier), f"Transitions to {tier}"))
    for tier, byte_days in early_byte_days.items():
        if byte_days:
            uses.append(
                (MeterUse("early_deletion", byte_days, tier=tier), f"Early deletion ({tier})")
            )
    quote = marginal_cost(org=org, at=now, uses=[use for use, _ in uses])
    return BillChange(
        currency=quote.currency,
        plan_name=quote.plan_name,
        month_start=start,
        month_end=end,
        remaining_hours=Decimal(remaining) / Decimal(3600),
        lines=[
            BillLine(
                label=label,
                meter=cost.use.meter,
                tier=cost.use.tier,
                quantity=cost.quantity,
                unit=cost.unit,
                amount=cost.amount,
            )
            for (_, label), cost in zip(uses, quote.costs, strict=True)
        ],
    )


def policy_preview(
    *,
    org: Organization,
    rules: Any = None,
    version: PolicyVersion | None = None,
    now: datetime | None = None,
) -> PolicyPreview:
    """What the rules (or a saved version) would do today, and what it changes on this month's bill.

    Everything is aggregated in SQL (GROUP BY rule and source tier); nothing iterates instances.
    Raises ValidationFailed for invalid rules, like saving them would.
    """
    now = now or timezone.now()
    if version is not None:
        if version.organization_id != org.pk:
            raise NotFound("Policy version not found.")
        rules = version.rules
    normalized = rules_validate(org=org, rules=rules if rules is not None else [])
    rows, studies_per_target, studies_total = _move_aggregates(org=org, rules=normalized, now=now)

    target_of = {i: r["action"]["tier"] for i, r in move_rules(normalized)}
    moved: dict[str, dict[str, dict[str, int]]] = {}
    storage_delta: dict[str, int] = {}
    transitions: dict[str, int] = {}
    early: dict[str, int] = {}
    rule_counts: dict[int, dict[str, int]] = {}
    for row in rows:
        to_tier, from_tier = target_of[row["rule_index"]], row["tier"]
        n, size, owed = int(row["n"]), int(row["total"] or 0), int(row["early"] or 0)
        cell = moved.setdefault(to_tier, {}).setdefault(from_tier, {"instances": 0, "bytes": 0})
        cell["instances"] += n
        cell["bytes"] += size
        storage_delta[to_tier] = storage_delta.get(to_tier, 0) + size
        storage_delta[from_tier] = storage_delta.get(from_tier, 0) - size
        transitions[to_tier] = transitions.get(to_tier, 0) + n
        if owed:
            early[from_tier] = early.get(from_tier, 0) + owed
        counts = rule_counts.setdefault(row["rule_index"], {"instances": 0, "bytes": 0})
        counts["instances"] += n
        counts["bytes"] += size

    targets = [
        TargetPreview(
            tier=tier,
            instances=sum(c["instances"] for c in moved[tier].values()),
            studies=studies_per_target.get(tier, 0),
            bytes=sum(c["bytes"] for c in moved[tier].values()),
            from_tiers=moved[tier],
        )
        for tier in TIER_CATALOG
        if tier in moved
    ]
    trash = trash_selection(org=org, rules=normalized, now=now).aggregate(
        n=Count("id"), total=Sum("total_bytes")
    )
    held = trash_selection(org=org, rules=normalized, now=now, held=True).aggregate(
        n=Count("id"), total=Sum("total_bytes")
    )
    return PolicyPreview(
        now=now,
        rules=normalized,
        targets=targets,
        instances=sum(t.instances for t in targets),
        studies=studies_total,
        bytes=sum(t.bytes for t in targets),
        early_deletion_byte_days=early,
        trash_studies=int(trash["n"] or 0),
        trash_bytes=int(trash["total"] or 0),
        held_studies=int(held["n"] or 0),
        held_bytes=int(held["total"] or 0),
        bill=_bill_change(
            org=org,
            now=now,
            storage_delta=storage_delta,
            transitions=transitions,
            early_byte_days=early,
        ),
        rule_counts=rule_counts,
    )
