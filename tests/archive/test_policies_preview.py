"""Versions (save, activate, audit) and the preview's numbers on a hand-computed case."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from archive.models import ArchiveSettings, StorageLocation
from archive.policies.preview import policy_preview
from archive.policies.versions import policy_activate, policy_active, policy_save
from billing.models import PlanPrice, PricePlan, Subscription
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import AuditEvent
from tests.archive.test_policies_support import (
    GIB,
    NOW,
    delete,
    make_instance,
    make_study,
    move,
)

pytestmark = pytest.mark.django_db


# --- versions --------------------------------------------------------------------------------


def test_each_save_is_a_new_numbered_version_with_author_and_audit(org, owner):
    actor = Actor(user=owner.user)
    v1 = policy_save(org=org, actor=actor, rules=[move("cold", modalities=["ct"])], note="first")
    v2 = policy_save(org=org, actor=actor, rules=[], note=" second ", activate=True)
    assert (v1.number, v2.number) == (1, 2)
    assert v1.rules == [
        {"conditions": {"modalities": ["CT"]}, "action": {"type": "move", "tier": "cold"}}
    ]
    assert v2.note == "second" and v2.author == owner.user and v2.author_label == owner.user.email
    assert policy_active(org=org) == v2
    actions = list(
        AuditEvent.objects.filter(organization=org).order_by("id").values_list("action", flat=True)
    )
    assert actions == ["policy.version_created", "policy.version_created", "policy.activated"]
    policy_activate(org=org, actor=actor, version=v1)
    assert policy_active(org=org) == v1
    assert AuditEvent.objects.filter(organization=org, action="policy.activated").count() == 2


def test_invalid_rules_write_no_version(org, owner):
    with pytest.raises(ValidationFailed):
        policy_save(org=org, actor=Actor(user=owner.user), rules=[move("hot", modalities=["CT"])])
    assert not AuditEvent.objects.filter(organization=org).exists()
    assert policy_active(org=org) is None


def test_activation_rechecks_the_rules_against_todays_settings(org, owner):
    actor = Actor(user=owner.user)
    version = policy_save(org=org, actor=actor, rules=[delete(365, modalities=["CR"])])
    ArchiveSettings.objects.filter(organization=org).update(retention_minimum_days=3650)
    with pytest.raises(ValidationFailed) as exc:
        policy_activate(org=org, actor=actor, version=version)
    assert "rules[0].action.after_days" in exc.value.fields
    assert policy_active(org=org) is None


def test_other_organizations_version_cannot_be_activated(org, other_org, owner):
    theirs = policy_save(org=other_org, actor=Actor.system(), rules=[])
    with pytest.raises(NotFound):
        policy_activate(org=org, actor=Actor(user=owner.user), version=theirs)
    with pytest.raises(NotFound):
        policy_preview(org=org, version=theirs)


# --- preview ---------------------------------------------------------------------------------


@pytest.fixture
def simple_plan(org):
    """Flat prices that make the arithmetic easy to follow."""
    plan = PricePlan.objects.create(code="simple", name="Simple", currency="EUR")
    for meter, tier, unit_price in [
        ("storage", "hot", "0.02"),
        ("storage", "warm", "0.01"),
        ("storage", "cold", "0.004"),
        ("tier.transitions", "cold", "0.02"),
        ("early_deletion", "warm", "0.0004"),
    ]:
        PlanPrice.objects.create(plan=plan, meter=meter, tier=tier, unit_price=Decimal(unit_price))
    Subscription.objects.create(organization=org, plan=plan, starts_at=NOW - timedelta(days=60))
    return plan


def test_preview_hand_computed(org, simple_plan):
    # June 16 00:00: 360 of June's 720 hours are left, so a GiB moved now is half a GiB-month.
    ct_study = make_study(org, modalities="CT")
    a = make_instance(org, ct_study, size=1 * GIB, accessed_days_ago=100)
    make_instance(org, ct_study, size=2 * GIB, accessed_days_ago=100)
    # Warm for 10 of its 30 minimum days: 20 days x 1 GiB of early deletion.
    mr = make_instance(
        org,
        modality="MR",
        tier="warm",
        size=1 * GIB,
        received_days_ago=200,
        tier_changed_days_ago=10,
    )
    make_instance(org, size=5 * GIB, accessed_days_ago=10)  # read recently: stays
    two_years = NOW.date() - timedelta(days=730)
    due = make_study(org, modalities="CR", study_date=two_years, total_bytes=7)
    make_study(org, modalities="CR", study_date=two_years, legal_hold=True, total_bytes=11)

    preview = policy_preview(
        org=org,
        rules=[
            move("cold", modalities=["CT"], days_since_last_access={"min": 90}),
            delete(365, modalities=["CR"]),
            move("cold", days_since_last_access={"min": 180}),
        ],
        now=NOW,
    )
    assert (preview.instances, preview.studies, preview.bytes) == (3, 2, 4 * GIB)
    [cold] = preview.targets
    assert (cold.tier, cold.instances, cold.studies, cold.bytes) == ("cold", 3, 2, 4 * GIB)
    assert cold.from_tiers == {
        "hot": {"instances": 2, "bytes": 3 * GIB},
        "warm": {"instances": 1, "bytes": 1 * GIB},
    }
    assert preview.rule_counts == {
        0: {"instances": 2, "bytes": 3 * GIB},
        2: {"instances": 1, "bytes": 1 * GIB},
    }
    assert preview.early_deletion_byte_days == {"warm": 20 * GIB}
    assert (preview.trash_studies, preview.trash_bytes) == (1, 7)
    assert (preview.held_studies, preview.held_bytes) == (1, 11)

    bill = preview.bill
    assert (bill.currency, bill.plan_name, bill.remaining_hours) == ("EUR", "Simple", 360)
    amounts = {(ln.meter, ln.tier): ln.amount for ln in bill.lines}
    assert amounts == {
        ("storage", "hot"): Decimal("-0.03"),  # -3 GiB x 0.5 month x 0.02
        ("storage", "warm"): Decimal("-0.005"),  # -1 GiB x 0.5 x 0.01
        ("storage", "cold"): Decimal("0.008"),  # +4 GiB x 0.5 x 0.004
        ("tier.transitions", "cold"): Decimal("0.00006"),  # 3 / 1000 x 0.02
        ("early_deletion", "warm"): Decimal("0.008"),  # 20 GiB-days x 0.0004
    }
    assert bill.total == Decimal("-0.02")  # -0.01894, rounded once
    assert {(ln.meter, ln.tier): ln.quantity for ln in bill.lines}[("storage", "cold")] == 2
    assert a.pk and due.pk and mr.pk


def test_preview_of_a_saved_version_and_unpriced_meters(org, owner):
    make_instance(org, size=GIB)
    version = policy_save(
        org=org, actor=Actor(user=owner.user), rules=[move("archive", modalities=["CT"])]
    )
    preview = policy_preview(org=org, version=version, now=NOW)
    assert [t.tier for t in preview.targets] == ["archive"]
    # The default plan prices archive storage and transitions; the preview uses it.
    amounts = {(ln.meter, ln.tier): ln.amount for ln in preview.bill.lines}
    assert amounts[("tier.transitions", "archive")] == Decimal("0.00005")
    assert amounts[("storage", "archive")] > 0 > amounts[("storage", "hot")]


def test_preview_refuses_invalid_rules_like_saving(org):
    StorageLocation.objects.create(
        organization=org, name="B", kind="s3", bucket="b", storage_classes={"archive": ""}
    )
    with pytest.raises(ValidationFailed) as exc:
        policy_preview(org=org, rules=[move("archive", modalities=["CT"])], now=NOW)
    assert "rules[0].action.tier" in exc.value.fields


def test_preview_of_nothing(org):
    preview = policy_preview(org=org, rules=[], now=NOW)
    assert (preview.instances, preview.studies, preview.trash_studies) == (0, 0, 0)
    assert preview.bill.lines == [] and preview.bill.total == 0
