"""REST API of single sign-on settings: owners in a signed-in session only; tokens refused;
other tenants 404."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.context import Actor
from tenants.models import EmailDomain, IdentityProvider, Organization
from tenants.roles import Role
from tenants.sso import services

BODY = {
    "name": "Okta",
    "issuer": "https://stmary.okta.com",
    "client_id": "0oa-app",
    "client_secret": "okta-secret-value",
    "role_mapping": {"Strata Radiology": "member", "Strata Owners": "owner"},
}


def session(membership: Any) -> APIClient:
    client = APIClient()
    client.force_login(membership.user)
    return client


def base(org: Organization) -> str:
    return f"/api/v1/o/{org.slug}/security/sso"


def test_owner_puts_and_gets_the_provider_without_the_secret(org: Organization, owner: Any) -> None:
    client = session(owner)
    empty = client.get(f"{base(org)}/provider/")
    assert empty.status_code == 200 and empty.json()["configured"] is False
    response = client.put(f"{base(org)}/provider/", BODY, format="json")
    assert response.status_code == 200, response.json()
    data = client.get(f"{base(org)}/provider/").json()
    assert data["has_client_secret"] is True
    assert "okta-secret-value" not in str(data)
    assert data["redirect_uri"] == "http://testserver/accounts/sso/callback/"
    assert data["role_mapping"] == {"Strata Owners": "owner", "Strata Radiology": "member"}


def test_bad_provider_input_answers_400_with_fields(org: Organization, owner: Any) -> None:
    response = session(owner).put(
        f"{base(org)}/provider/", {**BODY, "role_mapping": {"x": "god"}}, format="json"
    )
    assert response.status_code == 400
    assert "role_mapping.x" in response.json()["error"]["fields"]
    response = session(owner).put(
        f"{base(org)}/provider/", {**BODY, "issuer": "nope"}, format="json"
    )
    assert response.status_code == 400
    assert "issuer" in response.json()["error"]["fields"]
    assert not IdentityProvider.objects.exists()


def test_domains_list_create_verify_delete(
    org: Organization, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = session(owner)
    created = client.post(f"{base(org)}/domains/", {"domain": "stmary.example"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["txt_record_name"] == "_strata-verification.stmary.example"
    assert body["verified"] is False
    monkeypatch.setattr(services, "_txt_records", lambda name: [body["txt_record_value"]])
    verified = client.post(f"{base(org)}/domains/{body['id']}/verify/")
    assert verified.status_code == 200 and verified.json()["verified"] is True
    assert [d["domain"] for d in client.get(f"{base(org)}/domains/").json()["results"]] == [
        "stmary.example"
    ]
    assert client.delete(f"{base(org)}/domains/{body['id']}/").status_code == 204
    assert not EmailDomain.objects.exists()


def test_domain_verified_by_another_org_answers_409(
    org: Organization, other_org: Organization, owner: Any
) -> None:
    record = services.domain_add(org=other_org, actor=Actor.system(), domain="shared.example")
    services.domain_verify_staff(domain=record, actor=Actor.system())
    response = session(owner).post(
        f"{base(org)}/domains/", {"domain": "shared.example"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "domain_taken"


def test_txt_record_missing_answers_400(
    org: Organization, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = services.domain_add(org=org, actor=Actor.system(), domain="stmary.example")
    monkeypatch.setattr(services, "_txt_records", lambda name: [])
    response = session(owner).post(f"{base(org)}/domains/{record.pk}/verify/")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "txt_not_found"


def test_other_tenant_gets_404_on_every_endpoint(
    org: Organization, other_org: Organization, owner: Any, make_member: Any
) -> None:
    make_member(other_org, Role.OWNER)
    theirs = services.domain_add(org=other_org, actor=Actor.system(), domain="other.example")
    client = session(owner)
    calls = [
        ("get", f"{base(other_org)}/provider/"),
        ("put", f"{base(other_org)}/provider/"),
        ("get", f"{base(other_org)}/domains/"),
        ("post", f"{base(other_org)}/domains/"),
        ("get", f"{base(other_org)}/domains/{theirs.pk}/"),
        ("delete", f"{base(other_org)}/domains/{theirs.pk}/"),
        ("post", f"{base(other_org)}/domains/{theirs.pk}/verify/"),
        ("get", f"{base(org)}/domains/{theirs.pk}/"),
        ("delete", f"{base(org)}/domains/{theirs.pk}/"),
        ("post", f"{base(org)}/domains/{theirs.pk}/verify/"),
    ]
    for method, path in calls:
        response = getattr(client, method)(path, BODY, format="json")
        assert response.status_code == 404, (method, path, response.content)
    assert EmailDomain.objects.filter(pk=theirs.pk, verified_at__isnull=True).exists()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_non_owners_get_403(org: Organization, make_member: Any, role: str) -> None:
    client = session(make_member(org, role))
    assert client.get(f"{base(org)}/provider/").status_code == 403
    assert client.put(f"{base(org)}/provider/", BODY, format="json").status_code == 403
    assert (
        client.post(f"{base(org)}/domains/", {"domain": "a.example"}, format="json").status_code
        == 403
    )


def test_tokens_are_refused_even_with_the_admin_scope(org: Organization, token_client: Any) -> None:
    client = token_client(org)
    for method, path in [
        ("get", "/api/v1/security/sso/provider/"),
        ("put", "/api/v1/security/sso/provider/"),
        ("get", "/api/v1/security/sso/domains/"),
        ("post", "/api/v1/security/sso/domains/"),
        ("get", f"{base(org)}/provider/"),
    ]:
        response = getattr(client, method)(path, BODY, format="json")
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "session_required"
    assert not IdentityProvider.objects.exists()


def test_anonymous_gets_401(org: Organization) -> None:
    assert APIClient().get(f"{base(org)}/provider/").status_code in (401, 403)
