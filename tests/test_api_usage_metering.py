from __future__ import annotations

import pytest

from billing.models import UsageEvent

pytestmark = pytest.mark.django_db


def test_each_api_request_is_metered_for_the_tokens_organization(org, other_org, token_client):
    client = token_client(org)
    for _ in range(3):
        assert client.get("/api/v1/organization/").status_code == 200
    assert UsageEvent.objects.for_org(org).filter(meter="api.requests").count() == 3
    assert not UsageEvent.objects.for_org(other_org).exists()


def test_rejected_and_unscoped_requests_are_not_metered(org, api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer strata_deadbeef_nope")
    assert api_client.get("/api/v1/organization/").status_code == 401
    assert client_get_health(api_client) == 200
    assert not UsageEvent.objects.exists()


def client_get_health(client) -> int:
    return client.get("/healthz").status_code
