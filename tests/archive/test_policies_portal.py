"""Portal page "Archive policies": editor, preview with the simulator, versions, activation."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from archive.models import TierMove
from archive.policies.versions import policy_active, policy_save
from archive.tiering.views import row_to_rule, rule_summary, rule_to_row
from tenants.context import Actor
from tenants.roles import Role
from tests.archive.test_policies_support import GIB, delete, make_instance, move

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(owner) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def url(org: Any, name: str = "portal-policies", *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def form(rules: list[dict[str, str]], intent: str, **extra: str) -> dict[str, str]:
    data = {"rule_count": str(len(rules)), "intent": intent, **extra}
    for i, rule in enumerate(rules):
        for key, value in rule.items():
            data[f"rule-{i}-{key}"] = value
    return data


CT_COLD = {"action": "move:cold", "modalities": "CT", "access_min": "90", "name": "CT to cold"}


def test_page_shows_no_policy_and_one_empty_rule(browser, org):
    response = browser.get(url(org))
    assert response.status_code == 200
    html = response.content.decode()
    assert "No policy is active" in html
    assert 'name="rule-0-action"' in html and 'name="rule-1-action"' not in html
    assert 'aria-current="page"' in html and "Archive policies" in html


def test_preview_renders_numbers_and_the_simulation_without_saving(browser, org):
    make_instance(org, size=GIB, accessed_days_ago=200)
    response = browser.post(url(org), form([CT_COLD], "preview"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="policy-preview"' in html
    assert '<span class="stat-value" id="preview-instances">1</span>' in html
    assert 'id="preview-bill"' in html
    assert 'id="simulation"' in html  # archive/_simulation.html
    # The edited rule stays in the editor, normalized.
    assert 'value="CT to cold"' in html and 'value="90"' in html
    assert not TierMove.objects.exists() and policy_active(org=org) is None


@pytest.mark.parametrize(
    ("rule", "error_id", "text"),
    [
        (
            {"action": "move:cold", "access_min": "90", "access_max": "30"},
            "rule-0-days_since_last_access-errors",
            "greater than max",
        ),
        (
            {"action": "move:cold", "access_min": "soon"},
            "rule-0-days_since_last_access-errors",
            "whole number",
        ),
        ({"action": "move:cold"}, "rule-0-conditions-errors", "at least one condition"),
        (
            {"action": "delete", "modalities": "CR", "after_days": ""},
            "rule-0-after_days-errors",
            "retention in days",
        ),
        (
            {"action": "delete", "sop_classes": "1.2.3", "after_days": "4000"},
            "rule-0-sop_classes-errors",
            "move rules only",
        ),
        (
            {"action": "move:hot", "modalities": "CT"},
            "rule-0-action-errors",
            "never moves data to hot",
        ),
        (
            {"action": "move:cold", "modalities": "C T!"},
            "rule-0-modalities-errors",
            "not one of the valid",
        ),
    ],
)
def test_errors_are_shown_at_the_field(browser, org, rule, error_id, text):
    for intent in ("preview", "save"):
        response = browser.post(url(org), form([rule], intent))
        assert response.status_code == 400
        html = response.content.decode()
        assert f'id="{error_id}"' in html, html
        assert text in html
        assert 'id="policy-preview"' not in html
    assert policy_active(org=org) is None


def test_save_as_new_version_and_activate(browser, org, owner):
    response = browser.post(
        url(org), form([CT_COLD], "save", note="first", activate="on"), follow=True
    )
    assert response.redirect_chain[-1][0] == url(org)
    html = response.content.decode()
    assert "Saved as version 1, now active." in html
    version = policy_active(org=org)
    assert version.number == 1 and version.note == "first" and version.author == owner.user
    assert version.rules[0]["conditions"] == {
        "days_since_last_access": {"min": 90},
        "modalities": ["CT"],
    }
    assert 'id="active-number">1<' in html
    assert "CT to cold: CT, not read for 90+ days → move to cold" in html
    # Saving without activating keeps version 1 active.
    browser.post(
        url(org),
        form([CT_COLD, {"action": "delete", "modalities": "CR", "after_days": "3650"}], "save"),
    )
    assert policy_active(org=org).number == 1


def test_versions_list_and_activate(browser, org):
    policy_save(org=org, actor=Actor.system(), rules=[move("warm", modalities=["MR"])], note="a")
    policy_save(org=org, actor=Actor.system(), rules=[], activate=True)
    html = browser.get(url(org)).content.decode()
    assert 'id="version-1"' in html and 'id="version-2" class="is-active"' in html
    response = browser.post(url(org, "portal-policy-activate", 1), follow=True)
    assert "Version 1 is active" in response.content.decode()
    assert policy_active(org=org).number == 1
    assert browser.post(url(org, "portal-policy-activate", 99)).status_code == 404


def test_edit_a_copy_loads_a_version_into_the_editor(browser, org):
    policy_save(
        org=org, actor=Actor.system(), rules=[move("archive", description_pattern="*KNEE*")]
    )
    html = browser.get(url(org) + "?from=1").content.decode()
    assert 'value="*KNEE*"' in html
    assert browser.get(url(org) + "?from=7").status_code == 404


def test_add_remove_and_reorder_rules(browser, org):
    rules = [CT_COLD, {"action": "move:warm", "modalities": "MR"}]
    html = browser.post(url(org), form(rules, "add")).content.decode()
    assert 'name="rule-2-action"' in html
    html = browser.post(url(org), form(rules, "remove-0")).content.decode()
    assert 'name="rule-1-action"' not in html and 'value="MR"' in html
    html = browser.post(url(org), form(rules, "down-0")).content.decode()
    assert html.index('value="MR"') < html.index('value="CT to cold"')


def test_plan_now(browser, org):
    make_instance(org)
    policy_save(
        org=org, actor=Actor.system(), rules=[move("cold", modalities=["CT"])], activate=True
    )
    response = browser.post(url(org, "portal-policy-plan"), follow=True)
    assert "1 tier moves planned" in response.content.decode()
    assert TierMove.objects.count() == 1


def test_other_tenant_gets_404(org, other_org, make_member):
    policy_save(org=other_org, actor=Actor.system(), rules=[])
    c = Client()
    c.force_login(make_member(org, Role.OWNER).user)
    assert c.get(url(other_org)).status_code == 404
    assert c.post(url(other_org), form([CT_COLD], "save")).status_code == 404
    assert c.post(url(other_org, "portal-policy-activate", 1)).status_code == 404
    assert c.post(url(other_org, "portal-policy-plan")).status_code == 404
    # Their version number through my organization's URL is simply not there.
    assert c.post(url(org, "portal-policy-activate", 1)).status_code == 404
    assert policy_active(org=other_org) is None


@pytest.mark.parametrize("role", [Role.MEMBER, Role.BILLING, Role.AUDITOR])
def test_roles_without_policies_manage_get_403(org, make_member, role):
    c = Client()
    c.force_login(make_member(org, role).user)
    assert c.get(url(org)).status_code == 403
    assert c.post(url(org), form([CT_COLD], "save")).status_code == 403
    assert policy_active(org=org) is None


@pytest.mark.parametrize(
    "rule",
    [
        move("cold", modalities=["CT", "MR"], days_since_last_access={"min": 90, "max": 400}),
        delete(3650, description_pattern="*CHEST*", patient_age_years={"max": 17}),
        move("archive", sop_classes=["1.2.3", "1.2.4"], days_since_study_date={"min": 365}),
    ],
)
def test_rule_form_round_trip(org, rule):
    from archive.policies.validate import rules_validate

    normalized = rules_validate(org=org, rules=[rule])
    assert rules_validate(org=org, rules=[row_to_rule(rule_to_row(normalized[0]))]) == normalized
    assert "→" in rule_summary(normalized[0])


@pytest.mark.parametrize(
    "note",
    [
        "First policy: CT/MR to cold after 90 days unread, everything to archive after a year.",
        "Approved by the imaging board!",
        "no punctuation",
    ],
)
def test_active_note_is_shown_as_written_with_nothing_added(browser, org, note):
    policy_save(
        org=org,
        actor=Actor.system(),
        rules=[move("warm", modalities=["MR"])],
        note=note,
        activate=True,
    )

    html = browser.get(url(org)).content.decode()

    shown = html.split('id="active-note">')[1].split("</p>")[0]
    assert shown == f'<span class="muted">Note:</span> {note}'
    assert ".”." not in html and "”." not in html
