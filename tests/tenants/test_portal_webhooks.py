"""Webhooks pages: create, edit, enable/disable, rotate, delete, and the test-event button."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization, WebhookDelivery, WebhookEndpoint
from tenants.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import Receiver


@pytest.fixture
def client(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


@pytest.fixture
def endpoint(org: Organization) -> WebhookEndpoint:
    return services.webhook_endpoint_create(
        org=org,
        url="https://hooks.example.com/strata",
        description="EHR bridge",
        event_types=["ingest.completed"],
        actor=Actor.system("tests"),
    )


def detail_url(org: Organization, endpoint: WebhookEndpoint) -> str:
    return reverse("portal-webhook-detail", args=[org.slug, endpoint.pk])


def test_list_shows_endpoints_with_state_and_failures(
    client: Client, org: Organization, endpoint: WebhookEndpoint
) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(state="failing", consecutive_failures=4)
    content = client.get(reverse("portal-webhooks", args=[org.slug])).content.decode()
    assert "https://hooks.example.com/strata" in content
    assert '<span class="badge badge-failing">Failing</span>' in content
    assert '<td class="num">4</td>' in content
    assert "ingest.completed" in content


def test_create_endpoint(client: Client, org: Organization, owner: Membership) -> None:
    response = client.post(
        reverse("portal-webhook-create", args=[org.slug]),
        {
            "url": "https://hooks.example.com/new",
            "description": "Finance",
            "event_types": ["invoice.finalized", "budget.threshold"],
        },
    )
    endpoint = WebhookEndpoint.objects.for_org(org).get()
    assert response.status_code == 302
    assert response["Location"] == detail_url(org, endpoint)
    assert endpoint.url == "https://hooks.example.com/new"
    assert endpoint.description == "Finance"
    assert endpoint.event_types == ["budget.threshold", "invoice.finalized"]
    assert endpoint.secret.startswith("whsec_")
    event = AuditEvent.objects.for_org(org).get(action="webhook.created")
    assert event.actor_user == owner.user


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"url": ""}, "url", "This field is required."),
        ({"url": "not a url"}, "url", "Enter a valid URL."),
        ({"url": "ftp://files.example.com/x"}, "url", "Enter an http:// or https:// URL"),
        (
            {"url": "https://hooks.example.com/x", "event_types": ["nope"]},
            "event_types",
            "Select a valid choice.",
        ),
        (
            {"url": "https://hooks.example.com/x", "description": "d" * 201},
            "description",
            "at most 200 characters",
        ),
    ],
)
def test_invalid_endpoint_is_a_400_and_saves_nothing(
    data: dict[str, Any], field: str, message: str, client: Client, org: Organization
) -> None:
    response = client.post(reverse("portal-webhook-create", args=[org.slug]), data)
    assert response.status_code == 400
    content = response.content.decode()
    assert f'id="id_{field}_error"' in content
    assert message in content
    assert not WebhookEndpoint.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


@override_settings(WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False)
def test_private_address_is_refused_with_the_services_reason(
    client: Client, org: Organization
) -> None:
    response = client.post(
        reverse("portal-webhook-create", args=[org.slug]), {"url": "http://127.0.0.1:8080/hook"}
    )
    assert response.status_code == 400
    assert "private, loopback or link-local" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_detail_shows_secret_behind_reveal_and_no_cache(
    client: Client, org: Organization, endpoint: WebhookEndpoint
) -> None:
    response = client.get(detail_url(org, endpoint))
    content = response.content.decode()
    assert "<summary>Reveal signing secret</summary>" in content
    assert endpoint.secret in content
    assert "no-store" in response["Cache-Control"]
    assert "No deliveries yet" in content


def test_edit_endpoint(client: Client, org: Organization, endpoint: WebhookEndpoint) -> None:
    url = reverse("portal-webhook-edit", args=[org.slug, endpoint.pk])
    form = client.get(url).content.decode()
    assert 'value="https://hooks.example.com/strata"' in form
    assert 'value="ingest.completed" id="id_event_types_1" checked' in form

    response = client.post(
        url,
        {"url": "https://hooks.example.com/v2", "description": "EHR bridge v2", "event_types": []},
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.example.com/v2"
    assert endpoint.description == "EHR bridge v2"
    assert endpoint.event_types == []
    event = AuditEvent.objects.for_org(org).get(action="webhook.updated")
    assert event.details["url"] == {
        "from": "https://hooks.example.com/strata",
        "to": "https://hooks.example.com/v2",
    }


def test_invalid_edit_is_a_400_and_changes_nothing(
    client: Client, org: Organization, endpoint: WebhookEndpoint
) -> None:
    url = reverse("portal-webhook-edit", args=[org.slug, endpoint.pk])
    response = client.post(url, {"url": "gopher://old.example.com/", "description": "changed"})
    assert response.status_code == 400
    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.example.com/strata"
    assert endpoint.description == "EHR bridge"
    assert not AuditEvent.objects.filter(action="webhook.updated").exists()


def test_disable_and_enable(client: Client, org: Organization, endpoint: WebhookEndpoint) -> None:
    url = reverse("portal-webhook-toggle", args=[org.slug, endpoint.pk])
    response = client.post(url, {"enabled": "0"}, follow=True)
    assert "Webhook endpoint disabled" in response.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.state == WebhookEndpoint.State.DISABLED
    assert '<input type="hidden" name="enabled" value="1">' in response.content.decode()

    client.post(url, {"enabled": "1"})
    endpoint.refresh_from_db()
    assert endpoint.state == WebhookEndpoint.State.HEALTHY
    changes = [
        e.details["state"] for e in AuditEvent.objects.for_org(org).filter(action="webhook.updated")
    ]
    assert {"from": "healthy", "to": "disabled"} in changes
    assert {"from": "disabled", "to": "healthy"} in changes


def test_rotate_secret(client: Client, org: Organization, endpoint: WebhookEndpoint) -> None:
    old = endpoint.secret
    response = client.post(
        reverse("portal-webhook-rotate", args=[org.slug, endpoint.pk]), follow=True
    )
    endpoint.refresh_from_db()
    assert endpoint.secret != old
    content = response.content.decode()
    assert "Signing secret rotated" in content
    assert endpoint.secret in content
    assert old not in content
    assert AuditEvent.objects.for_org(org).filter(action="webhook.secret_rotated").count() == 1


def test_delete_asks_then_deletes(
    client: Client, org: Organization, endpoint: WebhookEndpoint
) -> None:
    url = reverse("portal-webhook-delete", args=[org.slug, endpoint.pk])
    assert "Delete this endpoint?" in client.get(url).content.decode()
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("portal-webhooks", args=[org.slug])
    assert not WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()
    assert AuditEvent.objects.for_org(org).filter(action="webhook.deleted").count() == 1


def test_send_test_event_delivers_to_the_receiver(
    client: Client,
    org: Organization,
    owner: Membership,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    endpoint = services.webhook_endpoint_create(
        org=org, url=receiver.url, actor=Actor.system("tests")
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("portal-webhook-test", args=[org.slug, endpoint.pk]))
    assert response.status_code == 302
    assert response["Location"] == detail_url(org, endpoint)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    body = json.loads(request["body"])
    assert body["type"] == "webhook.test"
    assert body["organization"] == org.slug
    assert request["headers"]["strata-event"] == "webhook.test"
    assert verify(
        secret=endpoint.secret,
        header=request["headers"][SIGNATURE_HEADER.lower()],
        body=request["body"],
    )

    delivery = WebhookDelivery.objects.for_org(org).get(endpoint=endpoint)
    assert delivery.state == WebhookDelivery.State.SUCCEEDED
    event = AuditEvent.objects.for_org(org).get(action="webhook.test_sent")
    assert event.actor_user == owner.user

    content = client.get(detail_url(org, endpoint)).content.decode()
    assert "webhook.test" in content
    assert '<span class="status status-ok">200</span>' in content
    assert "badge-succeeded" in content


def test_failed_attempts_show_status_and_error(
    client: Client,
    org: Organization,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver.status = 503
    endpoint = services.webhook_endpoint_create(
        org=org, url=receiver.url, actor=Actor.system("tests")
    )
    with (
        override_settings(WEBHOOK_MAX_ATTEMPTS=2),
        django_capture_on_commit_callbacks(execute=True),
    ):
        client.post(reverse("portal-webhook-test", args=[org.slug, endpoint.pk]))
    assert len(receiver.requests) == 2
    content = client.get(detail_url(org, endpoint)).content.decode()
    assert content.count('<span class="status status-bad">503</span>') == 2
    assert "HTTP 503" in content
    assert "badge-failed" in content
    assert "#1" in content and "#2" in content
