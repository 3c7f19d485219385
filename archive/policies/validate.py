"""The rule language of archive policies and its validation.

A policy is an ordered list of rules (see docs/policies-and-tiers.md). Move rules give every
instance a target tier (the first matching rule decides; a policy never warms data); delete rules
send whole studies to the trash once their retention has passed. A policy may also hold one
prefetch rule: when a new study arrives for a patient, or an integration posts an order, the
patient's priors it names (same modality, same body part, the last N studies and/or those of the
last N years) are restored from the archive tier and kept readable for ``keep_days``, until this
month's prefetches would cost more than ``monthly_cap`` (in the plan's currency); the restores
package carries it out (``archive.restores.services.prefetch_for_study``). Its position in the
list does not matter: move and delete rules never look at it. ``rules_validate`` checks a
list of rules against the organization's locations and returns them normalized, or refuses with
one field error per problem (``rules[0].action.tier``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from archive.index.selectors import archive_settings_get
from archive.models import (
    StorageLocation,
)
from archive.storage.tiers import TIER_CATALOG, location_serves
from tenants.errors import ValidationFailed
from tenants.models import Organization

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


# --- the prefetch rule -------------------------------------------------------------------------

PREFETCH = "prefetch"


# Which priors: the same modality and/or body part as the new study (or the order), the last N
# such studies and/or those dated within the last N years (at least one of the two bounds).
PREFETCH_CONDITIONS = ("same_modality", "same_body_part", "last_studies", "within_years")


MAX_PRIOR_STUDIES = 50


MAX_PRIOR_YEARS = 100


# Days a prefetched copy stays readable (S3 restores are asked for in whole days).
MAX_KEEP_DAYS = 365


MAX_MONTHLY_CAP = Decimal("1000000")


def _flag(raw: Any, *, where: str, errors: dict[str, list[str]]) -> bool | None:
    if not isinstance(raw, bool):
        errors.setdefault(where, []).append("Give true or false.")
        return None
    return raw


def _bounded(
    raw: Any, *, where: str, upper: int, what: str, errors: dict[str, list[str]]
) -> int | None:
    value = _int(raw)
    if value is None or value < 1 or value > upper:
        errors.setdefault(where, []).append(f"Give {what}: a whole number from 1 to {upper}.")
        return None
    return value


def _cap_amount(raw: Any, *, where: str, errors: dict[str, list[str]]) -> str | None:
    """A non-negative amount with at most two decimals, e.g. "250.00" (a number or a string)."""
    amount: Decimal | None = None
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        try:
            amount = Decimal(str(raw).strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite():
        errors.setdefault(where, []).append(
            'Give the monthly cap as an amount in the plan\'s currency, e.g. "250.00".'
        )
        return None
    if amount < 0:
        errors.setdefault(where, []).append("The monthly cap must not be negative.")
        return None
    if amount > MAX_MONTHLY_CAP:
        errors.setdefault(where, []).append(f"The monthly cap must be at most {MAX_MONTHLY_CAP}.")
        return None
    if amount != amount.quantize(Decimal("0.01")):
        errors.setdefault(where, []).append("The monthly cap has at most two decimals (cents).")
        return None
    return str(amount.quantize(Decimal("0.01")))


def _prefetch_validate(
    action_raw: dict[str, Any],
    conditions_raw: Any,
    *,
    prefix: str,
    errors: dict[str, list[str]],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The conditions and action of a prefetch rule, normalized; None with field errors."""
    before = sum(len(v) for v in errors.values())
    where = f"{prefix}.action"
    extra = sorted(set(action_raw) - {"type", "keep_days", "monthly_cap"})
    if extra:
        errors.setdefault(where, []).append(
            f"Unknown key(s) {', '.join(extra)} in a prefetch action; it has keep_days and "
            "monthly_cap."
        )
    keep_days = _bounded(
        action_raw.get("keep_days"),
        where=f"{where}.keep_days",
        upper=MAX_KEEP_DAYS,
        what="the days the priors stay readable",
        errors=errors,
    )
    cap = _cap_amount(action_raw.get("monthly_cap"), where=f"{where}.monthly_cap", errors=errors)

    where = f"{prefix}.conditions"
    given = isinstance(conditions_raw, dict)
    if not given:
        errors.setdefault(where, []).append(
            "Say which priors: give last_studies and/or within_years (and optionally "
            "same_modality, same_body_part)."
        )
        conditions_raw = {}
    conditions: dict[str, Any] = {"same_modality": False, "same_body_part": False}
    for key, value in conditions_raw.items():
        cwhere = f"{where}.{key}"
        if key not in PREFETCH_CONDITIONS:
            errors.setdefault(cwhere, []).append(
                f"Unknown condition {key!r} for a prefetch rule; its conditions are "
                f"{', '.join(PREFETCH_CONDITIONS)}."
            )
            continue
        parsed: Any
        if key in ("same_modality", "same_body_part"):
            parsed = _flag(value, where=cwhere, errors=errors)
        elif key == "last_studies":
            parsed = _bounded(
                value,
                where=cwhere,
                upper=MAX_PRIOR_STUDIES,
                what="the number of most recent priors",
                errors=errors,
            )
        else:
            parsed = _bounded(
                value,
                where=cwhere,
                upper=MAX_PRIOR_YEARS,
                what="how many years back priors are taken",
                errors=errors,
            )
        if parsed is not None:
            conditions[key] = parsed
    if given and not ({"last_studies", "within_years"} & set(conditions_raw)):
        errors.setdefault(where, []).append(
            "Bound the priors with last_studies and/or within_years: without either, every study "
            "of the patient would be restored."
        )
    if sum(len(v) for v in errors.values()) > before or keep_days is None or cap is None:
        return None
    ordered = {k: conditions[k] for k in PREFETCH_CONDITIONS if k in conditions}
    return ordered, {"type": PREFETCH, "keep_days": keep_days, "monthly_cap": cap}


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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
    if isinstance(action_raw, dict) and action_raw.get("type") == PREFETCH:
        parts = _prefetch_validate(action_raw, raw.get("conditions"), prefix=prefix, errors=errors)
        if parts is None or sum(len(v) for v in errors.values()) > before:
            return None
        prefetch: dict[str, Any] = {"conditions": parts[0], "action": parts[1]}
        return {"name": name, **prefetch} if name else prefetch
    action: dict[str, Any] | None = None
    where = f"{prefix}.action"
    if not isinstance(action_raw, dict) or action_raw.get("type") not in ACTIONS:
        kind = action_raw.get("type") if isinstance(action_raw, dict) else action_raw
        errors.setdefault(where, []).append(
            f"Unknown action {kind!r}; the action type is move (to a tier), delete or prefetch."
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
    prefetch_at: int | None = None
    for i, raw in enumerate(rules):
        rule = _rule_validate(
            raw, i=i, location=location, retention_minimum_days=minimum, errors=errors
        )
        action = raw.get("action") if isinstance(raw, dict) else None
        if isinstance(action, dict) and action.get("type") == PREFETCH:
            if prefetch_at is not None:
                errors.setdefault(f"rules[{i}].action", []).append(
                    f"A policy has one prefetch rule; rules[{prefetch_at}] is already one."
                )
                continue
            prefetch_at = i
        if rule is not None:
            out.append(rule)
    if errors:
        first = next(iter(errors.values()))[0]
        raise ValidationFailed(f"The policy has errors: {first}", fields=errors)
    return out
