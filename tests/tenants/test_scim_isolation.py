"""SCIM and tenant isolation: a token sees and changes only its own organization's members and
groups; another organization's id answers 404 on every endpoint, and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from tenants.models import Membership, Organization, ScimGroup
from tests.tenants.test_scim_support import (
    GROUP,
    ScimClient,
    assert_scim_error,
    patch_body,
    scim_client,
    user_body,
)


@pytest.fixture
def theirs(other_org: Organization) -> dict[str, str]:
    client = scim_client(other_org)
    user = client.post("Users", user_body("mulder@other.example")).json()["id"]
    group = client.post(
        "Groups", {"schemas": [GROUP], "displayName": "X-Files", "members": [{"value": user}]}
    ).json()["id"]
    return {"user": user, "group": group}


CALLS: list[tuple[str, str, Any]] = [
    ("get", "Users/{user}", None),
    ("put", "Users/{user}", user_body("taken@stmary.example")),
    ("patch", "Users/{user}", patch_body({"op": "replace", "path": "active", "value": False})),
    ("delete", "Users/{user}", None),
    ("get", "Groups/{group}", None),
    ("put", "Groups/{group}", {"schemas": [GROUP], "displayName": "Mine now"}),
    ("patch", "Groups/{group}", patch_body({"op": "remove", "path": "members"})),
    ("delete", "Groups/{group}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_other_tenant_gets_404_on_every_endpoint(
    org: Organization, theirs: dict[str, str], method: str, path: str, body: Any
) -> None:
    mine = scim_client(org)
    url = path.format(**theirs)
    response = getattr(mine, method)(url, body) if body is not None else getattr(mine, method)(url)
    error = assert_scim_error(response, 404)
    assert "mulder" not in response.content.decode() and "X-Files" not in error["detail"]
    membership = Membership.objects.get(scim_id=theirs["user"])
    assert membership.deactivated_at is None
    group = ScimGroup.objects.get(scim_id=theirs["group"])
    assert group.display_name == "X-Files" and group.members.count() == 1


def test_lists_and_filters_show_only_this_organization(
    org: Organization, theirs: dict[str, str]
) -> None:
    mine = scim_client(org)
    for query in (
        "Users",
        'Users?filter=userName eq "mulder@other.example"',
        f'Users?filter=id eq "{theirs["user"]}"',
    ):
        body = mine.get(query).json()
        assert body["totalResults"] == 0, query
    for query in (
        "Groups",
        'Groups?filter=displayName eq "X-Files"',
        f'Groups?filter=members[value eq "{theirs["user"]}"]',
    ):
        body = mine.get(query).json()
        assert body["totalResults"] == 0, query


def test_the_same_person_in_two_hospitals_has_two_independent_users(
    org: Organization, other_org: Organization, theirs: dict[str, str]
) -> None:
    mine = scim_client(org)
    created = mine.post("Users", user_body("mulder@other.example")).json()
    assert created["id"] != theirs["user"]
    response = mine.patch(
        f"Users/{created['id']}", patch_body({"op": "replace", "path": "active", "value": False})
    )
    assert response.status_code == 200
    assert Membership.objects.get(scim_id=theirs["user"]).deactivated_at is None
    # Their identity provider still governs their membership; ours cannot rename the person.
    response = mine.patch(
        f"Users/{created['id']}",
        patch_body({"op": "replace", "path": "userName", "value": "fox@stmary.example"}),
    )
    assert_scim_error(response, 400, "mutability")


def test_a_suspended_organizations_scim_token_is_refused(org: Organization) -> None:
    client: ScimClient = scim_client(org)
    org.status = Organization.Status.SUSPENDED
    org.save()
    assert_scim_error(client.get("Users"), 403)
