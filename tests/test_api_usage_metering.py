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


def close(response) -> None:
    """Close a response as the WSGI server does, keeping the test's database connection (as
    Django's test client does)."""
    from django.core.signals import request_finished
    from django.db import close_old_connections

    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_the_request_is_metered_when_its_answer_has_been_sent(rf, org):
    """The event is written when the server closes the response, not while the client waits."""
    from django.http import HttpResponse, StreamingHttpResponse

    from saas.middleware import ApiUsageMiddleware

    def view(request):
        request.strata_org = org
        return HttpResponse(b"answer")

    response = ApiUsageMiddleware(view)(rf.get("/api/v1/organization/"))
    assert not UsageEvent.objects.for_org(org).exists()
    close(response)
    event = UsageEvent.objects.for_org(org).get(meter="api.requests")
    assert event.quantity == 1

    def streaming(request):
        request.strata_org = org
        return StreamingHttpResponse(iter([b"a", b"b"]))

    response = ApiUsageMiddleware(streaming)(rf.get("/dicomweb/studies"))
    assert b"".join(response) == b"ab"
    assert UsageEvent.objects.for_org(org).count() == 1
    close(response)
    assert UsageEvent.objects.for_org(org).count() == 2


def test_a_meter_write_that_fails_is_logged_and_the_answer_stands(rf, org, monkeypatch, caplog):
    from django.http import HttpResponse

    from saas import middleware

    def broken(**kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(middleware, "record_usage", broken)

    def view(request):
        request.strata_org = org
        return HttpResponse(b"answer")

    response = middleware.ApiUsageMiddleware(view)(rf.get("/api/v1/organization/"))
    close(response)
    assert response.content == b"answer"
    assert "could not be metered" in caplog.text
