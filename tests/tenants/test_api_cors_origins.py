"""REST API of the allowed browser origins (CORS): cors-origins/ (the role and scope matrix and the
other-tenant 404s of every endpoint are in test_api_permissions and test_api_isolation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants import cors, services
from tenants.context import Actor
from tenants.models import AuditEvent, CorsOrigin, Organization
from tests.tenants.test_api_support import error


@pytest.fixture
def admin_client(org: Organization, token_client: Callable[..., APIClient]) -> APIClient:
    return token_client(org, ["admin"])


def test_add_list_and_remove_an_origin(org: Organization, admin_client: APIClient) -> None:
    created = admin_client.post(
        "/api/v1/cors-origins/",
        {"origin": "HTTPS://OHIF.StMary.example:443", "description": "OHIF viewer"},
        format="json",
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["origin"] == "https://ohif.stmary.example"
    assert body["description"] == "OHIF viewer"
    listed = admin_client.get("/api/v1/cors-origins/").json()
    assert [row["origin"] for row in listed["results"]] == ["https://ohif.stmary.example"]
    assert admin_client.get(f"/api/v1/cors-origins/{body['id']}/").json() == body

    removed = admin_client.delete(f"/api/v1/cors-origins/{body['id']}/")

    assert removed.status_code == 204
    assert not CorsOrigin.objects.for_org(org).exists()
    assert admin_client.get(f"/api/v1/cors-origins/{body['id']}/").status_code == 404


def test_changes_are_audited(org: Organization, admin_client: APIClient) -> None:
    row = admin_client.post(
        "/api/v1/cors-origins/", {"origin": "https://ohif.stmary.example"}, format="json"
    ).json()
    admin_client.delete(f"/api/v1/cors-origins/{row['id']}/")

    events = list(
        AuditEvent.objects.for_org(org)
        .filter(action__startswith="cors_origin.")
        .order_by("created_at", "id")
    )
    assert [e.action for e in events] == ["cors_origin.added", "cors_origin.removed"]
    assert all(e.details["origin"] == "https://ohif.stmary.example" for e in events)
    assert all(e.target_id == str(row["id"]) for e in events)
    assert all(e.actor_token is not None for e in events)


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("https://ohif.stmary.example/viewer", "no path"),
        ("https://*.stmary.example", "Wildcards"),
        ("ftp://ohif.stmary.example", "Only http and https"),
        ("null", "'null'"),
        ("ohif.stmary.example", "https://"),
    ],
)
def test_bad_origin_is_refused_with_the_reason(
    org: Organization, admin_client: APIClient, origin: str, reason: str
) -> None:
    response = admin_client.post("/api/v1/cors-origins/", {"origin": origin}, format="json")

    assert response.status_code == 400
    body = error(response)
    assert body["code"] == "invalid_origin"
    assert reason in body["fields"]["origin"][0]
    assert not CorsOrigin.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="cors_origin.").exists()


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"origin": ""},
        {"origin": ["https://a.example"]},
        {"origin": "https://a.example", "description": "x" * 201},
        {"origin": "https://a.example", "description": "tab\there"},
        {"origin": "https://" + "a" * 400 + ".example"},
    ],
)
def test_malformed_input_is_a_400(admin_client: APIClient, payload: dict[str, Any]) -> None:
    response = admin_client.post("/api/v1/cors-origins/", payload, format="json")

    assert response.status_code == 400, response.content
    assert error(response)["fields"]
    assert not CorsOrigin.objects.exists()


def test_the_same_origin_twice_is_a_conflict(org: Organization, admin_client: APIClient) -> None:
    admin_client.post("/api/v1/cors-origins/", {"origin": "https://a.example"}, format="json")

    again = admin_client.post(
        "/api/v1/cors-origins/", {"origin": "https://A.example:443"}, format="json"
    )

    assert again.status_code == 409
    assert error(again)["code"] == "origin_exists"
    assert CorsOrigin.objects.for_org(org).count() == 1


def test_two_organizations_may_allow_the_same_origin(
    org: Organization, other_org: Organization, token_client: Callable[..., APIClient]
) -> None:
    for tenant in (org, other_org):
        response = token_client(tenant, ["admin"]).post(
            "/api/v1/cors-origins/", {"origin": "https://shared-viewer.example"}, format="json"
        )
        assert response.status_code == 201


def test_the_number_of_origins_is_limited(org: Organization, admin_client: APIClient) -> None:
    actor = Actor.system("tests")
    for i in range(cors.MAX_ORIGINS_PER_ORGANIZATION):
        services.cors_origin_add(org=org, actor=actor, origin=f"https://v{i}.example")

    response = admin_client.post(
        "/api/v1/cors-origins/", {"origin": "https://one-more.example"}, format="json"
    )

    assert response.status_code == 400
    assert error(response)["code"] == "too_many_origins"
    assert CorsOrigin.objects.for_org(org).count() == cors.MAX_ORIGINS_PER_ORGANIZATION


def test_another_organization_cannot_see_or_remove_the_list(
    org: Organization, other_org: Organization, token_client: Callable[..., APIClient]
) -> None:
    row = services.cors_origin_add(
        org=org, actor=Actor.system("tests"), origin="https://ohif.stmary.example"
    )
    other = token_client(other_org, ["admin"])

    assert other.get("/api/v1/cors-origins/").json()["results"] == []
    assert other.get(f"/api/v1/cors-origins/{row.pk}/").status_code == 404
    assert other.delete(f"/api/v1/cors-origins/{row.pk}/").status_code == 404
    assert other.get(f"/api/v1/o/{org.slug}/cors-origins/").status_code == 404
    assert CorsOrigin.objects.filter(pk=row.pk).exists()


def test_schema_documents_the_endpoints(api_client: APIClient, db: Any) -> None:
    paths = api_client.get("/api/schema/?format=json").json()["paths"]

    listing = paths["/api/v1/cors-origins/"]
    assert set(listing) >= {"get", "post"}
    assert "409" in listing["post"]["responses"]
    assert "preflight" in listing["post"]["description"].lower()
    assert set(paths["/api/v1/cors-origins/{origin_id}/"]) >= {"get", "delete"}
