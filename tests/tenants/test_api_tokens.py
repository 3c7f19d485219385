"""API tokens through the API: the secret is shown once, works, and stops working when revoked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Scope
from tests.tenants.test_api_support import bearer_client, error, session_client

TOKEN_FIELDS = {
    "id",
    "name",
    "prefix",
    "scopes",
    "state",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "created_by",
}


def test_token_lifecycle_secret_shown_once_works_then_revoked(
    org: Organization, owner: Membership
) -> None:
    client = session_client(owner.user)
    base = f"/api/v1/o/{org.slug}/tokens/"

    created = client.post(
        base, {"name": "PACS gateway", "scopes": ["dicom:read", "admin"]}, format="json"
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == TOKEN_FIELDS | {"secret"}
    secret = body["secret"]
    assert secret.startswith(f"strata_{body['prefix']}_")
    assert body["scopes"] == ["admin", "dicom:read"]
    assert body["state"] == "active"
    assert body["created_by"] == "owner@stmary.example"
    assert body["last_used_at"] is None

    detail = client.get(f"{base}{body['id']}/")
    listed = client.get(base)
    assert set(detail.json()) == TOKEN_FIELDS
    assert secret not in detail.content.decode()
    assert secret not in listed.content.decode()
    assert all("secret" not in item for item in listed.json()["results"])

    used = bearer_client(secret).get("/api/v1/organization/")
    assert used.status_code == 200
    assert used.json()["slug"] == org.slug
    assert client.get(f"{base}{body['id']}/").json()["last_used_at"] is not None

    revoked = client.delete(f"{base}{body['id']}/")
    assert revoked.status_code == 204
    assert client.get(f"{base}{body['id']}/").json()["state"] == "revoked"

    refused = bearer_client(secret).get("/api/v1/organization/")
    assert refused.status_code == 401
    assert error(refused)["code"] == "token_revoked"


def test_token_created_by_a_token_is_audited_with_the_acting_token(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    admin, secret = make_token(org, [Scope.ADMIN], name="automation")
    client = bearer_client(secret)

    created = client.post(
        "/api/v1/tokens/", {"name": "viewer", "scopes": ["dicom:read"]}, format="json"
    )
    revoked = client.delete(f"/api/v1/tokens/{created.json()['id']}/")

    assert created.status_code == 201
    assert created.json()["created_by"] is None
    assert revoked.status_code == 204
    for action in ("token.created", "token.revoked"):
        event = AuditEvent.objects.for_org(org).get(
            action=action, target_id=str(created.json()["id"])
        )
        assert event.actor_token_id == admin.pk
        assert event.actor_user_id is None
        assert event.actor_label == f"token:automation ({admin.prefix})"


def test_token_with_expiry_reports_it_and_is_refused_after_it(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    _, admin_secret = make_token(org, [Scope.ADMIN])
    expires_at = timezone.now() + timedelta(days=30)

    created = bearer_client(admin_secret).post(
        "/api/v1/tokens/",
        {"name": "temporary", "scopes": ["usage:read"], "expires_at": expires_at.isoformat()},
        format="json",
    )
    assert created.status_code == 201
    token = ApiToken.objects.get(pk=created.json()["id"])
    assert token.expires_at == expires_at
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    response = bearer_client(created.json()["secret"]).get("/api/v1/organization/")

    assert response.status_code == 401
    assert error(response)["code"] == "token_expired"
    detail = bearer_client(admin_secret).get(f"/api/v1/tokens/{token.pk}/")
    assert detail.json()["state"] == "expired"


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"name", "scopes"}),
        ({"name": "", "scopes": []}, {"name", "scopes"}),
        ({"name": "x" * 101, "scopes": ["dicom:read"]}, {"name"}),
        ({"name": "ci", "scopes": ["root"]}, {"scopes"}),
        ({"name": "ci", "scopes": "admin"}, {"scopes"}),
        ({"name": "ci", "scopes": ["admin"], "expires_at": "next tuesday"}, {"expires_at"}),
        ({"name": "ci", "scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
    ],
    ids=[
        "missing",
        "empty",
        "long-name",
        "unknown-scope",
        "scopes-not-a-list",
        "bad-date",
        "past-expiry",
    ],
)
def test_invalid_token_input_gets_400_with_field_errors_and_creates_nothing(
    org: Organization, owner: Membership, payload: dict[str, Any], fields: set[str]
) -> None:
    client = session_client(owner.user)
    tokens_before = ApiToken.objects.count()
    events_before = AuditEvent.objects.count()

    response = client.post(f"/api/v1/o/{org.slug}/tokens/", payload, format="json")

    assert response.status_code == 400, response.content
    body = error(response)
    assert body["code"] == "invalid"
    assert set(body["fields"]) == fields
    assert ApiToken.objects.count() == tokens_before
    assert AuditEvent.objects.count() == events_before


def test_token_list_is_newest_first_with_revoked_tokens_included(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    old, _ = make_token(org, name="old")
    ApiToken.objects.filter(pk=old.pk).update(revoked_at=timezone.now())
    _, secret = make_token(org, [Scope.ADMIN], name="new")

    results = bearer_client(secret).get("/api/v1/tokens/").json()["results"]

    assert [(t["name"], t["state"]) for t in results] == [("new", "active"), ("old", "revoked")]


def test_revoking_a_revoked_token_is_harmless(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    victim, _ = make_token(org, name="victim")
    _, secret = make_token(org, [Scope.ADMIN])
    client = bearer_client(secret)

    assert client.delete(f"/api/v1/tokens/{victim.pk}/").status_code == 204
    assert client.delete(f"/api/v1/tokens/{victim.pk}/").status_code == 204
    assert AuditEvent.objects.for_org(org).filter(action="token.revoked").count() == 1
