"""SCIM Users: the identity provider creates, finds, changes, deactivates and removes members,
and every bad request is answered with a SCIM error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tenants import services
from tenants.context import Actor
from tenants.models import ApiToken, AuditEvent, Membership, Organization, UserSession
from tenants.roles import Role, Scope
from tests.tenants.test_scim_support import (
    SCIM_JSON,
    USER,
    ScimClient,
    assert_scim_error,
    patch_body,
    scim_client,
    user_body,
)

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def scim(org: Organization) -> ScimClient:
    return scim_client(org)


def create(scim: ScimClient, email: str = "dana@stmary.example", **extra: Any) -> dict[str, Any]:
    response = scim.post("Users", user_body(email, **extra))
    assert response.status_code == 201, response.content
    return response.json()


def sign_in(email: str) -> Client:
    user = get_user_model().objects.get(email=email)
    if not user.check_password(PASSWORD):
        # As the person would with "Forgot password" (or they sign in through the IdP).
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    client = Client(REMOTE_ADDR="192.0.2.10")
    response = client.post(reverse("login"), {"username": email, "password": PASSWORD})
    assert response.status_code == 302, response.content[:300]
    return client


# --- the round trip --------------------------------------------------------------------------


def test_create_deactivate_reactivate_round_trip_ends_sessions_and_tokens_at_once(
    org: Organization, owner: Membership, scim: ScimClient
) -> None:
    resource = create(scim)
    membership = Membership.objects.get(scim_id=resource["id"])
    assert membership.organization == org and membership.role == Role.MEMBER
    assert resource["active"] is True and resource["userName"] == "dana@stmary.example"

    # The new member signs in, opens the organization and creates an API token.
    browser = sign_in("dana@stmary.example")
    assert browser.get(reverse("portal-dashboard", args=[org.slug])).status_code == 200
    token, secret = services.token_create(
        org=org,
        name="dana's script",
        scopes=[Scope.DICOM_READ],
        actor=Actor(user=membership.user),
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/organization/").status_code == 200
    session_api = APIClient()
    membership.user.refresh_from_db()
    session_api.force_login(membership.user)
    assert session_api.get(f"/api/v1/o/{org.slug}/organization/").status_code == 200

    # Entra ID deactivates with a string.
    response = scim.patch(
        f"Users/{resource['id']}",
        patch_body({"op": "Replace", "path": "active", "value": "False"}),
    )
    assert response.status_code == 200, response.content
    assert response.json()["active"] is False

    membership.refresh_from_db()
    assert membership.deactivated_at is not None
    # The open session ended: the next page asks to sign in.
    page = browser.get(reverse("portal-dashboard", args=[org.slug]))
    assert page.status_code == 302 and reverse("login") in page["Location"]
    assert not UserSession.objects.filter(user=membership.user, ended_at__isnull=True).exists()
    # The token stopped working at once.
    assert api.get("/api/v1/organization/").status_code == 401
    token.refresh_from_db()
    assert token.revoked_at is not None
    # Signing in again gives no access to this organization (portal, API, DICOMweb).
    browser = sign_in("dana@stmary.example")
    assert browser.get(reverse("portal-dashboard", args=[org.slug])).status_code == 404
    session_api = APIClient()
    membership.user.refresh_from_db()
    session_api.force_login(membership.user)
    r = session_api.get(f"/api/v1/o/{org.slug}/organization/")
    assert r.status_code == 404, r.content
    actions = set(AuditEvent.objects.for_org(org).values_list("action", flat=True))
    assert {"scim.user_create", "scim.user_deactivate", "token.revoked", "session.ended"} <= actions

    # Okta reactivates with a value object.
    response = scim.patch(
        f"Users/{resource['id']}", patch_body({"op": "replace", "value": {"active": True}})
    )
    assert response.status_code == 200 and response.json()["active"] is True
    assert browser.get(reverse("portal-dashboard", args=[org.slug])).status_code == 200
    # Revoked tokens stay revoked.
    assert api.get("/api/v1/organization/").status_code == 401
    assert AuditEvent.objects.for_org(org).filter(action="scim.user_reactivate").exists()


def test_deactivated_member_shows_as_deactivated_on_the_members_page(
    org: Organization, owner: Membership, scim: ScimClient
) -> None:
    resource = create(scim)
    scim.patch(
        f"Users/{resource['id']}", patch_body({"op": "replace", "path": "active", "value": False})
    )
    client = Client()
    client.force_login(owner.user)
    page = client.get(reverse("portal-members", args=[org.slug])).content.decode()
    assert "Deactivated" in page and "dana@stmary.example" in page


def test_deactivation_revokes_only_the_persons_tokens_in_this_organization(
    org: Organization,
    other_org: Organization,
    owner: Membership,
    scim: ScimClient,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    resource = create(scim)
    membership = Membership.objects.get(scim_id=resource["id"])
    Membership.objects.create(organization=other_org, user=membership.user)
    mine, _ = services.token_create(
        org=org, name="mine", scopes=[Scope.DICOM_READ], actor=Actor(user=membership.user)
    )
    elsewhere, _ = services.token_create(
        org=other_org, name="there", scopes=[Scope.DICOM_READ], actor=Actor(user=membership.user)
    )
    someone_elses, _ = make_token(org, [Scope.DICOM_READ])
    scim.patch(
        f"Users/{resource['id']}", patch_body({"op": "replace", "path": "active", "value": False})
    )
    states = {t.name: t.revoked_at is not None for t in ApiToken.objects.all()}
    assert states[mine.name] is True
    assert states[elsewhere.name] is False
    assert states[someone_elses.name] is False


# --- create and read -------------------------------------------------------------------------


def test_create_answers_the_user_resource_with_location_and_scim_content_type(
    scim: ScimClient,
) -> None:
    response = scim.post("Users", user_body("dana@stmary.example"))
    assert response.status_code == 201
    assert response["Content-Type"].startswith(SCIM_JSON)
    body = response.json()
    assert response["Location"] == body["meta"]["location"]
    assert body["meta"]["location"].endswith(f"/scim/v2/Users/{body['id']}")
    assert body["schemas"] == [USER]
    assert body["name"]["givenName"] == "Dana" and body["name"]["familyName"] == "Scully"
    assert body["externalId"] == "dana"
    assert body["emails"][0]["value"] == "dana@stmary.example"
    assert body["meta"]["resourceType"] == "User"
    assert body["groups"] == []
    fetched = scim.get(f"Users/{body['id']}").json()
    assert fetched["id"] == body["id"] and fetched["userName"] == body["userName"]
    user = get_user_model().objects.get(email="dana@stmary.example")
    assert user.first_name == "Dana" and not user.has_usable_password()


def test_create_inactive_user_makes_a_deactivated_membership(scim: ScimClient) -> None:
    body = create(scim, active=False)
    assert body["active"] is False
    assert Membership.objects.get(scim_id=body["id"]).deactivated_at is not None


def test_a_person_of_another_hospital_keeps_their_account_and_name(
    org: Organization,
    other_org: Organization,
    scim: ScimClient,
    make_member: Callable[..., Membership],
) -> None:
    there = make_member(other_org, email="dana@stmary.example")
    there.user.first_name = "Dana K."
    there.user.save()
    body = create(scim)
    membership = Membership.objects.get(scim_id=body["id"])
    assert membership.user == there.user
    there.user.refresh_from_db()
    assert there.user.first_name == "Dana K."


def test_duplicate_user_name_is_409_uniqueness(scim: ScimClient) -> None:
    create(scim)
    response = scim.post("Users", user_body("DANA@stmary.example", externalId="other"))
    assert_scim_error(response, 409, "uniqueness")
    assert Membership.objects.filter(user__email="dana@stmary.example").count() == 1


def test_existing_member_is_found_by_user_name_filter_instead_of_created_twice(
    org: Organization, owner: Membership, scim: ScimClient
) -> None:
    response = scim.get('Users?filter=userName eq "owner@stmary.example"')
    body = response.json()
    assert body["totalResults"] == 1
    assert body["Resources"][0]["userName"] == "owner@stmary.example"
    owner.refresh_from_db()
    assert str(owner.scim_id) == body["Resources"][0]["id"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('userName eq "dana@stmary.example"', ["dana@stmary.example"]),
        ('userName eq "DANA@STMARY.EXAMPLE"', ["dana@stmary.example"]),
        ('externalId eq "fox"', ["fox@stmary.example"]),
        ('userName eq "nobody@stmary.example"', []),
        (
            'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "fox@stmary.example"',
            ["fox@stmary.example"],
        ),
        ('emails[type eq "work"] and active eq true', None),
    ],
)
def test_user_filters(scim: ScimClient, query: str, expected: list[str] | None) -> None:
    create(scim, "dana@stmary.example")
    create(scim, "fox@stmary.example", externalId="fox")
    response = scim.get(f"Users?filter={query}")
    if expected is None:
        assert_scim_error(response, 400, "invalidFilter")
        return
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]
    assert [r["userName"] for r in body["Resources"]] == expected
    assert body["totalResults"] == len(expected)


def test_list_pages_with_start_index_and_count(scim: ScimClient) -> None:
    for n in range(5):
        create(scim, f"person{n}@stmary.example", externalId=f"p{n}")
    body = scim.get("Users?startIndex=2&count=2").json()
    assert body["totalResults"] == 5
    assert body["startIndex"] == 2 and body["itemsPerPage"] == 2
    assert [r["userName"] for r in body["Resources"]] == [
        "person1@stmary.example",
        "person2@stmary.example",
    ]
    assert scim.get("Users?count=0").json()["Resources"] == []
    assert_scim_error(scim.get("Users?startIndex=two"), 400, "invalidValue")


# --- changes ---------------------------------------------------------------------------------


def test_put_replaces_names_and_external_id(scim: ScimClient) -> None:
    body = create(scim)
    replaced = user_body("dana@stmary.example", externalId="dscully")
    replaced["name"] = {"givenName": "Dana K.", "familyName": "Scully"}
    response = scim.put(f"Users/{body['id']}", replaced)
    assert response.status_code == 200, response.content
    assert response.json()["externalId"] == "dscully"
    assert response.json()["name"]["givenName"] == "Dana K."
    assert AuditEvent.objects.filter(action="scim.user_update").exists()


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "Replace", "path": "name.givenName", "value": "Fox"},
        {"op": "replace", "value": {"name": {"givenName": "Fox"}}},
        {
            "op": "add",
            "path": "urn:ietf:params:scim:schemas:core:2.0:User:name.givenName",
            "value": "Fox",
        },
    ],
)
def test_patch_forms_of_entra_id_and_okta(scim: ScimClient, operation: dict[str, Any]) -> None:
    body = create(scim)
    response = scim.patch(f"Users/{body['id']}", patch_body(operation))
    assert response.status_code == 200, response.content
    assert response.json()["name"]["givenName"] == "Fox"


def test_patch_ignores_attributes_strata_does_not_keep(scim: ScimClient) -> None:
    body = create(scim)
    response = scim.patch(
        f"Users/{body['id']}",
        patch_body(
            {"op": "Add", "path": "title", "value": "Chief"},
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "x@y.example"},
            {
                "op": "Add",
                "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                "value": "Radiology",
            },
            {"op": "Replace", "path": "externalId", "value": "dana-2"},
        ),
    )
    assert response.status_code == 200, response.content
    assert response.json()["externalId"] == "dana-2"
    assert response.json()["userName"] == "dana@stmary.example"


def test_patch_user_name_changes_the_email_of_a_person_only_here(scim: ScimClient) -> None:
    body = create(scim)
    response = scim.patch(
        f"Users/{body['id']}",
        patch_body({"op": "replace", "path": "userName", "value": "d.scully@stmary.example"}),
    )
    assert response.status_code == 200, response.content
    assert get_user_model().objects.filter(email="d.scully@stmary.example").exists()


def test_delete_removes_the_membership_but_keeps_the_account(
    org: Organization, owner: Membership, scim: ScimClient
) -> None:
    body = create(scim)
    browser = sign_in("dana@stmary.example")
    response = scim.delete(f"Users/{body['id']}")
    assert response.status_code == 204
    assert not Membership.objects.filter(scim_id=body["id"]).exists()
    assert get_user_model().objects.filter(email="dana@stmary.example").exists()
    assert browser.get(reverse("portal-dashboard", args=[org.slug])).status_code == 302
    assert_scim_error(scim.get(f"Users/{body['id']}"), 404)
    assert AuditEvent.objects.for_org(org).filter(action="scim.user_delete").exists()


def test_the_last_active_owner_cannot_be_deactivated_or_deleted(
    org: Organization, owner: Membership, scim: ScimClient
) -> None:
    owner_id = scim.get('Users?filter=userName eq "owner@stmary.example"').json()["Resources"][0][
        "id"
    ]
    response = scim.patch(
        f"Users/{owner_id}", patch_body({"op": "replace", "path": "active", "value": False})
    )
    assert_scim_error(response, 400, "mutability")
    assert_scim_error(scim.delete(f"Users/{owner_id}"), 400, "mutability")
    owner.refresh_from_db()
    assert owner.deactivated_at is None


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "scim_type"),
    [
        ("{not json", 400, "invalidSyntax"),
        ("[1, 2]", 400, "invalidSyntax"),
        ('{"userName": "x@stmary.example"}', 400, "invalidSyntax"),
        (
            '{"schemas": ["urn:example:params:scim:schemas:core:2.0:Robot"], "userName": "x@stmary.example"}',
            400,
            "invalidValue",
        ),
        ('{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}', 400, "invalidValue"),
        (
            '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "not an email"}',
            400,
            "invalidValue",
        ),
        (
            '{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x@stmary.example", "active": "maybe"}',
            400,
            "invalidValue",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-schemas",
        "unknown-schema",
        "no-username",
        "bad-email",
        "bad-active",
    ],
)
def test_bad_create_is_a_scim_error_and_creates_nothing(
    scim: ScimClient, raw: str, status: int, scim_type: str
) -> None:
    before = Membership.objects.count()
    assert_scim_error(scim.post("Users", raw=raw), status, scim_type)
    assert Membership.objects.count() == before


@pytest.mark.parametrize(
    ("body", "scim_type"),
    [
        (patch_body({"op": "move", "path": "active", "value": False}), "invalidSyntax"),
        (patch_body(), "invalidSyntax"),
        ({"Operations": [{"op": "replace", "path": "active", "value": False}]}, "invalidSyntax"),
        (patch_body({"op": "remove"}), "noTarget"),
        (patch_body({"op": "replace", "path": "favouriteColour", "value": "blue"}), "invalidPath"),
        (patch_body({"op": "replace", "path": "active"}), "invalidValue"),
        (patch_body({"op": "remove", "path": "userName"}), "invalidValue"),
        (patch_body({"op": "replace", "path": "active", "value": "perhaps"}), "invalidValue"),
    ],
    ids=[
        "unknown-op",
        "no-operations",
        "no-schemas",
        "remove-without-path",
        "unknown-path",
        "no-value",
        "remove-username",
        "bad-bool",
    ],
)
def test_bad_patch_is_a_scim_error_and_changes_nothing(
    scim: ScimClient, body: dict[str, Any], scim_type: str
) -> None:
    created = create(scim)
    # A valid change first in the same request must not be applied either.
    if "Operations" in body and body["Operations"]:
        body["Operations"].insert(0, {"op": "replace", "path": "externalId", "value": "changed"})
    response = scim.patch(f"Users/{created['id']}", body)
    assert_scim_error(response, 400, scim_type)
    membership = Membership.objects.get(scim_id=created["id"])
    assert membership.scim_external_id == "dana" and membership.deactivated_at is None


@pytest.mark.parametrize(
    "query",
    [
        'userName co "dana"',
        'userName eq "a" or userName eq "b"',
        'title eq "Chief"',
        "userName eq",
        'userName eq "unterminated',
        "userName eq dana",
    ],
)
def test_bad_filter_is_400_invalid_filter(scim: ScimClient, query: str) -> None:
    assert_scim_error(scim.get(f"Users?filter={query}"), 400, "invalidFilter")


def test_unknown_user_id_is_404(scim: ScimClient) -> None:
    assert_scim_error(scim.get("Users/3f1f7c2e-0000-4000-8000-000000000000"), 404)
    assert_scim_error(scim.get("Users/not-a-uuid"), 404)
    assert_scim_error(scim.get("Robots"), 404)


# --- authentication --------------------------------------------------------------------------


def test_no_token_is_401_and_a_revoked_token_is_401(org: Organization) -> None:
    response = ScimClient(None).get("Users")
    assert_scim_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert_scim_error(ScimClient("strata_deadbeef_nope").get("Users"), 401)


def test_other_tokens_may_not_call_scim(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    _, secret = make_token(org, [s.value for s in Scope])
    body = assert_scim_error(ScimClient(secret).get("Users"), 403)
    assert "scim scope" in body["detail"]


def test_the_scim_token_may_call_nothing_else(org: Organization) -> None:
    from tenants.scim import services as scim_services

    _, secret = scim_services.scim_token_create(org=org, actor=Actor.system("tests"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    for path in ("/api/v1/organization/", "/api/v1/members/", "/dicomweb/studies"):
        response = api.get(path)
        assert response.status_code == 403, (path, response.content)
        assert response.json()["error"]["code"] == "scim_token"


def test_the_token_form_and_api_do_not_offer_the_scim_scope(
    org: Organization, owner: Membership
) -> None:
    api = APIClient()
    api.force_login(owner.user)
    response = api.post(
        f"/api/v1/o/{org.slug}/tokens/", {"name": "x", "scopes": ["scim"]}, format="json"
    )
    assert response.status_code == 400
    assert not ApiToken.objects.filter(name="x").exists()
    client = Client()
    client.force_login(owner.user)
    page = client.get(reverse("portal-tokens", args=[org.slug])).content.decode()
    assert 'value="scim"' not in page


def test_discovery_endpoints(scim: ScimClient) -> None:
    config = scim.get("ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True and config["bulk"]["supported"] is False
    types = scim.get("ResourceTypes").json()
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    assert scim.get("ResourceTypes/User").json()["endpoint"] == "/Users"
    schemas = scim.get("Schemas").json()
    assert USER in {s["id"] for s in schemas["Resources"]}
    assert scim.get(f"Schemas/{USER}").json()["name"] == "User"
    assert_scim_error(scim.get("Schemas/urn:nope"), 404)


ODD_VALUES: list[Any] = [None, 7, 1.5, True, "x", [], {}, [None], [{"value": 3}], {"a": [1]}]


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize(
    "field", ["userName", "name", "externalId", "active", "emails", "schemas", "displayName"]
)
def test_odd_values_in_a_create_are_answered_never_a_500(
    scim: ScimClient, field: str, value: Any
) -> None:
    body = user_body("dana@stmary.example")
    body[field] = value
    response = scim.post("Users", body)
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert_scim_error(response, 400)


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize("key", ["op", "path", "value", "Operations"])
def test_odd_values_in_a_patch_are_answered_never_a_500(
    scim: ScimClient, key: str, value: Any
) -> None:
    created = create(scim)
    operation: dict[str, Any] = {"op": "replace", "path": "externalId", "value": "x"}
    body = patch_body(operation)
    if key == "Operations":
        body["Operations"] = value
    else:
        operation[key] = value
    response = scim.patch(f"Users/{created['id']}", body)
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert_scim_error(response, 400)


@pytest.mark.parametrize(
    "query",
    ["startIndex=99999999999999999999999", "count=-5", "startIndex=-3", "count=" + "9" * 5000],
)
def test_odd_paging_is_answered_never_a_500(scim: ScimClient, query: str) -> None:
    response = scim.get(f"Users?{query}")
    assert response.status_code in (200, 400), response.content
