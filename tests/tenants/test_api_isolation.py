"""Tenant isolation of the REST API: another organization's objects and slugs answer 404."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.models import (
    ApiToken,
    AuditEvent,
    CorsOrigin,
    Invitation,
    Membership,
    Organization,
    WebhookEndpoint,
)
from tenants.roles import Role
from tests.tenants.test_api_support import (
    ENDPOINTS,
    OBJECT_ENDPOINTS,
    Endpoint,
    OrgObjects,
    call,
    create_org_objects,
    error,
    org_path,
    session_client,
    token_path,
)


def _snapshot(org: Organization, objects: OrgObjects) -> dict[str, object]:
    """What a leaked write would change: states of org's objects and its audit trail."""
    return {
        "member_role": Membership.objects.get(pk=objects.member.pk).role,
        "invitation_state": Invitation.objects.get(pk=objects.invitation.pk).state,
        "token_state": ApiToken.objects.get(pk=objects.token.pk).state,
        "webhook": WebhookEndpoint.objects.filter(pk=objects.webhook.pk)
        .values("url", "description", "secret")
        .first(),
        "audit_events": AuditEvent.objects.for_org(org).count(),
        "cors_origins": list(CorsOrigin.objects.for_org(org).values_list("origin", flat=True)),
    }


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=str)
def test_other_tenants_token_gets_404_for_an_object_id(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
    token_client: Callable[..., APIClient],
) -> None:
    objects = create_org_objects(org, make_member, make_token)
    before = _snapshot(org, objects)
    client = token_client(other_org)

    response = call(client, endpoint, token_path(endpoint, objects))

    assert response.status_code == 404, response.content
    assert error(response)["code"] == "not_found"
    assert _snapshot(org, objects) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_session_user_naming_another_organization_gets_404(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    other_objects = create_org_objects(other_org, make_member, make_token)
    before = _snapshot(other_org, other_objects)

    response = call(
        session_client(owner.user), endpoint, org_path(other_org, endpoint, other_objects)
    )

    assert response.status_code == 404, response.content
    assert error(response)["code"] == "not_found"
    assert _snapshot(other_org, other_objects) == before


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=str)
def test_session_user_addressing_another_tenants_object_in_own_org_gets_404(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    other_objects = create_org_objects(other_org, make_member, make_token)
    before = _snapshot(other_org, other_objects)

    response = call(session_client(owner.user), endpoint, org_path(org, endpoint, other_objects))

    assert response.status_code == 404, response.content
    assert _snapshot(other_org, other_objects) == before


def test_token_naming_another_organizations_slug_gets_404(
    org: Organization, other_org: Organization, token_client: Callable[..., APIClient]
) -> None:
    client = token_client(org)

    response = client.get(f"/api/v1/o/{other_org.slug}/organization/")

    assert response.status_code == 404
    assert error(response)["code"] == "not_found"


def test_unknown_slug_gets_404_like_a_foreign_one(owner: Membership) -> None:
    response = session_client(owner.user).get("/api/v1/o/no-such-hospital/members/")

    assert response.status_code == 404
    assert error(response)["code"] == "not_found"


def test_session_request_without_slug_is_told_to_name_the_organization(owner: Membership) -> None:
    response = session_client(owner.user).get("/api/v1/members/")

    assert response.status_code == 400
    assert error(response)["code"] == "organization_required"


def test_member_of_both_organizations_sees_each_ones_own_data(
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Callable[..., Membership],
) -> None:
    make_member(other_org, Role.MEMBER, email=owner.user.email)
    make_member(other_org, Role.ADMIN, email="only-other@clinic.example")
    client = session_client(owner.user)

    ours = client.get(f"/api/v1/o/{org.slug}/members/").json()["results"]
    theirs = client.get(f"/api/v1/o/{other_org.slug}/members/").json()["results"]

    assert [m["email"] for m in ours] == ["owner@stmary.example"]
    assert sorted(m["email"] for m in theirs) == [
        "only-other@clinic.example",
        "owner@stmary.example",
    ]


LISTS = {
    "members/": "member",
    "invitations/": "invitation",
    "tokens/": "token",
    "audit-events/": "event",
    "webhooks/": "webhook",
}


@pytest.mark.parametrize(("path", "kind"), LISTS.items(), ids=list(LISTS))
def test_other_tenants_lists_never_show_this_tenants_objects(
    path: str,
    kind: str,
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
    token_client: Callable[..., APIClient],
) -> None:
    ours = create_org_objects(org, make_member, make_token)
    theirs = create_org_objects(other_org, make_member, make_token)

    response = token_client(other_org).get(f"/api/v1/{path}?page_size=500")

    assert response.status_code == 200
    ids = {item["id"] for item in response.json()["results"]}
    assert theirs.ids()[kind] in ids
    assert ours.ids()[kind] not in ids


def test_other_tenants_audit_export_never_contains_this_tenants_events(
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
    token_client: Callable[..., APIClient],
) -> None:
    create_org_objects(org, make_member, make_token)
    create_org_objects(other_org, make_member, make_token)

    response: Any = token_client(other_org).get("/api/v1/audit-events/export.csv")

    text = b"".join(response.streaming_content).decode()
    assert f"invitee@{other_org.slug}.example" in text
    assert f"invitee@{org.slug}.example" not in text
