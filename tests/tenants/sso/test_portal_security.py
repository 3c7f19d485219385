"""The portal's Security page: owners only, other tenants 404, the secret never shown back."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tenants.models import AuditEvent, EmailDomain, IdentityProvider, Organization
from tenants.roles import Role
from tenants.sso import services
from tests.tenants.sso.conftest import verified_domain

PROVIDER_POST = {
    "name": "St. Mary Entra ID",
    "issuer": "https://login.microsoftonline.com/tenant-id/v2.0",
    "client_id": "strata-app",
    "client_secret": "the-client-secret-value",
    "scopes": "openid email profile",
    "groups_claim": "groups",
    "enabled": "on",
    "map_group_0": "radiology",
    "map_role_0": "member",
    "map_group_1": "pacs-admins",
    "map_role_1": "admin",
    "map_group_2": "",
    "map_role_2": "",
}


def logged_in(membership: Any) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_owner_sees_the_page_with_the_redirect_uri(org: Organization, owner: Any) -> None:
    response = logged_in(owner).get(f"/o/{org.slug}/security/")
    assert response.status_code == 200
    assert b"http://testserver/accounts/sso/callback/" in response.content


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.AUDITOR, Role.BILLING])
def test_other_roles_are_refused(org: Organization, make_member: Any, role: str) -> None:
    response = logged_in(make_member(org, role)).get(f"/o/{org.slug}/security/")
    assert response.status_code == 403


def test_owner_saves_the_provider_and_the_secret_is_never_shown(
    org: Organization, owner: Any
) -> None:
    client = logged_in(owner)
    response = client.post(f"/o/{org.slug}/security/sso/", PROVIDER_POST)
    assert response.status_code == 302
    provider = IdentityProvider.objects.get(organization=org)
    assert provider.role_mapping == {"pacs-admins": "admin", "radiology": "member"}
    page = client.get(f"/o/{org.slug}/security/")
    assert b"the-client-secret-value" not in page.content
    assert provider.client_secret_encrypted.encode() not in page.content
    assert b"A client secret is saved" in page.content
    # Saving again without a secret keeps it.
    data = {**PROVIDER_POST, "client_secret": "", "map_group_0": "", "map_role_0": ""}
    data.update({f"map_group_{i}": "" for i in range(2, 5)})
    data.update({f"map_role_{i}": "" for i in range(2, 5)})
    assert client.post(f"/o/{org.slug}/security/sso/", data).status_code == 302
    provider.refresh_from_db()
    assert provider.role_mapping == {"pacs-admins": "admin"}
    assert provider.client_secret_encrypted


def test_invalid_provider_form_is_shown_with_errors(org: Organization, owner: Any) -> None:
    data = {**PROVIDER_POST, "issuer": "ftp://nope", "map_group_0": "", "map_group_1": ""}
    response = logged_in(owner).post(f"/o/{org.slug}/security/sso/", data)
    assert response.status_code == 400
    assert b"https://" in response.content
    assert not IdentityProvider.objects.exists()


def test_owner_adds_verifies_and_removes_a_domain(
    org: Organization, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = logged_in(owner)
    assert (
        client.post(f"/o/{org.slug}/security/domains/", {"domain": "StMary.example"}).status_code
        == 302
    )
    record = EmailDomain.objects.get(organization=org)
    page = client.get(f"/o/{org.slug}/security/")
    assert services.domain_txt_value(record).encode() in page.content
    monkeypatch.setattr(services, "_txt_records", lambda name: [services.domain_txt_value(record)])
    client.post(f"/o/{org.slug}/security/domains/{record.pk}/verify/")
    record.refresh_from_db()
    assert record.verified_at is not None
    client.post(f"/o/{org.slug}/security/domains/{record.pk}/remove/")
    assert not EmailDomain.objects.exists()


def test_bad_domain_is_refused_on_the_page(org: Organization, owner: Any) -> None:
    response = logged_in(owner).post(f"/o/{org.slug}/security/domains/", {"domain": "nope"})
    assert response.status_code == 400
    assert b"Enter an email domain" in response.content


def test_other_tenant_gets_404_on_every_security_url(
    org: Organization, other_org: Organization, owner: Any, make_member: Any
) -> None:
    theirs = services.domain_add(
        org=other_org,
        actor=__import__("tenants.context").context.Actor.system(),
        domain="x.example",
    )
    mine = verified_domain(org, "stmary.example")
    client = logged_in(owner)
    for method, path in [
        ("get", f"/o/{other_org.slug}/security/"),
        ("post", f"/o/{other_org.slug}/security/sso/"),
        ("post", f"/o/{other_org.slug}/security/domains/"),
        ("post", f"/o/{other_org.slug}/security/domains/{theirs.pk}/verify/"),
        ("post", f"/o/{other_org.slug}/security/domains/{theirs.pk}/remove/"),
        # Another tenant's domain id under my own organization.
        ("post", f"/o/{org.slug}/security/domains/{theirs.pk}/verify/"),
        ("post", f"/o/{org.slug}/security/domains/{theirs.pk}/remove/"),
    ]:
        response = getattr(client, method)(path, {"domain": "a.example"})
        assert response.status_code == 404, (method, path)
    assert EmailDomain.objects.filter(pk=theirs.pk, verified_at__isnull=True).exists()
    assert EmailDomain.objects.filter(pk=mine.pk).exists()


def test_staff_page_verifies_a_domain_and_is_staff_only(
    org: Organization, owner: Any, make_member: Any
) -> None:
    record = EmailDomain.objects.create(
        organization=org, domain="stmary.example", verification_token="t"
    )
    assert logged_in(owner).get("/accounts/sso/staff/domains/").status_code == 302  # to admin login
    staff = make_member(org, Role.MEMBER, email="staff@platform.example").user
    staff.is_staff = True
    staff.save()
    client = Client()
    client.force_login(staff)
    assert b"stmary.example" in client.get("/accounts/sso/staff/domains/").content
    client.post("/accounts/sso/staff/domains/", {"domain_id": record.pk})
    record.refresh_from_db()
    assert record.verified_by == EmailDomain.VerifiedBy.STAFF
    assert AuditEvent.objects.filter(action="sso.domain_verify", organization=org).exists()
