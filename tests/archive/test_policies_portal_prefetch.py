"""Portal page "Archive policies" with a prefetch rule in the policy: it is summarized, kept as
it is through the editor (preview and save), and a tampered copy of it is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from archive.policies.versions import policy_active, policy_save
from tenants.context import Actor

pytestmark = pytest.mark.django_db

PREFETCH = {
    "name": "Priors",
    "conditions": {"same_modality": True, "same_body_part": False, "last_studies": 3},
    "action": {"type": "prefetch", "keep_days": 14, "monthly_cap": "250.00"},
}
CT_COLD = {"action": "move:cold", "modalities": "CT", "access_min": "90"}


@pytest.fixture
def browser(owner) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def url(org: Any) -> str:
    return reverse("portal-policies", args=[org.slug])


def form(rules: list[dict[str, str]], intent: str, **extra: str) -> dict[str, str]:
    data = {"rule_count": str(len(rules)), "intent": intent, **extra}
    for i, rule in enumerate(rules):
        for key, value in rule.items():
            data[f"rule-{i}-{key}"] = value
    return data


def test_the_page_summarizes_the_prefetch_rule_and_keeps_it_out_of_the_rows(browser, org):
    move = {"conditions": {"modalities": ["CT"]}, "action": {"type": "move", "tier": "cold"}}
    policy_save(org=org, actor=Actor.system(), rules=[move, PREFETCH], activate=True)

    response = browser.get(url(org))

    assert response.status_code == 200
    html = response.content.decode()
    assert "prefetch priors (same modality, the last 3 studies)" in html
    assert "readable 14 days, at most 250.00 a month" in html
    assert 'name="rule-0-action"' in html and 'name="rule-1-action"' not in html
    assert 'name="prefetch_rule"' in html


def test_saving_from_the_editor_keeps_the_prefetch_rule(browser, org):
    policy_save(org=org, actor=Actor.system(), rules=[PREFETCH], activate=True)
    carried = json.dumps(PREFETCH)

    preview = browser.post(url(org), form([CT_COLD], "preview", prefetch_rule=carried))
    saved = browser.post(url(org), form([CT_COLD], "save", prefetch_rule=carried, activate="on"))

    assert preview.status_code == 200
    assert 'name="prefetch_rule"' in preview.content.decode()
    assert saved.status_code == 302
    rules = policy_active(org=org).rules
    assert [r["action"]["type"] for r in rules] == ["move", "prefetch"]
    assert rules[1] == PREFETCH


def test_a_tampered_prefetch_rule_is_refused(browser, org):
    bad = {**PREFETCH, "action": {**PREFETCH["action"], "keep_days": 0}}
    response = browser.post(url(org), form([CT_COLD], "save", prefetch_rule=json.dumps(bad)))
    assert response.status_code == 400
    assert "from 1 to 365" in response.content.decode()
    garbage = browser.post(url(org), form([CT_COLD], "save", prefetch_rule="{not json"))
    assert garbage.status_code == 400
    assert policy_active(org=org) is None
