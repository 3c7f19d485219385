"""REST API of archive policies: versions, activation, preview, plan-now; tenancy and roles."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from archive.models import TierMove
from archive.policies.versions import policy_active, policy_save
from tenants.context import Actor
from tenants.models import AuditEvent
from tenants.roles import Role, Scope
from tests.archive.test_policies_support import GIB, make_instance, move

pytestmark = pytest.mark.django_db

CT_TO_COLD = [move("cold", modalities=["CT"])]


@pytest.fixture
def client(org, make_token) -> APIClient:
    _, secret = make_token(org, [Scope.ADMIN])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return c


def _error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def test_create_list_get_activate_and_active(client, org):
    response = client.post(
        "/api/v1/policies/versions/",
        {"rules": CT_TO_COLD, "note": "CT to cold"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["active"] is False and body["note"] == "CT to cold"
    assert body["rules"][0]["action"] == {"type": "move", "tier": "cold"}
    assert body["author"].startswith("token:")
    response = client.post(
        "/api/v1/policies/versions/", {"rules": [], "activate": True}, format="json"
    )
    assert response.status_code == 201 and response.json()["active"] is True

    listed = client.get("/api/v1/policies/versions/").json()["results"]
    assert [(v["number"], v["active"]) for v in listed] == [(2, True), (1, False)]
    assert client.get("/api/v1/policies/active/").json()["version"]["number"] == 2

    response = client.post("/api/v1/policies/versions/1/activate/")
    assert response.status_code == 200 and response.json()["active"] is True
    assert policy_active(org=org).number == 1
    assert client.get("/api/v1/policies/versions/1/").json()["active"] is True
    assert client.get("/api/v1/policies/versions/9/").status_code == 404
    assert AuditEvent.objects.filter(organization=org, action="policy.activated").count() == 2


def test_no_active_policy_is_null(client):
    assert client.get("/api/v1/policies/active/").json() == {"version": None}


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ([move("cold", flavour=["x"])], "rules[0].conditions.flavour"),
        (
            [move("cold", days_since_last_access={"min": 9, "max": 1})],
            "rules[0].conditions.days_since_last_access",
        ),
        ([move("hot", modalities=["CT"])], "rules[0].action.tier"),
        ([{"conditions": {}, "action": {"type": "move", "tier": "cold"}}], "rules[0].conditions"),
        ("not a list", "rules"),
    ],
)
def test_invalid_rules_are_400_with_field_errors(client, org, rules, field):
    for url in ("/api/v1/policies/versions/", "/api/v1/policies/preview/"):
        response = client.post(url, {"rules": rules}, format="json")
        assert response.status_code == 400, response.content
        assert field in _error(response)["fields"]
    assert not client.get("/api/v1/policies/versions/").json()["results"]


def test_preview_rules_and_version(client, org, owner):
    make_instance(org, size=GIB)
    response = client.post("/api/v1/policies/preview/", {"rules": CT_TO_COLD}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["instances"], body["studies"], body["bytes"]) == (1, 1, GIB)
    assert body["targets"][0]["tier"] == "cold"
    assert body["targets"][0]["from_tiers"] == [{"tier": "hot", "instances": 1, "bytes": GIB}]
    assert body["bill"]["currency"] == "USD"
    assert {line["meter"] for line in body["bill"]["lines"]} == {"storage", "tier.transitions"}
    version = policy_save(org=org, actor=Actor(user=owner.user), rules=CT_TO_COLD)
    by_version = client.post(
        "/api/v1/policies/preview/", {"version": version.number}, format="json"
    ).json()
    assert by_version["instances"] == 1
    assert not TierMove.objects.exists()
    response = client.post("/api/v1/policies/preview/", {}, format="json")
    assert response.status_code == 400 and "rules" in _error(response)["fields"]


def test_plan_now(client, org, owner):
    make_instance(org)
    assert client.post("/api/v1/policies/plan/").json() == {"planned": 0}
    policy_save(org=org, actor=Actor(user=owner.user), rules=CT_TO_COLD, activate=True)
    assert client.post("/api/v1/policies/plan/").json() == {"planned": 1}
    assert client.post("/api/v1/policies/plan/").json() == {"planned": 0}
    assert TierMove.objects.for_org(org).get().to_tier == "cold"


# --- tenancy and permissions -----------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", "policies/versions/", None),
    ("post", "policies/versions/", {"rules": []}),
    ("get", "policies/versions/{n}/", None),
    ("post", "policies/versions/{n}/activate/", None),
    ("get", "policies/active/", None),
    ("post", "policies/preview/", {"rules": []}),
    ("post", "policies/plan/", None),
]


def _call(client: APIClient, method: str, url: str, data: Any) -> Any:
    return (
        getattr(client, method)(url, data, format="json")
        if data is not None
        else getattr(client, method)(url)
    )


@pytest.mark.parametrize(("method", "path", "data"), ENDPOINTS)
def test_other_tenant_gets_404(method, path, data, org, other_org, owner, make_member, make_token):
    theirs = policy_save(org=other_org, actor=Actor.system(), rules=CT_TO_COLD)
    policy_save(org=org, actor=Actor.system(), rules=[])  # mine is number 1 too
    theirs_only = policy_save(org=other_org, actor=Actor.system(), rules=[])  # number 2
    url = path.format(n=theirs_only.number)
    # A session of this organization's owner on the other organization's URL.
    session = APIClient()
    session.force_login(owner.user)
    response = _call(session, method, f"/api/v1/o/{other_org.slug}/{url}", data)
    assert response.status_code == 404, response.content
    # A token of this organization naming the other organization.
    _, secret = make_token(org, [Scope.ADMIN])
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = _call(token, method, f"/api/v1/o/{other_org.slug}/{url}", data)
    assert response.status_code == 404, response.content
    if "{n}" in path:
        # The other organization's version number through this organization's own URL.
        response = _call(token, method, f"/api/v1/{url}", data)
        assert response.status_code == 404 and _error(response)["code"] == "not_found"
    assert policy_active(org=other_org) is None
    assert theirs.rules and not TierMove.objects.exists()


def test_preview_of_another_tenants_version_number_is_404(client, org, other_org):
    policy_save(org=other_org, actor=Actor.system(), rules=[])
    response = client.post("/api/v1/policies/preview/", {"version": 1}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "path", "data"), ENDPOINTS)
@pytest.mark.parametrize("role", [Role.MEMBER, Role.BILLING, Role.AUDITOR])
def test_member_without_policies_manage_gets_403(method, path, data, role, org, make_member):
    policy_save(org=org, actor=Actor.system(), rules=[])
    session = APIClient()
    session.force_login(make_member(org, role).user)
    response = _call(session, method, f"/api/v1/o/{org.slug}/{path.format(n=1)}", data)
    assert response.status_code == 403
    assert _error(response)["fields"]["permission"] == ["policies.manage"]


@pytest.mark.parametrize(("method", "path", "data"), ENDPOINTS)
@pytest.mark.parametrize("scope", [Scope.DICOM_READ, Scope.DICOM_WRITE, Scope.USAGE_READ])
def test_token_without_admin_scope_gets_403(method, path, data, scope, org, make_token):
    policy_save(org=org, actor=Actor.system(), rules=[])
    _, secret = make_token(org, [scope])
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = _call(token, method, f"/api/v1/{path.format(n=1)}", data)
    assert response.status_code == 403


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owner_and_admin_may_manage_policies(role, org, make_member):
    session = APIClient()
    session.force_login(make_member(org, role).user)
    response = session.post(
        f"/api/v1/o/{org.slug}/policies/versions/", {"rules": CT_TO_COLD}, format="json"
    )
    assert response.status_code == 201


def test_policy_endpoints_are_in_the_openapi_schema(client):
    schema = APIClient().get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/v1/policies/versions/",
        "/api/v1/policies/versions/{number}/",
        "/api/v1/policies/versions/{number}/activate/",
        "/api/v1/policies/active/",
        "/api/v1/policies/preview/",
        "/api/v1/policies/plan/",
    ):
        assert path in paths, path
