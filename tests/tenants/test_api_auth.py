"""Authentication at the API's door: bad, revoked, expired and suspended tokens; throttling."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.throttling import TokenRateThrottle
from tests.tenants.test_api_support import bearer_client, error, session_client


def test_anonymous_request_gets_401_with_bearer_challenge(org: Organization) -> None:
    response = APIClient().get("/api/v1/organization/")

    assert response.status_code == 401
    assert error(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer not-a-strata-token", "token_malformed"),
        ("Bearer strata_short_x", "token_malformed"),
        ("Bearer strata_abc def", "token_malformed"),
        ("Bearer strata_0123abcd_wrong-secret", "token_unknown"),
    ],
    ids=["garbage", "bad-prefix", "extra-part", "unknown"],
)
def test_malformed_or_unknown_token_gets_401_and_is_audited(
    org: Organization, header: str, code: str
) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/organization/", HTTP_USER_AGENT="scanner/1.0")

    assert response.status_code == 401
    assert error(response)["code"] == code
    event = AuditEvent.objects.get(action="auth.token_rejected")
    assert event.organization is None
    assert event.details == {"reason": code, "path": "/api/v1/organization/"}
    assert event.actor_label == "anonymous token"
    assert event.user_agent == "scanner/1.0"


def test_wrong_secret_for_a_real_prefix_gets_401(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, secret = make_token(org)
    forged = secret[:-1] + ("y" if secret[-1] != "y" else "z")

    response = bearer_client(forged).get("/api/v1/organization/")

    assert response.status_code == 401
    assert error(response)["code"] == "token_unknown"
    ApiToken.objects.get(pk=token.pk, last_used_at__isnull=True)


def test_revoked_token_gets_401_token_revoked(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, secret = make_token(org)
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())

    response = bearer_client(secret).get("/api/v1/organization/")

    assert response.status_code == 401
    assert error(response)["code"] == "token_revoked"
    event = AuditEvent.objects.for_org(org).get(action="auth.token_rejected")
    assert event.target_id == str(token.pk)
    assert event.details["reason"] == "token_revoked"


def test_expired_token_gets_401_token_expired(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, secret = make_token(org, expires_at=timezone.now() + timedelta(days=1))
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = bearer_client(secret).get("/api/v1/organization/")

    assert response.status_code == 401
    assert error(response)["code"] == "token_expired"
    assert (
        AuditEvent.objects.for_org(org).get(action="auth.token_rejected").details["reason"]
        == "token_expired"
    )


@pytest.mark.parametrize("status", [Organization.Status.SUSPENDED, Organization.Status.CLOSED])
def test_inactive_organizations_token_gets_403_and_is_audited(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], status: str
) -> None:
    token, secret = make_token(org)
    Organization.objects.filter(pk=org.pk).update(status=status)

    response = bearer_client(secret).get("/api/v1/members/")

    assert response.status_code == 403
    body = error(response)
    assert body["code"] == "organization_inactive"
    assert status in body["message"]
    event = AuditEvent.objects.for_org(org).get(action="auth.token_rejected")
    assert event.details["reason"] == "organization_inactive"
    assert event.actor_label == f"token:{token.name} ({token.prefix})"


def test_inactive_organizations_member_session_gets_403(
    org: Organization, owner: Membership
) -> None:
    Organization.objects.filter(pk=org.pk).update(status=Organization.Status.SUSPENDED)

    response = session_client(owner.user).get(f"/api/v1/o/{org.slug}/organization/")

    assert response.status_code == 403
    assert error(response)["code"] == "organization_inactive"


@pytest.fixture
def low_throttle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # DRF reads the rates once at import; patch the class attribute the throttle consults.
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/min"})
    cache.clear()
    yield
    cache.clear()


def test_token_over_its_rate_gets_429_with_json_error(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], low_throttle: None
) -> None:
    _, secret = make_token(org)
    client = bearer_client(secret)

    statuses = [client.get("/api/v1/organization/").status_code for _ in range(3)]
    response = client.get("/api/v1/organization/")

    assert statuses == [200, 200, 200]
    assert response.status_code == 429
    body = error(response)
    assert body["code"] == "throttled"
    assert "retry" in body["message"].lower()
    assert int(response["Retry-After"]) > 0


def test_throttle_counts_each_token_separately(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], low_throttle: None
) -> None:
    _, busy = make_token(org, name="busy")
    _, quiet = make_token(org, name="quiet")
    for _ in range(4):
        bearer_client(busy).get("/api/v1/organization/")

    response = bearer_client(quiet).get("/api/v1/organization/")

    assert response.status_code == 200
