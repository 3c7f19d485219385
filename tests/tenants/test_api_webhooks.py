"""Webhooks through the API: create, change, delete, rotate, and a signed test delivery."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings
from rest_framework.test import APIClient

from tenants.models import ApiToken, AuditEvent, Organization, WebhookDelivery, WebhookEndpoint
from tenants.roles import Scope
from tenants.webhooks import EVENT_TYPES, SIGNATURE_HEADER, verify
from tests.conftest import Receiver
from tests.tenants.test_api_support import bearer_client, error

WEBHOOK_FIELDS = {
    "id",
    "url",
    "description",
    "event_types",
    "enabled",
    "state",
    "consecutive_failures",
    "created_at",
}


@pytest.fixture
def admin(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> tuple[ApiToken, APIClient]:
    token, secret = make_token(org, [Scope.ADMIN], name="integrations")
    return token, bearer_client(secret)


def _create(client: APIClient, url: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/v1/webhooks/", {"url": url, **extra}, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_webhook_create_returns_the_secret_which_only_detail_repeats(
    org: Organization, admin: tuple[ApiToken, APIClient]
) -> None:
    token, client = admin

    created = _create(
        client,
        "https://hooks.example.com/strata",
        description="PACS",
        event_types=["ingest.completed"],
    )

    assert set(created) == WEBHOOK_FIELDS | {"secret"}
    assert created["secret"].startswith("whsec_")
    assert (created["enabled"], created["state"], created["event_types"]) == (
        True,
        "healthy",
        ["ingest.completed"],
    )
    listed = client.get("/api/v1/webhooks/").json()["results"]
    assert [set(w) for w in listed] == [WEBHOOK_FIELDS]
    detail = client.get(f"/api/v1/webhooks/{created['id']}/").json()
    assert detail["secret"] == created["secret"]
    event = AuditEvent.objects.for_org(org).get(action="webhook.created")
    assert event.actor_token_id == token.pk
    assert event.details == {"event_types": ["ingest.completed"]}


def test_webhook_to_a_private_address_is_refused_when_not_allowed(
    org: Organization, admin: tuple[ApiToken, APIClient], settings: Settings
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    _, client = admin

    response = client.post(
        "/api/v1/webhooks/", {"url": "http://127.0.0.1:8080/hook"}, format="json"
    )

    assert response.status_code == 400
    body = error(response)
    assert set(body["fields"]) == {"url"}
    assert "127.0.0.1" in body["fields"]["url"][0]
    assert not WebhookEndpoint.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"url"}),
        ({"url": "ftp://files.example.com/"}, {"url"}),
        ({"url": "not a url"}, {"url"}),
        ({"url": "https://hooks.example.com/", "event_types": ["study.deleted"]}, {"event_types"}),
        ({"url": "https://hooks.example.com/", "description": "x" * 201}, {"description"}),
    ],
    ids=["missing", "ftp", "garbage", "unknown-event", "long-description"],
)
def test_invalid_webhook_gets_400_and_creates_nothing(
    org: Organization, admin: tuple[ApiToken, APIClient], payload: dict[str, Any], fields: set[str]
) -> None:
    _, client = admin

    response = client.post("/api/v1/webhooks/", payload, format="json")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == fields
    assert WebhookEndpoint.objects.count() == 0


def test_webhook_update_disables_reenables_and_is_audited(
    org: Organization, admin: tuple[ApiToken, APIClient]
) -> None:
    token, client = admin
    created = _create(client, "https://hooks.example.com/a")
    url = f"/api/v1/webhooks/{created['id']}/"

    disabled = client.patch(
        url, {"enabled": False, "url": "https://hooks.example.com/b"}, format="json"
    )
    enabled = client.patch(url, {"enabled": True}, format="json")

    assert disabled.status_code == 200
    assert (disabled.json()["enabled"], disabled.json()["state"]) == (False, "disabled")
    assert disabled.json()["url"] == "https://hooks.example.com/b"
    assert (enabled.json()["enabled"], enabled.json()["state"]) == (True, "healthy")
    updates = AuditEvent.objects.for_org(org).filter(action="webhook.updated").order_by("id")
    assert [e.details for e in updates] == [
        {
            "url": {"from": "https://hooks.example.com/a", "to": "https://hooks.example.com/b"},
            "state": {"from": "healthy", "to": "disabled"},
        },
        {"state": {"from": "disabled", "to": "healthy"}},
    ]
    assert {e.actor_token_id for e in updates} == {token.pk}


def test_webhook_update_with_invalid_event_type_changes_nothing(
    org: Organization, admin: tuple[ApiToken, APIClient]
) -> None:
    _, client = admin
    created = _create(client, "https://hooks.example.com/a", event_types=["invoice.finalized"])

    response = client.patch(
        f"/api/v1/webhooks/{created['id']}/",
        {"event_types": ["bogus"], "description": "new"},
        format="json",
    )

    assert response.status_code == 400
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    assert (endpoint.event_types, endpoint.description) == (["invoice.finalized"], "")


def test_webhook_delete_is_audited(org: Organization, admin: tuple[ApiToken, APIClient]) -> None:
    token, client = admin
    created = _create(client, "https://hooks.example.com/a")

    response = client.delete(f"/api/v1/webhooks/{created['id']}/")

    assert response.status_code == 204
    assert not WebhookEndpoint.objects.filter(pk=created["id"]).exists()
    assert AuditEvent.objects.for_org(org).get(action="webhook.deleted").actor_token_id == token.pk


def test_rotate_secret_replaces_it_and_is_audited(
    org: Organization, admin: tuple[ApiToken, APIClient]
) -> None:
    token, client = admin
    created = _create(client, "https://hooks.example.com/a")

    response = client.post(f"/api/v1/webhooks/{created['id']}/rotate-secret/")

    assert response.status_code == 200
    assert response.json()["secret"].startswith("whsec_")
    assert response.json()["secret"] != created["secret"]
    assert WebhookEndpoint.objects.get(pk=created["id"]).secret == response.json()["secret"]
    assert (
        AuditEvent.objects.for_org(org).get(action="webhook.secret_rotated").actor_token_id
        == token.pk
    )


def test_test_event_is_delivered_signed_and_shows_in_deliveries(
    org: Organization,
    admin: tuple[ApiToken, APIClient],
    receiver: Receiver,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    token, client = admin
    created = _create(client, receiver.url)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{created['id']}/test/")

    assert response.status_code == 202
    event_id = response.json()["event_id"]
    [request] = receiver.requests
    assert request["path"] == "/hooks/strata"
    assert verify(
        secret=created["secret"],
        header=request["headers"][SIGNATURE_HEADER.lower()],
        body=request["body"],
    )
    assert not verify(
        secret="whsec_wrong",
        header=request["headers"][SIGNATURE_HEADER.lower()],
        body=request["body"],
    )
    payload = json.loads(request["body"])
    assert (payload["id"], payload["type"], payload["organization"]) == (
        event_id,
        "webhook.test",
        "st-mary",
    )
    assert (
        AuditEvent.objects.for_org(org).get(action="webhook.test_sent").actor_token_id == token.pk
    )

    deliveries = client.get(f"/api/v1/webhooks/{created['id']}/deliveries/").json()["results"]
    [delivery] = deliveries
    assert (delivery["event_id"], delivery["event_type"], delivery["state"]) == (
        event_id,
        "webhook.test",
        "succeeded",
    )
    assert delivery["attempt_count"] == 1
    [attempt] = delivery["attempts"]
    assert set(attempt) == {"number", "attempted_at", "status_code", "latency_ms", "error"}
    assert (attempt["number"], attempt["status_code"], attempt["error"]) == (1, 200, "")


def test_failed_test_delivery_shows_the_error_attempt(
    org: Organization,
    admin: tuple[ApiToken, APIClient],
    receiver: Receiver,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    settings: Settings,
) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.status = 500
    _, client = admin
    created = _create(client, receiver.url)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/api/v1/webhooks/{created['id']}/test/")

    [delivery] = client.get(f"/api/v1/webhooks/{created['id']}/deliveries/").json()["results"]
    assert delivery["state"] == WebhookDelivery.State.FAILED
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(500, "HTTP 500")]


def test_event_type_catalog_is_listed(org: Organization, admin: tuple[ApiToken, APIClient]) -> None:
    _, client = admin

    response = client.get("/api/v1/webhook-event-types/")

    assert response.status_code == 200
    assert response.json() == [
        {"type": name, "description": text} for name, text in EVENT_TYPES.items()
    ]
