"""Thin Celery tasks of the tenancy core: load by id, call one service, safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from tenants import webhooks
from tenants.models import WebhookDelivery

SWEEP_BATCH = 500


@shared_task(ignore_result=True)
def webhook_deliver(org_id: int, delivery_id: int) -> None:
    delivery = webhooks.delivery_attempt(org_id=org_id, delivery_id=delivery_id)
    if delivery is not None and delivery.state == WebhookDelivery.State.PENDING:
        delay = max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds())
        webhook_deliver.apply_async((org_id, delivery_id), countdown=delay)


@shared_task(ignore_result=True)
def webhook_sweep() -> int:
    """Beat job: re-queue due deliveries whose task was lost (broker restart, killed worker).

    Bounded: at most SWEEP_BATCH per run; the next run takes the rest.
    """
    due = list(
        WebhookDelivery.objects.filter(
            state__in=[WebhookDelivery.State.PENDING, WebhookDelivery.State.SENDING],
            next_attempt_at__lte=timezone.now() - webhooks.SENDING_LEASE,
        ).values_list("organization_id", "id")[:SWEEP_BATCH]
    )
    for org_id, delivery_id in due:
        webhook_deliver.delay(org_id, delivery_id)
    return len(due)
