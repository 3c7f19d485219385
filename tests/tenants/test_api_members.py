"""Members through the API: listing and filters, role changes, removal, the last-owner rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role, Scope
from tests.tenants.test_api_support import bearer_client, error, session_client


@pytest.fixture
def staff(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> dict[str, Membership]:
    return {
        "admin": make_member(org, Role.ADMIN, email="admin@stmary.example"),
        "auditor": make_member(org, Role.AUDITOR, email="auditor@stmary.example"),
        "radiologist": make_member(org, Role.MEMBER, email="radiologist@stmary.example"),
    }


@pytest.fixture
def admin_token(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> tuple[ApiToken, str]:
    return make_token(org, [Scope.ADMIN], name="directory sync")


def test_member_list_shows_email_name_role_and_date(org: Organization, owner: Membership) -> None:
    get_user_model().objects.filter(pk=owner.user.pk).update(first_name="Ada", last_name="Owner")

    response = session_client(owner.user).get(f"/api/v1/o/{org.slug}/members/")

    assert response.status_code == 200
    [member] = response.json()["results"]
    assert member == {
        "id": owner.pk,
        "email": "owner@stmary.example",
        "name": "Ada Owner",
        "role": "owner",
        "created_at": member["created_at"],
    }


@pytest.mark.parametrize(
    ("query", "emails"),
    [
        ("", ["owner@", "admin@", "auditor@", "radiologist@"]),
        ("?role=auditor", ["auditor@"]),
        ("?q=RADIO", ["radiologist@"]),
        ("?role=admin&q=stmary", ["admin@"]),
        ("?q=nobody", []),
    ],
)
def test_member_list_filters_by_role_and_email(
    org: Organization,
    staff: dict[str, Membership],
    admin_token: tuple[ApiToken, str],
    query: str,
    emails: list[str],
) -> None:
    response = bearer_client(admin_token[1]).get(f"/api/v1/members/{query}")

    assert response.status_code == 200
    assert [m["email"].split("@")[0] + "@" for m in response.json()["results"]] == emails


def test_member_list_rejects_an_unknown_role_filter(org: Organization, owner: Membership) -> None:
    response = session_client(owner.user).get(f"/api/v1/o/{org.slug}/members/?role=superuser")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"role"}


def test_member_list_pages_with_a_cursor(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    for _ in range(4):
        make_member(org)
    client = session_client(owner.user)

    first = client.get(f"/api/v1/o/{org.slug}/members/?page_size=2").json()
    second = client.get(first["next"]).json()
    third = client.get(second["next"]).json()

    assert first["previous"] is None
    assert len(first["results"]) == len(second["results"]) == 2
    assert third["next"] is None
    ids = [m["id"] for page in (first, second, third) for m in page["results"]]
    assert ids == sorted(Membership.objects.for_org(org).values_list("id", flat=True))


def test_member_detail(
    org: Organization, staff: dict[str, Membership], admin_token: tuple[ApiToken, str]
) -> None:
    auditor = staff["auditor"]

    response = bearer_client(admin_token[1]).get(f"/api/v1/members/{auditor.pk}/")

    assert response.status_code == 200
    assert response.json()["email"] == "auditor@stmary.example"
    assert response.json()["role"] == "auditor"


def test_role_change_by_token_is_saved_and_audited_with_the_token(
    org: Organization, staff: dict[str, Membership], admin_token: tuple[ApiToken, str]
) -> None:
    member = staff["radiologist"]

    response = bearer_client(admin_token[1]).patch(
        f"/api/v1/members/{member.pk}/", {"role": "auditor"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["role"] == "auditor"
    member.refresh_from_db()
    assert member.role == Role.AUDITOR
    event = AuditEvent.objects.for_org(org).get(action="member.role_changed")
    assert event.actor_token_id == admin_token[0].pk
    assert event.target_id == str(member.pk)
    assert event.details == {"role": {"from": "member", "to": "auditor"}}


def test_patch_without_role_changes_nothing(
    org: Organization, staff: dict[str, Membership], owner: Membership
) -> None:
    member = staff["radiologist"]

    response = session_client(owner.user).patch(
        f"/api/v1/o/{org.slug}/members/{member.pk}/", {}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["role"] == "member"
    assert not AuditEvent.objects.for_org(org).filter(action="member.role_changed").exists()


@pytest.mark.parametrize("payload", [{"role": "superuser"}, {"role": ""}, {"role": None}])
def test_invalid_role_gets_400_and_changes_nothing(
    org: Organization, staff: dict[str, Membership], owner: Membership, payload: dict[str, Any]
) -> None:
    member = staff["radiologist"]

    response = session_client(owner.user).patch(
        f"/api/v1/o/{org.slug}/members/{member.pk}/", payload, format="json"
    )

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"role"}
    member.refresh_from_db()
    assert member.role == Role.MEMBER


def test_member_removal_by_token_is_audited_with_the_token(
    org: Organization, staff: dict[str, Membership], admin_token: tuple[ApiToken, str]
) -> None:
    member = staff["radiologist"]

    response = bearer_client(admin_token[1]).delete(f"/api/v1/members/{member.pk}/")

    assert response.status_code == 204
    assert not Membership.objects.filter(pk=member.pk).exists()
    event = AuditEvent.objects.for_org(org).get(action="member.removed")
    assert event.actor_token_id == admin_token[0].pk
    assert event.target_label == "radiologist@stmary.example"


@pytest.mark.parametrize(("method", "payload"), [("patch", {"role": "admin"}), ("delete", None)])
def test_last_owner_cannot_be_demoted_or_removed(
    org: Organization, owner: Membership, method: str, payload: dict[str, Any] | None
) -> None:
    client = session_client(owner.user)

    response = getattr(client, method)(
        f"/api/v1/o/{org.slug}/members/{owner.pk}/", payload, format="json"
    )

    assert response.status_code == 409
    assert error(response)["code"] == "last_owner"
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_an_owner_can_step_down_once_another_owner_exists(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    make_member(org, Role.OWNER, email="second-owner@stmary.example")

    response = session_client(owner.user).patch(
        f"/api/v1/o/{org.slug}/members/{owner.pk}/", {"role": "admin"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["role"] == "admin"


@pytest.mark.parametrize(("method", "payload"), [("patch", {"role": "member"}), ("delete", None)])
def test_admin_cannot_touch_an_owner(
    org: Organization,
    owner: Membership,
    staff: dict[str, Membership],
    method: str,
    payload: dict[str, Any] | None,
) -> None:
    client = session_client(staff["admin"].user)

    response = getattr(client, method)(
        f"/api/v1/o/{org.slug}/members/{owner.pk}/", payload, format="json"
    )

    assert response.status_code == 403
    assert error(response)["code"] == "owner_required"
    assert Membership.objects.get(pk=owner.pk).role == Role.OWNER


def test_token_cannot_grant_the_owner_role(
    org: Organization, staff: dict[str, Membership], admin_token: tuple[ApiToken, str]
) -> None:
    member = staff["radiologist"]

    response = bearer_client(admin_token[1]).patch(
        f"/api/v1/members/{member.pk}/", {"role": "owner"}, format="json"
    )

    assert response.status_code == 403
    assert error(response)["code"] == "owner_required"
    assert Membership.objects.get(pk=member.pk).role == Role.MEMBER
