"""SCIM Groups: the identity provider pushes groups and their members; a member's role follows
the groups the organization maps to roles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tenants.context import Actor
from tenants.models import AuditEvent, IdentityProvider, Membership, Organization, ScimGroup
from tenants.roles import Role
from tenants.scim import services as scim_services
from tests.factories import ScimGroupFactory
from tests.tenants.test_scim_support import (
    GROUP,
    ScimClient,
    assert_scim_error,
    patch_body,
    scim_client,
    user_body,
)


@pytest.fixture
def scim(org: Organization) -> ScimClient:
    return scim_client(org)


@pytest.fixture
def mapping(org: Organization) -> IdentityProvider:
    return IdentityProvider.objects.create(
        organization=org,
        name="Entra ID",
        role_mapping={
            "Strata Admins": Role.ADMIN,
            "Strata Auditors": Role.AUDITOR,
            "Strata Owners": Role.OWNER,
        },
    )


def new_user(scim: ScimClient, email: str) -> str:
    response = scim.post("Users", user_body(email, externalId=email))
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def new_group(scim: ScimClient, name: str, members: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    response = scim.post(
        "Groups",
        {"schemas": [GROUP], "displayName": name, "members": [{"value": m} for m in members]},
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def role_of(scim_id: str) -> str:
    return Membership.objects.get(scim_id=scim_id).role


def test_group_create_answers_the_group_with_its_members(scim: ScimClient) -> None:
    dana = new_user(scim, "dana@stmary.example")
    group = new_group(scim, "Radiology", [dana])
    assert group["displayName"] == "Radiology"
    assert [m["value"] for m in group["members"]] == [dana]
    assert group["meta"]["resourceType"] == "Group"
    assert (
        scim.get(f"Groups/{group['id']}").json()["members"][0]["display"] == "dana@stmary.example"
    )
    user = scim.get(f"Users/{dana}").json()
    assert [g["display"] for g in user["groups"]] == ["Radiology"]


def test_membership_in_a_mapped_group_gives_its_role_and_leaving_takes_it_back(
    org: Organization, owner: Membership, scim: ScimClient, mapping: IdentityProvider
) -> None:
    dana = new_user(scim, "dana@stmary.example")
    admins = new_group(scim, "Strata Admins")
    # Entra ID adds a member like this.
    response = scim.patch(
        f"Groups/{admins['id']}",
        patch_body({"op": "Add", "path": "members", "value": [{"value": dana}]}),
    )
    assert response.status_code in (200, 204), response.content
    assert role_of(dana) == Role.ADMIN
    event = AuditEvent.objects.for_org(org).filter(action="member.role_changed").first()
    assert event is not None and event.details["source"] == "scim"
    # Okta removes one with a filter path.
    response = scim.patch(
        f"Groups/{admins['id']}",
        patch_body({"op": "remove", "path": f'members[value eq "{dana}"]'}),
    )
    assert response.status_code in (200, 204), response.content
    assert role_of(dana) == Role.MEMBER


def test_the_highest_mapped_role_wins_and_unmapped_groups_give_member(
    scim: ScimClient, mapping: IdentityProvider, owner: Membership
) -> None:
    dana = new_user(scim, "dana@stmary.example")
    new_group(scim, "Strata Auditors", [dana])
    assert role_of(dana) == Role.AUDITOR
    admins = new_group(scim, "strata admins", [dana])  # names match exactly, as in SSO
    assert role_of(dana) == Role.AUDITOR
    scim.patch(
        f"Groups/{admins['id']}",
        patch_body({"op": "replace", "path": "displayName", "value": "Strata Admins"}),
    )
    assert role_of(dana) == Role.ADMIN
    fox = new_user(scim, "fox@stmary.example")
    new_group(scim, "Cafeteria", [fox])
    assert role_of(fox) == Role.MEMBER


def test_without_a_mapping_groups_leave_roles_alone(
    org: Organization, scim: ScimClient, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN, email="admin@stmary.example")
    admin_id = scim.get('Users?filter=userName eq "admin@stmary.example"').json()["Resources"][0][
        "id"
    ]
    new_group(scim, "Cafeteria", [admin_id])
    admin.refresh_from_db()
    assert admin.role == Role.ADMIN


def test_the_last_owner_is_not_demoted_by_leaving_the_owners_group(
    org: Organization, owner: Membership, scim: ScimClient, mapping: IdentityProvider
) -> None:
    owner_id = scim.get('Users?filter=userName eq "owner@stmary.example"').json()["Resources"][0][
        "id"
    ]
    group = new_group(scim, "Strata Owners", [owner_id])
    scim.patch(f"Groups/{group['id']}", patch_body({"op": "remove", "path": "members"}))
    owner.refresh_from_db()
    assert owner.role == Role.OWNER
    event = AuditEvent.objects.for_org(org).filter(action="scim.group_update").first()
    assert event is not None and event.details["roles_kept_last_owner"] == ["owner@stmary.example"]


def test_renaming_a_group_recomputes_its_members_roles(
    scim: ScimClient, mapping: IdentityProvider, owner: Membership
) -> None:
    dana = new_user(scim, "dana@stmary.example")
    group = new_group(scim, "Radiology", [dana])
    assert role_of(dana) == Role.MEMBER
    # Okta's form: the whole group as the value, its id included.
    response = scim.patch(
        f"Groups/{group['id']}",
        patch_body({"op": "replace", "value": {"id": group["id"], "displayName": "Strata Admins"}}),
    )
    assert response.status_code == 200, response.content
    assert role_of(dana) == Role.ADMIN


def test_put_replaces_members_and_delete_recomputes(
    org: Organization, scim: ScimClient, mapping: IdentityProvider, owner: Membership
) -> None:
    dana = new_user(scim, "dana@stmary.example")
    fox = new_user(scim, "fox@stmary.example")
    group = new_group(scim, "Strata Admins", [dana])
    response = scim.put(
        f"Groups/{group['id']}",
        {"schemas": [GROUP], "displayName": "Strata Admins", "members": [{"value": fox}]},
    )
    assert response.status_code == 200, response.content
    assert (role_of(dana), role_of(fox)) == (Role.MEMBER, Role.ADMIN)
    assert scim.delete(f"Groups/{group['id']}").status_code == 204
    assert role_of(fox) == Role.MEMBER
    assert not ScimGroup.objects.filter(scim_id=group["id"]).exists()
    actions = set(AuditEvent.objects.for_org(org).values_list("action", flat=True))
    assert {"scim.group_create", "scim.group_update", "scim.group_delete"} <= actions


def test_mapping_change_recompute(org: Organization, scim: ScimClient, owner: Membership) -> None:
    dana = new_user(scim, "dana@stmary.example")
    new_group(scim, "Radiology leads", [dana])
    provider = IdentityProvider.objects.create(
        organization=org, name="Okta", role_mapping={"Radiology leads": Role.ADMIN}
    )
    outcome = scim_services.scim_roles_recompute(org=org, actor=Actor.system("tests"))
    assert outcome["changed"] == ["dana@stmary.example"]
    assert role_of(dana) == Role.ADMIN
    provider.role_mapping = {}
    provider.save()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('displayName eq "Radiology"', ["Radiology"]),
        ('externalId eq "ext-1"', ["Radiology"]),
        ('displayName eq "Nobody"', []),
    ],
)
def test_group_filters(
    org: Organization, scim: ScimClient, query: str, expected: list[str]
) -> None:
    ScimGroupFactory(organization=org, display_name="Radiology", external_id="ext-1")
    ScimGroupFactory(organization=org, display_name="Cardiology")
    body = scim.get(f"Groups?filter={query}").json()
    assert [g["displayName"] for g in body["Resources"]] == expected


def test_member_filter_and_excluded_members(scim: ScimClient) -> None:
    dana = new_user(scim, "dana@stmary.example")
    group = new_group(scim, "Radiology", [dana])
    new_group(scim, "Cardiology")
    body = scim.get(
        f'Groups?filter=id eq "{group["id"]}" and members[value eq "{dana}"]&excludedAttributes=members'
    ).json()
    assert [g["displayName"] for g in body["Resources"]] == ["Radiology"]
    assert "members" not in body["Resources"][0]


def test_duplicate_display_name_is_409_uniqueness(scim: ScimClient) -> None:
    new_group(scim, "Radiology")
    response = scim.post("Groups", {"schemas": [GROUP], "displayName": "radiology"})
    assert_scim_error(response, 409, "uniqueness")
    assert ScimGroup.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "scim_type"),
    [
        ({"schemas": [GROUP]}, "invalidValue"),
        ({"schemas": ["urn:example:Team"], "displayName": "x"}, "invalidValue"),
        ({"displayName": "x"}, "invalidSyntax"),
        (
            {
                "schemas": [GROUP],
                "displayName": "x",
                "members": [{"value": "3f1f7c2e-0000-4000-8000-000000000000"}],
            },
            "invalidValue",
        ),
        ({"schemas": [GROUP], "displayName": "x", "members": ["just-a-string"]}, "invalidValue"),
    ],
    ids=["no-name", "unknown-schema", "no-schemas", "unknown-member", "bad-member"],
)
def test_bad_group_create_is_a_scim_error_and_creates_nothing(
    scim: ScimClient, body: dict[str, Any], scim_type: str
) -> None:
    assert_scim_error(scim.post("Groups", body), 400, scim_type)
    assert ScimGroup.objects.count() == 0


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "delete", "path": "members"}, "invalidSyntax"),
        ({"op": "replace", "path": "owner", "value": "x"}, "invalidPath"),
        ({"op": "add", "path": "members", "value": [{"value": "not-a-user"}]}, "invalidValue"),
        ({"op": "remove", "path": "displayName"}, "invalidValue"),
        ({"op": "add", "path": 'members[value eq "x"]', "value": []}, "invalidPath"),
    ],
)
def test_bad_group_patch_is_a_scim_error_and_changes_nothing(
    scim: ScimClient, operation: dict[str, Any], scim_type: str
) -> None:
    dana = new_user(scim, "dana@stmary.example")
    group = new_group(scim, "Radiology", [dana])
    response = scim.patch(
        f"Groups/{group['id']}",
        patch_body({"op": "replace", "path": "displayName", "value": "Renamed"}, operation),
    )
    assert_scim_error(response, 400, scim_type)
    stored = ScimGroup.objects.get(scim_id=group["id"])
    assert stored.display_name == "Radiology"
    assert [str(m.scim_id) for m in stored.members.all()] == [dana]


def test_another_organizations_member_cannot_be_added_to_a_group(
    org: Organization, other_org: Organization, scim: ScimClient
) -> None:
    theirs = scim_client(other_org)
    their_user = new_user(theirs, "mulder@other.example")
    group = new_group(scim, "Radiology")
    response = scim.patch(
        f"Groups/{group['id']}",
        patch_body({"op": "add", "path": "members", "value": [{"value": their_user}]}),
    )
    assert_scim_error(response, 400, "invalidValue")
    assert ScimGroup.objects.get(scim_id=group["id"]).members.count() == 0


ODD_VALUES: list[Any] = [None, 7, True, "x", [], {}, [None], [{"value": 3}], [{"value": None}]]


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize("field", ["displayName", "members", "externalId", "schemas"])
def test_odd_values_in_a_group_create_are_answered_never_a_500(
    scim: ScimClient, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"schemas": [GROUP], "displayName": "Radiology", "members": []}
    body[field] = value
    response = scim.post("Groups", body)
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert_scim_error(response, 400)


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize("path", ["members", "displayName", "externalId", None])
@pytest.mark.parametrize("op", ["add", "remove", "replace"])
def test_odd_values_in_a_group_patch_are_answered_never_a_500(
    scim: ScimClient, op: str, path: str | None, value: Any
) -> None:
    group = new_group(scim, "Radiology")
    operation: dict[str, Any] = {"op": op, "value": value}
    if path is not None:
        operation["path"] = path
    response = scim.patch(f"Groups/{group['id']}", patch_body(operation))
    assert response.status_code in (200, 204, 400), response.content
    if response.status_code == 400:
        assert_scim_error(response, 400)
