"""The policy rule language: every bad rule is refused with a field error, good rules normalized."""

from __future__ import annotations

from typing import Any

import pytest

from archive.models import ArchiveSettings, StorageLocation
from archive.policies.validate import rules_validate
from tenants.errors import ValidationFailed

pytestmark = pytest.mark.django_db


def _errors(org: Any, rules: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationFailed) as exc:
        rules_validate(org=org, rules=rules)
    return exc.value.fields


def _move(conditions: dict[str, Any], tier: str = "cold") -> dict[str, Any]:
    return {"conditions": conditions, "action": {"type": "move", "tier": tier}}


def test_valid_rules_are_normalized(org):
    rules = rules_validate(
        org=org,
        rules=[
            {
                "name": "  CT to cold ",
                "action": {"type": "move", "tier": "cold"},
                "conditions": {
                    "modalities": ["ct", "MR", "CT"],
                    "days_since_last_access": {"min": 90, "max": 400},
                },
            },
            {
                "conditions": {"description_pattern": "*CHEST*", "patient_age_years": {"max": 17}},
                "action": {"type": "delete", "after_days": 3650},
            },
        ],
    )
    assert rules == [
        {
            "name": "CT to cold",
            "conditions": {
                "days_since_last_access": {"min": 90, "max": 400},
                "modalities": ["CT", "MR"],
            },
            "action": {"type": "move", "tier": "cold"},
        },
        {
            "conditions": {"description_pattern": "*CHEST*", "patient_age_years": {"max": 17}},
            "action": {"type": "delete", "after_days": 3650},
        },
    ]


def test_empty_policy_is_valid(org):
    assert rules_validate(org=org, rules=[]) == []


def test_unknown_condition(org):
    fields = _errors(org, [_move({"days_since_birth": {"min": 3}})])
    assert (
        "Unknown condition 'days_since_birth'" in fields["rules[0].conditions.days_since_birth"][0]
    )


def test_unknown_action(org):
    fields = _errors(org, [{"conditions": {"modalities": ["CT"]}, "action": {"type": "copy"}}])
    assert "Unknown action 'copy'" in fields["rules[0].action"][0]


def test_contradictory_min_greater_than_max(org):
    fields = _errors(org, [_move({"days_since_last_access": {"min": 400, "max": 90}})])
    assert "greater than max" in fields["rules[0].conditions.days_since_last_access"][0]


@pytest.mark.parametrize(
    "value", [{"min": -1}, {"max": "90"}, {"min": 1.5}, {}, {"minimum": 3}, 90, {"min": True}]
)
def test_bad_ranges(org, value):
    fields = _errors(org, [_move({"days_since_study_date": value})])
    assert fields["rules[0].conditions.days_since_study_date"]


@pytest.mark.parametrize("tier", ["hot", "glacier", None])
def test_hot_or_unknown_tier(org, tier):
    fields = _errors(org, [_move({"modalities": ["CT"]}, tier=tier)])
    assert fields["rules[0].action.tier"]


def test_hot_tier_message_says_never_warms(org):
    fields = _errors(org, [_move({"modalities": ["CT"]}, tier="hot")])
    assert "never moves data to hot" in fields["rules[0].action.tier"][0]


def test_tier_the_primary_location_cannot_serve(org):
    StorageLocation.objects.create(
        organization=org,
        name="Local MinIO",
        kind=StorageLocation.Kind.S3,
        bucket="pacs",
        storage_classes={"archive": ""},
    )
    fields = _errors(org, [_move({"modalities": ["CT"]}, tier="archive")])
    assert "cannot serve the archive tier" in fields["rules[0].action.tier"][0]
    # The tiers it has a storage class for are fine.
    assert rules_validate(org=org, rules=[_move({"modalities": ["CT"]}, tier="cold")])


def test_sop_classes_in_delete_rule(org):
    fields = _errors(
        org,
        [
            {
                "conditions": {"sop_classes": ["1.2.840.10008.5.1.4.1.1.2"]},
                "action": {"type": "delete", "after_days": 3650},
            }
        ],
    )
    assert "move rules only" in fields["rules[0].conditions.sop_classes"][0]


def test_retention_shorter_than_legal_minimum(org):
    ArchiveSettings.objects.create(organization=org, retention_minimum_days=3650)
    rule = {"conditions": {"modalities": ["CR"]}, "action": {"type": "delete", "after_days": 365}}
    fields = _errors(org, [rule])
    assert "legal minimum of 3650 days" in fields["rules[0].action.after_days"][0]
    rule["action"]["after_days"] = 3650
    assert rules_validate(org=org, rules=[rule])[0]["action"]["after_days"] == 3650


@pytest.mark.parametrize("conditions", [{}, None, []])
def test_empty_conditions(org, conditions):
    fields = _errors(org, [{"conditions": conditions, "action": {"type": "move", "tier": "warm"}}])
    assert "at least one condition" in fields["rules[0].conditions"][0]


@pytest.mark.parametrize(
    ("conditions", "key"),
    [
        ({"modalities": []}, "modalities"),
        ({"modalities": ["C T"]}, "modalities"),
        ({"sop_classes": ["1.2.abc"]}, "sop_classes"),
        ({"description_pattern": "**"}, "description_pattern"),
        ({"description_pattern": 7}, "description_pattern"),
    ],
)
def test_bad_list_and_pattern_conditions(org, conditions, key):
    assert _errors(org, [_move(conditions)])[f"rules[0].conditions.{key}"]


@pytest.mark.parametrize("after_days", [0, -5, "3650", None])
def test_bad_retention_days(org, after_days):
    rule = {
        "conditions": {"modalities": ["CR"]},
        "action": {"type": "delete", "after_days": after_days},
    }
    assert _errors(org, [rule])["rules[0].action.after_days"]


def test_not_a_list_and_too_many_rules(org):
    assert _errors(org, {"conditions": {}})["rules"]
    assert _errors(org, [_move({"modalities": ["CT"]})] * 21)["rules"]


def test_all_errors_are_reported_at_once_with_rule_positions(org):
    fields = _errors(
        org,
        [
            _move({"modalities": ["CT"]}),
            _move({"days_since_last_access": {"min": 5, "max": 1}}),
            _move({"flavour": "x"}, tier="hot"),
        ],
    )
    assert set(fields) == {
        "rules[1].conditions.days_since_last_access",
        "rules[2].conditions.flavour",
        "rules[2].action.tier",
    }
