"""Webhook delivery: the event catalog, URL safety, signing and one delivery attempt.

Signature: header ``Strata-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` where the HMAC key is
the endpoint secret and the message is ``"<t>.<raw body>"``. A receiver recomputes it, compares in
constant time, and rejects timestamps older than a few minutes (replay protection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tenants.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tenants.netguard import AddressRefused, guarded_session, url_check

logger = logging.getLogger(__name__)

# Every event type any app emits. Later capabilities emit through ``webhook_event_emit``.
EVENT_TYPES: dict[str, str] = {
    "webhook.test": "A test event sent from the portal or the API.",
    "ingest.completed": "A study finished ingesting and settled.",
    "invoice.finalized": "A monthly invoice was finalized.",
    "budget.threshold": "Spend crossed a budget threshold.",
    "restore.ready": "An archived study was restored and is readable.",
    "reconcile.differences": "The consistency check found index, ledger and stores disagreeing.",
}

SIGNATURE_HEADER = "Strata-Signature"
# A delivery stuck in "sending" longer than this is assumed lost with its worker and retried.
SENDING_LEASE = timedelta(minutes=5)
# Of a receiver's answer only this much is read and kept (the tenant sees it in the delivery log).
EXCERPT_CHARS = 500


class UnsafeURL(AddressRefused):
    pass


def url_check_safe(url: str) -> None:
    """Refuse URLs that would make the platform call into private networks (SSRF).

    Checked when an endpoint is saved, for a clear answer to the tenant. What protects the
    platform is the delivery itself: its connection resolves the host once, checks every address
    and connects to the checked one (``tenants.netguard``), so DNS that changes in between (or
    answers differently the second time) cannot point a delivery inside the network.
    """
    try:
        url_check(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES)
    except AddressRefused as exc:
        if exc.address:
            raise UnsafeURL(
                f"The host {exc.host} resolves to {exc.address} ({exc.kind}), a private, "
                "loopback or link-local address; webhooks must point at a public address."
            ) from None
        raise UnsafeURL(str(exc)) from None


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    *, secret: str, header: str, body: bytes, tolerance_seconds: int = 300, now: int | None = None
) -> bool:
    """What a receiver does; shipped here for the documentation and the tests."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or int(time.time())) - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret=secret, timestamp=timestamp, body=body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _excerpt(response: requests.Response) -> str:
    """The start of the answer, read up to what is kept (a receiver may answer gigabytes)."""
    raw = response.raw.read(EXCERPT_CHARS * 4, decode_content=True) or b""
    return raw.decode(response.encoding or "utf-8", errors="replace")[:EXCERPT_CHARS]


def backoff_seconds(attempt_number: int) -> int:
    """Exponential backoff after the n-th failed attempt: base * 2^(n-1), capped at 6 hours."""
    return int(min(settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt_number - 1), 6 * 3600))


def delivery_claim(*, org_id: int, delivery_id: int) -> WebhookDelivery | None:
    """Claim a due delivery for one attempt with a conditional UPDATE; None if someone else has it."""
    now = timezone.now()
    claimed = (
        WebhookDelivery.objects.filter(
            pk=delivery_id, organization_id=org_id, next_attempt_at__lte=now
        )
        .filter(state=WebhookDelivery.State.PENDING)
        .update(state=WebhookDelivery.State.SENDING, claimed_at=now)
    )
    if not claimed:
        # A sender that died mid-attempt leaves "sending" behind; take it over after the lease.
        claimed = WebhookDelivery.objects.filter(
            pk=delivery_id,
            organization_id=org_id,
            state=WebhookDelivery.State.SENDING,
            claimed_at__lt=now - SENDING_LEASE,
        ).update(claimed_at=now)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint", "event").get(pk=delivery_id)


def delivery_attempt(*, org_id: int, delivery_id: int) -> WebhookDelivery | None:
    """Make one attempt at a delivery and record it. Returns the delivery, or None if not claimable.

    The HTTP call happens outside any database transaction.
    """
    delivery = delivery_claim(org_id=org_id, delivery_id=delivery_id)
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    event = delivery.event
    body = json.dumps(
        {
            "id": str(event.id),
            "type": event.type,
            "created_at": event.created_at.isoformat(),
            "organization": endpoint.organization.slug,
            "data": event.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    number = delivery.attempt_count + 1
    status_code: int | None = None
    error = ""
    excerpt = ""
    started = time.monotonic()
    try:
        # The URL's form only; the connection resolves and checks the address it connects to.
        url_check(endpoint.url, allow_private=True, lookup=False)
        with guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session:
            response = session.post(
                endpoint.url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "Strata-Webhooks/1.0",
                    SIGNATURE_HEADER: sign(
                        secret=endpoint.secret, timestamp=int(time.time()), body=body
                    ),
                    "Strata-Event": event.type,
                    "Strata-Delivery": str(delivery.pk),
                    "Strata-Event-Id": str(event.id),
                },
                timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                # A redirect would be a request the tenant aims anywhere; a receiver answers.
                allow_redirects=False,
                stream=True,
            )
            with response:
                status_code = response.status_code
                excerpt = _excerpt(response)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except AddressRefused as exc:
        error = str(exc)[:500]
    except requests.Timeout:
        error = f"Timed out after {settings.WEBHOOK_TIMEOUT_SECONDS}s"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    latency_ms = int((time.monotonic() - started) * 1000)
    succeeded = not error
    with transaction.atomic():
        WebhookAttempt.objects.create(
            organization_id=org_id,
            delivery=delivery,
            number=number,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
            response_excerpt=excerpt,
        )
        delivery.attempt_count = number
        if succeeded:
            delivery.state = WebhookDelivery.State.SUCCEEDED
            WebhookEndpoint.objects.filter(pk=endpoint.pk).exclude(
                state=WebhookEndpoint.State.DISABLED
            ).update(consecutive_failures=0, state=WebhookEndpoint.State.HEALTHY)
        elif number >= settings.WEBHOOK_MAX_ATTEMPTS:
            delivery.state = WebhookDelivery.State.FAILED
        else:
            delivery.state = WebhookDelivery.State.PENDING
            delivery.next_attempt_at = timezone.now() + timedelta(seconds=backoff_seconds(number))
        if not succeeded:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=F("consecutive_failures") + 1
            )
            WebhookEndpoint.objects.filter(
                pk=endpoint.pk,
                state=WebhookEndpoint.State.HEALTHY,
                consecutive_failures__gte=settings.WEBHOOK_FAILING_AFTER,
            ).update(state=WebhookEndpoint.State.FAILING)
        delivery.claimed_at = None
        delivery.save(update_fields=["attempt_count", "state", "next_attempt_at", "claimed_at"])
    if not succeeded:
        logger.info("webhook delivery %s attempt %s failed: %s", delivery.pk, number, error)
    return delivery
