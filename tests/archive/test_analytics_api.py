"""REST API and portal page of access analytics: answers, permissions, other tenants, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from archive.policies.versions import policy_active, policy_save
from billing.models import PlanPrice, PricePlan, Subscription
from tenants.context import Actor
from tenants.models import ApiToken, Membership, Organization
from tenants.roles import Role
from tests.archive.analytics_helpers import add_study, read

pytestmark = pytest.mark.django_db

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", "analytics/access-curve/", None),
    ("post", "analytics/simulation/", {}),
    ("get", "analytics/recommendation/", None),
]


@pytest.fixture
def history(org: Organization) -> Organization:
    now = timezone.now()
    for n in range(12):
        at = now - timedelta(days=200 + n)
        study = add_study(org, study_date=at.date(), received=at, series=[("CT", 2, 50_000_000)])
        read(org, study, at + timedelta(days=1))
        if n < 3:
            read(org, study, at + timedelta(days=100))
    return org


def _call(client: APIClient, method: str, url: str, body: Any) -> Any:
    if method == "post":
        return client.post(url, body, format="json")
    return client.get(url)


def test_access_curve(history: Organization, token_client: Callable[..., APIClient]) -> None:
    response = token_client(history, ["dicom:read"]).get("/api/v1/analytics/access-curve/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["horizons"] == [7, 30, 90, 180, 365]
    assert body["read_kinds"] == ["retrieve", "download"]
    at_90 = next(p for p in body["overall"] if p["days"] == 90)
    assert (at_90["studies_read"], at_90["studies_observed"]) == (3, 12)
    assert at_90["study_fraction"] == pytest.approx(0.25)
    assert body["by_modality"][0]["modality"] == "CT"


def test_simulation_with_candidate_rules(
    history: Organization, token_client: Callable[..., APIClient]
) -> None:
    rules = [
        {
            "conditions": {"days_since_last_access": {"min": 30}},
            "action": {"type": "move", "tier": "cold"},
        }
    ]
    response = token_client(history, ["admin"]).post(
        "/api/v1/analytics/simulation/", {"candidate_rules": rules, "months": 6}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert [s["key"] for s in body["scenarios"]] == [
        "all_hot",
        "active",
        "candidate",
        "recommended",
    ]
    assert len(body["months"]) == 6
    candidate = body["scenarios"][2]
    assert candidate["rules"][0]["action"] == {"type": "move", "tier": "cold"}
    assert candidate["months"][0]["bytes_by_tier"]["cold"] == 24 * 50_000_000
    assert body["inventory"]["instances"] == 24
    assert body["verdict"].startswith("The policy being edited would cost $")


GIB = 2**30
PREFETCH = {
    "name": "Priors",
    "conditions": {"same_modality": True, "last_studies": 3},
    "action": {"type": "prefetch", "keep_days": 14, "monthly_cap": "1000.00"},
}


@pytest.fixture
def priors(org: Organization) -> Organization:
    """PAT-1's CT prior (1 GiB) in the archive tier; in the last 90 days a new CT study of PAT-1
    (2 GiB) and one of PAT-2 (1 GiB); restores at 30 USD a GiB; the policy's prefetch rule.
    Replayed: GIB // 2 archive bytes per new study, 2/3 of a study a month; today 1 GiB of 4 is
    archived, 1 GiB more arrives hot each month (half of it in its first): in the first month
    (GIB // 2) x 2 x 30 // 90 x 4 / 4.5 bytes are prefetched, 8.89 USD."""
    now = timezone.now()
    plan = PricePlan.objects.create(code="api-prefetch", name="Prefetch", currency="USD")
    PlanPrice.objects.create(plan=plan, meter="restore.bytes", unit_price=Decimal("30"))
    Subscription.objects.create(organization=org, plan=plan, starts_at=now - timedelta(days=500))
    old = now - timedelta(days=400)
    add_study(
        org,
        patient_id="PAT-1",
        study_date=old.date(),
        received=old,
        series=[("CT", 1, GIB)],
        tier="archive",
        tier_changed_at=now - timedelta(days=300),
    )
    for patient, days, count in [("PAT-1", 10, 2), ("PAT-2", 20, 1)]:
        at = now - timedelta(days=days)
        add_study(
            org, patient_id=patient, study_date=at.date(), received=at, series=[("CT", count, GIB)]
        )
    policy_save(org=org, actor=Actor.system("tests"), rules=[PREFETCH], activate=True)
    return org


def _active_prefetch(org: Organization) -> dict[str, Any]:
    active = policy_active(org=org)
    assert active is not None
    rule: dict[str, Any] = active.rules[-1]
    return rule


def test_simulation_shows_the_prefetches(
    priors: Organization, token_client: Callable[..., APIClient]
) -> None:
    response = token_client(priors, ["admin"]).post(
        "/api/v1/analytics/simulation/", {"candidate_rules": []}, format="json"
    )
    assert response.status_code == 200, response.content
    hot, active, candidate, recommended = response.json()["scenarios"]
    per_month = (GIB // 2) * 2 * 30 // 90
    first = active["months"][0]
    assert first["prefetch_bytes"] == round(per_month * (1 / 4.5) / 0.25)
    assert first["components"]["prefetches"] == "8.89"
    assert Decimal(active["totals"]["prefetches"]) == sum(
        Decimal(m["components"]["prefetches"]) for m in active["months"]
    )
    assert Decimal(active["total"]) == sum(Decimal(v) for v in active["totals"].values())
    assert active["prefetch"]["bytes_per_month"] == per_month
    assert active["prefetch"]["archive_bytes_per_study"] == GIB // 2
    assert active["prefetch"]["monthly_cap"] == "1000.00"
    assert active["prefetch"]["note"].startswith("Prefetches: 0.7 new studies a month")
    # Everything hot and a candidate without a prefetch rule: none.
    for scenario in (hot, candidate):
        assert scenario["prefetch"] is None
        assert scenario["totals"]["prefetches"] == "0.00"
        assert all(m["prefetch_bytes"] == 0 for m in scenario["months"])
    assert recommended["rules"][-1]["action"]["type"] == "prefetch"
    assert recommended["totals"]["prefetches"] == active["totals"]["prefetches"]


def test_the_recommendation_keeps_the_prefetch_rule(
    priors: Organization, token_client: Callable[..., APIClient]
) -> None:
    body = token_client(priors, ["admin"]).get("/api/v1/analytics/recommendation/").json()
    assert body["rules"][-1] == _active_prefetch(priors)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "candidate_rules": [
                    {"conditions": {"colour": "red"}, "action": {"type": "move", "tier": "cold"}}
                ]
            },
            "rules[0].conditions",
        ),
        (
            {
                "candidate_rules": [
                    {
                        "conditions": {"days_since_last_access": {"min": 9, "max": 3}},
                        "action": {"type": "move", "tier": "cold"},
                    }
                ]
            },
            "rules[0].conditions.days_since_last_access",
        ),
        (
            {
                "candidate_rules": [
                    {
                        "conditions": {"modalities": ["CT"]},
                        "action": {"type": "move", "tier": "hot"},
                    }
                ]
            },
            "rules[0].action.tier",
        ),
        ({"candidate_rules": "all of it"}, "rules"),
        ({"months": 0}, "months"),
    ],
)
def test_simulation_bad_input_is_400_with_the_field(
    org: Organization, token_client: Callable[..., APIClient], body: dict[str, Any], field: str
) -> None:
    response = token_client(org, ["admin"]).post(
        "/api/v1/analytics/simulation/", body, format="json"
    )
    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert any(k.startswith(field) for k in fields), fields


