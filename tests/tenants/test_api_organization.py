"""The current organization through the API: what it is, what the caller may do, renaming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Perm, Role, Scope
from tests.tenants.test_api_support import bearer_client, error, session_client


def test_organization_shows_itself_and_the_roles_permissions(
    org: Organization, make_member: Callable[..., Membership]
) -> None:
    auditor = make_member(org, Role.AUDITOR)

    response = session_client(auditor.user).get(f"/api/v1/o/{org.slug}/organization/")

    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("id", "name", "slug", "status")} == {
        "id": org.pk,
        "name": "St. Mary Hospital",
        "slug": "st-mary",
        "status": "active",
    }
    assert body["created_at"]
    assert body["permissions"] == sorted(
        [Perm.AUDIT_READ, Perm.INVOICES_VIEW, Perm.MEMBERS_VIEW, Perm.ORG_VIEW]
    )


def test_organization_for_a_token_lists_its_scopes_permissions(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    _, secret = make_token(org, [Scope.DICOM_READ])

    response = bearer_client(secret).get("/api/v1/organization/")

    assert response.status_code == 200
    assert response.json()["permissions"] == [Perm.IMAGES_READ, Perm.ORG_VIEW]


def test_rename_by_token_is_saved_and_audited_with_the_token(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, secret = make_token(org, [Scope.ADMIN])

    response = bearer_client(secret).patch(
        "/api/v1/organization/", {"name": "  St. Mary's  "}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["name"] == "St. Mary's"
    org.refresh_from_db()
    assert org.name == "St. Mary's"
    event = AuditEvent.objects.for_org(org).get(action="organization.updated")
    assert event.actor_token_id == token.pk
    assert event.details == {"name": {"from": "St. Mary Hospital", "to": "St. Mary's"}}


@pytest.mark.parametrize(
    "payload", [{"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": None}]
)
def test_invalid_name_gets_400_and_changes_nothing(
    org: Organization, owner: Membership, payload: dict[str, Any]
) -> None:
    client = session_client(owner.user)
    events_before = AuditEvent.objects.for_org(org).count()

    response = client.patch(f"/api/v1/o/{org.slug}/organization/", payload, format="json")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"name"}
    org.refresh_from_db()
    assert org.name == "St. Mary Hospital"
    assert AuditEvent.objects.for_org(org).count() == events_before


def test_slug_and_status_cannot_be_changed_here(org: Organization, owner: Membership) -> None:
    response = session_client(owner.user).patch(
        f"/api/v1/o/{org.slug}/organization/",
        {"slug": "taken-over", "status": "closed"},
        format="json",
    )

    assert response.status_code == 200
    org.refresh_from_db()
    assert (org.slug, org.status) == ("st-mary", "active")
