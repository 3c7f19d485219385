"""The SCIM section of the Security page: owners only, the base URL, the token shown once and
revoked, groups with their roles, and the latest activity."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from tenants.models import (
    ApiToken,
    AuditEvent,
    IdentityProvider,
    Membership,
    Organization,
    ScimGroup,
)
from tenants.roles import Role, Scope
from tests.factories import ScimGroupFactory
from tests.tenants.test_scim_support import ScimClient, user_body


def page_url(org: Organization) -> str:
    return reverse("portal-scim", args=[org.slug])


def browser(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_owner_sees_the_base_url_groups_and_roles(org: Organization, owner: Membership) -> None:
    IdentityProvider.objects.create(
        organization=org, name="Entra ID", role_mapping={"Strata Admins": Role.ADMIN}
    )
    group: ScimGroup = ScimGroupFactory.create(organization=org, display_name="Strata Admins")
    group.members.add(owner)
    ScimGroupFactory(organization=org, display_name="Cafeteria")
    response = browser(owner).get(page_url(org))
    assert response.status_code == 200
    page = response.content.decode()
    assert "http://testserver/scim/v2/" in page
    assert "Strata Admins" in page and "Admin" in page and "Not mapped" in page
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.AUDITOR, Role.BILLING])
def test_only_owners_may_open_the_page(
    org: Organization, make_member: Callable[..., Membership], role: str
) -> None:
    member = make_member(org, role)
    client = browser(member)
    assert client.get(page_url(org)).status_code == 403
    assert client.post(page_url(org)).status_code == 403
    assert not ApiToken.objects.exists()


def test_other_tenant_gets_404(
    org: Organization, other_org: Organization, make_member: Callable[..., Membership]
) -> None:
    stranger = make_member(other_org, Role.OWNER)
    client = browser(stranger)
    assert client.get(page_url(org)).status_code == 404
    assert client.post(page_url(org)).status_code == 404
    assert not ApiToken.objects.exists()


def test_create_shows_the_token_once_and_it_works_only_for_scim(
    org: Organization, owner: Membership
) -> None:
    client = browser(owner)
    response = client.post(page_url(org))
    assert response.status_code == 302
    page = client.get(page_url(org)).content.decode()
    token = ApiToken.objects.get(organization=org)
    assert token.scopes == [Scope.SCIM] and token.created_by == owner.user
    start = page.index('id="new-token-secret"')
    secret = page[page.index(">", start) + 1 : page.index("</code>", start)]
    assert secret.startswith(f"strata_{token.prefix}_")
    assert ScimClient(secret).get("Users").status_code == 200
    # Gone on the next visit.
    assert secret not in client.get(page_url(org)).content.decode()
    assert AuditEvent.objects.filter(action="scim.token_create", organization=org).exists()


def test_revoke_stops_the_identity_provider_at_once(org: Organization, owner: Membership) -> None:
    client = browser(owner)
    client.post(page_url(org))
    page = client.get(page_url(org)).content.decode()
    start = page.index('id="new-token-secret"')
    secret = page[page.index(">", start) + 1 : page.index("</code>", start)]
    token = ApiToken.objects.get(organization=org)
    response = client.post(reverse("portal-scim-token-revoke", args=[org.slug, token.pk]))
    assert response.status_code == 302
    assert ScimClient(secret).get("Users").status_code == 401
    assert AuditEvent.objects.filter(action="scim.token_revoke", organization=org).exists()


def test_revoking_another_organizations_or_a_plain_token_is_404(
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    plain, _ = make_token(org, [Scope.DICOM_READ])
    other_owner = Membership.objects.create(
        organization=other_org, user=owner.user, role=Role.OWNER
    )
    browser(other_owner).post(page_url(other_org))
    theirs = ApiToken.objects.get(organization=other_org)
    client = browser(owner)
    for token in (plain, theirs):
        response = client.post(reverse("portal-scim-token-revoke", args=[org.slug, token.pk]))
        assert response.status_code == 404
        token.refresh_from_db()
        assert token.revoked_at is None


def test_activity_lists_provisioning_events(org: Organization, owner: Membership) -> None:
    client = browser(owner)
    client.post(page_url(org))
    page = client.get(page_url(org)).content.decode()
    start = page.index('id="new-token-secret"')
    secret = page[page.index(">", start) + 1 : page.index("</code>", start)]
    ScimClient(secret).post("Users", user_body("dana@stmary.example"))
    page = client.get(page_url(org)).content.decode()
    assert "scim.user_create" in page and "dana@stmary.example" in page


def test_a_deactivated_owner_cannot_open_the_page(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    from django.utils import timezone

    make_member(org, Role.OWNER, email="second@stmary.example")
    owner.deactivated_at = timezone.now()
    owner.save()
    assert browser(owner).get(page_url(org)).status_code == 404