def test_recommendation(history: Organization, token_client: Callable[..., APIClient]) -> None:
    response = token_client(history, ["dicom:read"]).get("/api/v1/analytics/recommendation/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["currency"] == "USD"
    assert isinstance(body["rules"], list)
    assert body["rules"]
    for rec, rule in zip(body["recommendations"], body["rules"], strict=True):
        assert rec["text"].startswith(f"{rec['modality']} older than {rec['days']} days")
        assert rule["action"]["tier"] == rec["tier"]
    # No policy is active in this organization: the rules are weighed against everything hot.
    assert body["verdict"].startswith("The recommended policy would cost $")
    assert body["verdict"].endswith("less than keeping everything hot.")


def test_small_images_are_kept_hot_with_the_reason(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    """A transition is charged per object: for 20 KB images a year of storage savings does not
    pay it back, so nothing moves and the recommendation says why."""
    now = timezone.now()
    for n in range(12):
        at = now - timedelta(days=200 + n)
        add_study(org, study_date=at.date(), received=at, series=[("CR", 3, 20_000)])
    response = token_client(org, ["dicom:read"]).get("/api/v1/analytics/recommendation/")
    body = response.json()
    assert body["rules"] == []
    (rec,) = body["recommendations"]
    assert rec["modality"] == "CR" and rec["tier"] == "hot"
    assert "images average 19.5 KiB" in rec["text"]
    assert rec["text"].endswith("Keeping them hot is cheaper.")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_other_tenant_gets_404(
    method: str,
    path: str,
    body: Any,
    history: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    # A session of another organization's owner, and a token of the other organization naming
    # this one's slug: both 404, never data.
    session = APIClient()
    session.force_login(make_member(other_org, Role.OWNER).user)
    response = _call(session, method, f"/api/v1/o/{history.slug}/{path}", body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    _, secret = make_token(other_org)
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = _call(token, method, f"/api/v1/o/{history.slug}/{path}", body)
    assert response.status_code == 404
    # The other organization's own answer says nothing of this one's studies.
    own = _call(token, method, f"/api/v1/{path}", body)
    assert own.status_code == 200
    assert "12" not in str(own.json().get("overall", [{}])[0].get("studies_observed", ""))


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.MEMBER, 200), (Role.ADMIN, 200), (Role.BILLING, 403), (Role.AUDITOR, 403)],
)
def test_permissions_by_role(
    method: str,
    path: str,
    body: Any,
    role: str,
    status: int,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    client = APIClient()
    client.force_login(make_member(org, role).user)
    assert _call(client, method, f"/api/v1/o/{org.slug}/{path}", body).status_code == status


def test_usage_token_lacks_the_scope(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    response = token_client(org, ["usage:read"]).get("/api/v1/analytics/access-curve/")
    assert response.status_code == 403
    assert response.json()["error"]["fields"]["permission"] == ["images.read"]


def test_schema_documents_the_endpoints() -> None:
    paths = APIClient().get("/api/schema/?format=json").json()["paths"]
    for method, path, _ in ENDPOINTS:
        assert method in paths["/api/v1/" + path]
        assert "/api/v1/o/{org_slug}/" + path not in paths  # documented once (saas.schema)


# --- portal page ----------------------------------------------------------------------------------


def test_analytics_page_shows_curve_and_simulation(
    history: Organization, make_member: Callable[..., Membership]
) -> None:
    client = Client()
    client.force_login(make_member(history, Role.MEMBER).user)
    response = client.get(f"/o/{history.slug}/archive/analytics/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="access-curve"' in page and "<svg" in page
    assert 'id="simulation-totals"' in page
    assert "Everything hot" in page and "Recommended policy" in page
    assert "25%" in page  # 3 of 12 CT studies read again after 90 days


@pytest.mark.parametrize(("role", "status"), [(Role.BILLING, 403), (Role.OWNER, 200)])
def test_analytics_page_permissions(
    org: Organization, make_member: Callable[..., Membership], role: str, status: int
) -> None:
    client = Client()
    client.force_login(make_member(org, role).user)
    assert client.get(f"/o/{org.slug}/archive/analytics/").status_code == status


def test_analytics_page_of_another_organization_is_404(
    org: Organization, other_org: Organization, make_member: Callable[..., Membership]
) -> None:
    client = Client()
    client.force_login(make_member(other_org, Role.OWNER).user)
    assert client.get(f"/o/{org.slug}/archive/analytics/").status_code == 404


def test_analytics_page_shows_the_prefetches(
    priors: Organization, make_member: Callable[..., Membership]
) -> None:
    client = Client()
    client.force_login(make_member(priors, Role.MEMBER).user)
    page = client.get(f"/o/{priors.slug}/archive/analytics/").content.decode()
    assert '<tr data-component="prefetches">' in page
    assert '<th scope="row">Prefetches</th>' in page
    assert "Active policy, Recommended policy: Prefetches: 0.7 new studies a month" in page


def test_policy_page_simulation_shows_the_prefetches(
    priors: Organization, make_member: Callable[..., Membership]
) -> None:
    """The editor carries the active policy's prefetch rule into the candidate it previews."""
    client = Client()
    client.force_login(make_member(priors, Role.OWNER).user)
    form = {
        "rule_count": "1",
        "intent": "preview",
        "rule-0-action": "move:cold",
        "rule-0-modalities": "CT",
        "rule-0-access_min": "90",
        "prefetch_rule": json.dumps(_active_prefetch(priors)),
    }
    response = client.post(reverse("portal-policies", args=[priors.slug]), form)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="simulation"' in page
    row = page.split('<tr data-component="prefetches">', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r'<td class="num" title="[^"]*">([^<]*)</td>', row)
    # Everything hot, active, candidate (cold moves nothing out of the archive), recommended.
    assert cells[0] == "0.00" and all(c != "0.00" for c in cells[1:])
    assert "Active policy, Candidate policy, Recommended policy: Prefetches:" in page
