"""An organization's second-factor policy: the owner's page at /o/<slug>/security/mfa/ and the
API at /api/v1/o/<slug>/security/mfa/; owners only, another tenant gets 404."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants.mfa.models import WebAuthnCredential
from tenants.models import ApiToken, AuditEvent, Membership, Organization, SecurityPolicy
from tenants.roles import Role
from tests.tenants.test_mfa_support import TotpDeviceFactory


def page(org: Organization) -> str:
    return f"/o/{org.slug}/security/mfa/"


def api(org: Organization) -> str:
    return f"/api/v1/o/{org.slug}/security/mfa/"


def browser(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def api_session(membership: Membership) -> APIClient:
    client = APIClient()
    client.force_login(membership.user)
    return client


@pytest.fixture
def owner_with_factor(owner: Membership) -> Membership:
    TotpDeviceFactory.create(user=owner.user)
    return owner


# --- portal page -----------------------------------------------------------------------------


def test_the_owner_sees_the_policy_and_who_lacks_a_factor(
    org: Organization, owner_with_factor: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN, email="ada@stmary.example")
    make_member(org, Role.MEMBER, email="mo@stmary.example")
    keyed = make_member(org, Role.MEMBER, email="kim@stmary.example")
    WebAuthnCredential.objects.create(
        user=keyed.user, name="Key", credential_id="k1", public_key=b"k"
    )

    response = browser(owner_with_factor).get(page(org))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'value="off"' in html and "checked" in html
    assert [m.user.email for m in response.context["without"]] == [
        "ada@stmary.example",
        "mo@stmary.example",
    ]
    assert [m.pk for m in response.context["without_admins"]] == [admin.pk]
    assert f'href="/o/{org.slug}/security/"' in html


def test_the_owner_requires_a_factor_of_owners_and_admins_and_it_is_audited(
    org: Organization, owner_with_factor: Membership
) -> None:
    response = browser(owner_with_factor).post(page(org), {"mfa_required": "admins"})

    assert response.status_code == 302
    assert SecurityPolicy.objects.get(organization=org).mfa_required == "admins"
    event = AuditEvent.objects.get(organization=org, action="mfa.policy_update")
    assert event.details == {"from": "off", "to": "admins"}
    assert event.actor_user == owner_with_factor.user


def test_an_owner_without_a_factor_cannot_require_one_of_others(
    org: Organization, owner: Membership
) -> None:
    response = browser(owner).post(page(org), {"mfa_required": "all"})

    assert response.status_code == 409
    assert b"Add a second factor to your own account first" in response.content
    assert not SecurityPolicy.objects.filter(organization=org).exists()


def test_an_unknown_policy_value_is_refused(
    org: Organization, owner_with_factor: Membership
) -> None:
    response = browser(owner_with_factor).post(page(org), {"mfa_required": "sometimes"})

    assert response.status_code == 400
    assert b"Select a valid choice" in response.content
    assert not SecurityPolicy.objects.filter(organization=org).exists()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.BILLING, Role.AUDITOR])
def test_only_owners_manage_the_policy(
    org: Organization, make_member: Callable[..., Membership], role: str
) -> None:
    person = make_member(org, role)
    client = browser(person)

    assert client.get(page(org)).status_code == 403
    assert client.post(page(org), {"mfa_required": "off"}).status_code == 403


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_tenants_policy_page_answers_404(
    org: Organization,
    other_org: Organization,
    owner_with_factor: Membership,
    make_member: Callable[..., Membership],
    method: str,
) -> None:
    make_member(other_org, Role.OWNER)
    client = browser(owner_with_factor)

    response = getattr(client, method)(page(other_org), {"mfa_required": "all"})

    assert response.status_code == 404
    assert not SecurityPolicy.objects.filter(organization=other_org).exists()


# --- API -------------------------------------------------------------------------------------


def test_the_api_reads_and_sets_the_policy(
    org: Organization, owner_with_factor: Membership, make_member: Callable[..., Membership]
) -> None:
    make_member(org, Role.MEMBER)
    make_member(org, Role.ADMIN)
    client = api_session(owner_with_factor)

    before = client.get(api(org))
    assert before.status_code == 200
    assert before.json() == {
        "mfa_required": "off",
        "updated_at": None,
        "members_without_factor": 2,
        "affected_members": 0,
    }
    after = client.put(api(org), {"mfa_required": "admins"}, format="json")
    assert after.status_code == 200
    body = after.json()
    assert (body["mfa_required"], body["affected_members"]) == ("admins", 1)
    assert AuditEvent.objects.filter(organization=org, action="mfa.policy_update").count() == 1


def test_the_api_refuses_an_unknown_value_with_the_field_named(
    org: Organization, owner_with_factor: Membership
) -> None:
    response = api_session(owner_with_factor).put(api(org), {"mfa_required": "yes"}, format="json")

    assert response.status_code == 400
    assert "mfa_required" in response.json()["error"]["fields"]


def test_the_api_refuses_an_owner_without_a_factor(org: Organization, owner: Membership) -> None:
    response = api_session(owner).put(api(org), {"mfa_required": "all"}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "mfa_enrol_first"


@pytest.mark.parametrize("method", ["get", "put"])
def test_another_tenants_policy_api_answers_404(
    org: Organization,
    other_org: Organization,
    owner_with_factor: Membership,
    make_member: Callable[..., Membership],
    method: str,
) -> None:
    make_member(other_org, Role.OWNER)

    response = getattr(api_session(owner_with_factor), method)(
        api(other_org), {"mfa_required": "all"}, format="json"
    )

    assert response.status_code == 404
    assert not SecurityPolicy.objects.filter(organization=other_org).exists()


def test_an_admin_session_gets_403_naming_the_permission(
    org: Organization, make_member: Callable[..., Membership]
) -> None:
    response = api_session(make_member(org, Role.ADMIN)).get(api(org))

    assert response.status_code == 403
    assert response.json()["error"]["fields"]["permission"] == ["security.manage"]


def test_an_api_token_cannot_manage_the_policy(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    client = token_client(org, scopes=["admin"])

    assert client.get("/api/v1/security/mfa/").status_code == 403
    assert (
        client.put("/api/v1/security/mfa/", {"mfa_required": "off"}, format="json").status_code
        == 403
    )
    assert ApiToken.objects.count() == 1
