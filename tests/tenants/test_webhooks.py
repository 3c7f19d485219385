from __future__ import annotations

import json

import pytest

from tenants import webhooks
from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import AuditEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tenants.services import webhook_endpoint_create, webhook_event_emit, webhook_send_test
from tenants.tasks import webhook_deliver, webhook_sweep

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(org, receiver):
    return webhook_endpoint_create(
        org=org, url=receiver.url, actor=Actor.system(), description="EHR"
    )


def test_test_event_is_signed_and_verifiable(
    org, endpoint, receiver, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        event = webhook_send_test(org=org, endpoint=endpoint, actor=Actor.system())
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    body = request["body"]
    assert webhooks.verify(
        secret=endpoint.secret, header=request["headers"]["strata-signature"], body=body
    )
    assert not webhooks.verify(
        secret="whsec_wrong", header=request["headers"]["strata-signature"], body=body
    )
    assert not webhooks.verify(
        secret=endpoint.secret, header=request["headers"]["strata-signature"], body=body + b" "
    )
    payload = json.loads(body)
    assert payload["type"] == "webhook.test"
    assert payload["id"] == str(event.id)
    assert payload["organization"] == org.slug
    attempt = WebhookAttempt.objects.for_org(org).get()
    assert attempt.status_code == 200
    assert attempt.latency_ms >= 0
    assert WebhookDelivery.objects.get().state == WebhookDelivery.State.SUCCEEDED
    assert AuditEvent.objects.for_org(org).filter(action="webhook.test_sent").exists()


def test_signature_rejects_stale_timestamp():
    header = webhooks.sign(secret="s", timestamp=1_000, body=b"{}")
    assert webhooks.verify(secret="s", header=header, body=b"{}", now=1_100)
    assert not webhooks.verify(secret="s", header=header, body=b"{}", now=2_000)
    assert not webhooks.verify(secret="s", header="garbage", body=b"{}")


def test_failing_endpoint_is_retried_then_marked_failing(
    org, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_FAILING_AFTER = 3
    receiver.status = 500
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_emit(org=org, event_type="webhook.test", payload={"n": 1})
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == WebhookDelivery.State.FAILED
    assert delivery.attempt_count == 3
    assert len(receiver.requests) == 3
    assert [a.status_code for a in delivery.attempts.order_by("number")] == [500, 500, 500]
    endpoint.refresh_from_db()
    assert endpoint.state == WebhookEndpoint.State.FAILING
    assert endpoint.consecutive_failures == 3


def test_retry_succeeds_after_transient_failure_and_endpoint_recovers(
    org, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.statuses = [503, 502]
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_emit(org=org, event_type="webhook.test", payload={})
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == WebhookDelivery.State.SUCCEEDED
    assert delivery.attempt_count == 3
    endpoint.refresh_from_db()
    assert endpoint.state == WebhookEndpoint.State.HEALTHY
    assert endpoint.consecutive_failures == 0


def test_timeout_is_recorded_as_failed_attempt(
    org, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.delay = 1.0
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_emit(org=org, event_type="webhook.test", payload={})
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code is None
    assert "Timed out" in attempt.error


def test_backoff_is_exponential(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    assert [webhooks.backoff_seconds(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert webhooks.backoff_seconds(30) == 6 * 3600


def test_emit_does_not_block_on_the_network(org, endpoint, receiver):
    # Outside on_commit execution the caller returns at once with a pending delivery.
    webhook_event_emit(org=org, event_type="webhook.test", payload={})
    assert receiver.requests == []
    assert WebhookDelivery.objects.get().state == WebhookDelivery.State.PENDING


def test_delivery_is_claimed_once(org, endpoint, receiver):
    webhook_event_emit(org=org, event_type="webhook.test", payload={})
    delivery = WebhookDelivery.objects.get()
    webhook_deliver(org.pk, delivery.pk)
    webhook_deliver(org.pk, delivery.pk)  # a duplicate task: nothing left to claim
    assert len(receiver.requests) == 1


def test_delivery_of_other_org_id_is_not_claimed(org, other_org, endpoint, receiver):
    webhook_event_emit(org=org, event_type="webhook.test", payload={})
    delivery = WebhookDelivery.objects.get()
    assert webhooks.delivery_attempt(org_id=other_org.pk, delivery_id=delivery.pk) is None
    assert receiver.requests == []


def test_sweep_requeues_lost_deliveries(org, endpoint, receiver):
    from datetime import timedelta

    from django.utils import timezone

    webhook_event_emit(org=org, event_type="webhook.test", payload={})
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=10))
    assert webhook_sweep() == 1
    assert len(receiver.requests) == 1


def test_endpoint_filters_event_types(org, receiver, django_capture_on_commit_callbacks):
    webhook_endpoint_create(
        org=org, url=receiver.url, actor=Actor.system(), event_types=["invoice.finalized"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_emit(org=org, event_type="restore.ready", payload={})
        webhook_event_emit(org=org, event_type="invoice.finalized", payload={})
    assert [r["headers"]["strata-event"] for r in receiver.requests] == ["invoice.finalized"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_private_or_invalid_urls_are_refused(org, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    with pytest.raises(ValidationFailed) as err:
        webhook_endpoint_create(org=org, url=url, actor=Actor.system())
    assert "url" in err.value.fields
    assert not WebhookEndpoint.objects.exists()


def test_private_address_is_refused_again_at_delivery_time(
    org, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False  # e.g. DNS now points inside the network
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_emit(org=org, event_type="webhook.test", payload={})
    assert receiver.requests == []
    assert "private" in WebhookAttempt.objects.get().error


def test_unknown_event_type_is_refused(org):
    with pytest.raises(ValidationFailed):
        webhook_endpoint_create(
            org=org, url="https://example.com/x", actor=Actor.system(), event_types=["nope"]
        )
    with pytest.raises(ValueError):
        webhook_event_emit(org=org, event_type="nope", payload={})
