"""The platform API: Strata staff create and suspend organizations; nobody else may."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role
from tests.tenants.test_api_support import bearer_client, error, session_client

BASE = "/api/v1/platform/organizations/"


@pytest.fixture
def staff_user(db: Any) -> User:
    return get_user_model().objects.create_user(
        username="ops@strata.example", email="ops@strata.example", is_staff=True
    )


@pytest.fixture
def staff_client(staff_user: User) -> APIClient:
    return session_client(staff_user)


def test_staff_creates_an_organization_with_its_owner(
    staff_client: APIClient, staff_user: User
) -> None:
    response = staff_client.post(
        BASE,
        {"name": "Lakeside Clinic", "slug": "lakeside", "owner_email": "Chief@Lakeside.example"},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("name", "slug", "status")} == {
        "name": "Lakeside Clinic",
        "slug": "lakeside",
        "status": "active",
    }
    org = Organization.objects.get(pk=body["id"])
    owner = Membership.objects.for_org(org).get()
    assert (owner.user.email, owner.role) == ("chief@lakeside.example", Role.OWNER)
    event = AuditEvent.objects.for_org(org).get(action="organization.created")
    assert event.actor_user_id == staff_user.pk


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"name", "slug", "owner_email"}),
        ({"name": "X", "slug": "has spaces", "owner_email": "a@b.example"}, {"slug"}),
        ({"name": "X", "slug": "st-mary", "owner_email": "a@b.example"}, {"slug"}),
        ({"name": "X", "slug": "x", "owner_email": "nobody"}, {"owner_email"}),
    ],
    ids=["missing", "bad-slug", "taken-slug", "bad-email"],
)
def test_invalid_organization_gets_400_and_creates_nothing(
    org: Organization, staff_client: APIClient, payload: dict[str, Any], fields: set[str]
) -> None:
    before = Organization.objects.count()

    response = staff_client.post(BASE, payload, format="json")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == fields
    assert Organization.objects.count() == before


def test_staff_lists_filters_and_reads_organizations(
    org: Organization, other_org: Organization, staff_client: APIClient
) -> None:
    Organization.objects.filter(pk=other_org.pk).update(status=Organization.Status.SUSPENDED)

    everything = staff_client.get(BASE).json()["results"]
    suspended = staff_client.get(f"{BASE}?status=suspended").json()["results"]
    by_name = staff_client.get(f"{BASE}?q=mary").json()["results"]
    detail = staff_client.get(f"{BASE}{org.pk}/")

    assert [o["slug"] for o in everything] == ["other-clinic", "st-mary"]
    assert [o["slug"] for o in suspended] == ["other-clinic"]
    assert [o["slug"] for o in by_name] == ["st-mary"]
    assert detail.status_code == 200
    assert detail.json()["name"] == "St. Mary Hospital"
    assert staff_client.get(f"{BASE}999999/").status_code == 404


def test_suspending_an_organization_locks_out_its_tokens(
    org: Organization, staff_client: APIClient, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    _, secret = make_token(org)

    response = staff_client.patch(f"{BASE}{org.pk}/", {"status": "suspended"}, format="json")

    assert response.status_code == 200
    assert response.json()["status"] == "suspended"
    assert AuditEvent.objects.for_org(org).get(action="organization.status_changed").details == {
        "status": {"from": "active", "to": "suspended"}
    }
    refused = bearer_client(secret).get("/api/v1/organization/")
    assert refused.status_code == 403
    assert error(refused)["code"] == "organization_inactive"


def test_invalid_status_gets_400(org: Organization, staff_client: APIClient) -> None:
    response = staff_client.patch(f"{BASE}{org.pk}/", {"status": "deleted"}, format="json")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"status"}
    org.refresh_from_db()
    assert org.status == Organization.Status.ACTIVE


@pytest.mark.parametrize("caller", ["owner-session", "admin-token"])
@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("get", BASE, None),
        ("post", BASE, {"name": "Evil", "slug": "evil", "owner_email": "evil@x.example"}),
        ("get", BASE + "{id}/", None),
        ("patch", BASE + "{id}/", {"status": "closed"}),
    ],
    ids=["list", "create", "detail", "update"],
)
def test_platform_api_refuses_everyone_but_staff_with_403(
    org: Organization,
    owner: Membership,
    token_client: Callable[..., APIClient],
    caller: str,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
) -> None:
    client = session_client(owner.user) if caller == "owner-session" else token_client(org)

    response = getattr(client, method)(path.format(id=org.pk), payload, format="json")

    assert response.status_code == 403
    assert error(response)["code"] == "permission_denied"
    assert Organization.objects.count() == 1
    org.refresh_from_db()
    assert org.status == Organization.Status.ACTIVE


def test_platform_api_asks_anonymous_callers_to_authenticate(db: Any) -> None:
    response = APIClient().get(BASE)

    assert response.status_code == 401
    assert error(response)["code"] == "not_authenticated"


def test_staff_token_would_still_be_refused(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], staff_user: User
) -> None:
    # A token created by a staff user acts as the token, never as its creator.
    Membership.objects.create(user=staff_user, organization=org, role=Role.OWNER)
    _, secret = make_token(org)
    ApiToken.objects.update(created_by=staff_user)

    response = bearer_client(secret).get(BASE)

    assert response.status_code == 403
