"""Archive policies evaluated in Python: the engine the simulator runs on its inventory's buckets,
month by month, where a bucket stands for many instances that share their attributes.

It has the semantics of the SQL the planner runs (``archive.policies.sql``): the same
conditions, DICOM wildcards (``*``, ``?``) matched case-insensitively over the whole description,
whole-day ranges (``max`` inclusive), an unknown value never matching a range. One parametrized
test proves that both engines select the same instances for every condition kind.
"""

from __future__ import annotations

import re
from typing import Any, Protocol


class RuleSubject(Protocol):
    """What a rule looks at: one instance, or a bucket of instances sharing these attributes.
    ``idle``: days since the last read (or arrival); ``age``: days since the study date (both
    negative when that lies in the future, as the planner counts them); ``patient_age``: whole
    years at the study date (which time does not change), None when unknown."""

    modality: str
    sop_class: str
    description: str
    idle: float
    age: float
    patient_age: float | None


def wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL)


def in_range(value: float | None, rng: dict[str, Any]) -> bool:
    if value is None:
        return False
    lo, hi = rng.get("min"), rng.get("max")
    return (lo is None or value >= lo) and (hi is None or value < hi + 1)


class CompiledRule:
    """A rule with its pattern compiled, evaluated on a bucket at ``shift`` days from now."""

    def __init__(self, index: int, rule: dict[str, Any]):
        self.index = index
        self.rule = rule
        self.conditions: dict[str, Any] = rule.get("conditions", {})
        self.action: dict[str, Any] = rule.get("action", {})
        pattern = self.conditions.get("description_pattern")
        self.pattern = wildcard(pattern) if pattern else None

    def matches_always(self, b: RuleSubject) -> bool:
        """The conditions that time does not change (modality, SOP class, description)."""
        c = self.conditions
        if "modalities" in c and b.modality not in c["modalities"]:
            return False
        if "sop_classes" in c and b.sop_class not in c["sop_classes"]:
            return False
        return self.pattern is None or bool(self.pattern.match(b.description))

    def matches_at(self, b: RuleSubject, shift: float) -> bool:
        """The conditions on days and years, at ``shift`` days from now. Days before a date in
        the future are negative and fail any ``min`` (as in SQL: a study dated tomorrow is not 0
        days old); the patient's age at the study date stays what it is."""
        c = self.conditions
        if "days_since_last_access" in c and not in_range(
            b.idle + shift, c["days_since_last_access"]
        ):
            return False
        if "days_since_study_date" in c and not in_range(b.age + shift, c["days_since_study_date"]):
            return False
        return "patient_age_years" not in c or in_range(b.patient_age, c["patient_age_years"])
