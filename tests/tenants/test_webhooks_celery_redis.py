"""Webhook delivery through a real broker: Redis, and a Celery worker consuming the webhooks queue."""

from __future__ import annotations

import time

import pytest
from celery.contrib.testing.worker import start_worker

from saas.celery import app
from tenants.context import Actor
from tenants.models import WebhookDelivery
from tenants.services import webhook_endpoint_create, webhook_event_emit
from tenants.webhooks import verify


def _reset_connections() -> None:
    """Drop pooled broker connections so the next use connects to the current broker_url."""
    if app._pool is not None:  # type: ignore[attr-defined]
        app._pool.force_close_all()  # type: ignore[attr-defined]
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_event_is_delivered_by_a_worker_through_redis(org, receiver, redis_url):
    saved = {"broker_url": app.conf.broker_url, "task_always_eager": app.conf.task_always_eager}
    app.conf.update(broker_url=redis_url, task_always_eager=False)
    _reset_connections()
    endpoint = webhook_endpoint_create(org=org, url=receiver.url, actor=Actor.system())
    try:
        with start_worker(
            app, queues=["webhooks"], perform_ping_check=False, pool="solo", loglevel="WARNING"
        ):
            webhook_event_emit(org=org, event_type="webhook.test", payload={"via": "redis"})
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not receiver.requests:
                time.sleep(0.1)
    finally:
        app.conf.update(**saved)
        _reset_connections()
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert verify(
        secret=endpoint.secret, header=request["headers"]["strata-signature"], body=request["body"]
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if WebhookDelivery.objects.get().state == WebhookDelivery.State.SUCCEEDED:
            break
        time.sleep(0.1)
    assert WebhookDelivery.objects.get().state == WebhookDelivery.State.SUCCEEDED
