"""Webhooks and SSRF: every form of an internal host is refused with the field named, and a
delivery connects only to the address it checked (DNS rebinding reaches nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.context import Actor
from tenants.models import Organization, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tenants.services import webhook_endpoint_create, webhook_send_test
from tests.tenants.netguard_support import (
    PUBLIC,
    REFUSED_HOSTS,
    REFUSED_IDS,
    CountingServer,
    Rebinding,
    loopback_server_running,
)
from tests.tenants.test_api_support import error

pytestmark = pytest.mark.django_db


@pytest.fixture
def loopback_server() -> Iterator[CountingServer]:
    yield from loopback_server_running()


@pytest.mark.parametrize(("host", "label"), REFUSED_HOSTS, ids=REFUSED_IDS)
def test_webhook_to_an_internal_host_in_any_form_answers_400_naming_the_url(
    org: Organization, token_client: Any, settings: Any, host: str, label: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    client: APIClient = token_client(org)

    response = client.post("/api/v1/webhooks/", {"url": f"http://{host}/hook"}, format="json")

    assert response.status_code == 400, response.content
    assert set(error(response)["fields"]) == {"url"}
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("answer", ["::ffff:127.0.0.1", "100.100.100.200", "2002:a9fe:a9fe::"])
def test_webhook_to_a_name_resolving_inside_is_refused_with_the_address(
    org: Organization,
    token_client: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    Rebinding(monkeypatch, honest=0, then=answer)

    response = token_client(org).post(
        "/api/v1/webhooks/", {"url": "https://hooks.attacker.example/x"}, format="json"
    )

    assert response.status_code == 400
    message = error(response)["fields"]["url"][0]
    assert "hooks.attacker.example" in message and "private" in message


@pytest.mark.parametrize("honest_lookups", [1, 2, 3])
def test_dns_rebinding_never_reaches_loopback_and_stores_no_answer(
    org: Organization,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    loopback_server: CountingServer,
    django_capture_on_commit_callbacks: Any,
    honest_lookups: int,
) -> None:
    """The name answers a public address to the first lookups (the check when saved, and any
    later check), then 127.0.0.1. Whichever lookup the connection makes, it connects to the
    address that lookup answered and checked: never to the loopback server."""
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    dns = Rebinding(monkeypatch, honest=honest_lookups)
    endpoint = webhook_endpoint_create(
        org=org, url=f"http://rebind.example:{loopback_server.port}/hook", actor=Actor.system()
    )

    with django_capture_on_commit_callbacks(execute=True):
        webhook_send_test(org=org, endpoint=endpoint, actor=Actor.system())

    assert loopback_server.requests == []
    assert set(dns.connects) <= {PUBLIC}
    attempt = WebhookAttempt.objects.for_org(org).get()
    assert attempt.status_code is None
    assert attempt.response_excerpt == ""
    assert attempt.error
    if len(dns.lookups) > honest_lookups:  # the connection's lookup answered loopback
        assert "resolves to 127.0.0.1 (loopback)" in attempt.error
    assert WebhookDelivery.objects.get().state == WebhookDelivery.State.FAILED


def test_a_delivery_resolves_the_host_once(
    org: Organization,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    loopback_server: CountingServer,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True  # a local receiver, as in the other tests
    endpoint = webhook_endpoint_create(
        org=org, url=f"http://hooks.hospital.example:{loopback_server.port}/h", actor=Actor.system()
    )
    dns = Rebinding(monkeypatch, honest=0)

    with django_capture_on_commit_callbacks(execute=True):
        webhook_send_test(org=org, endpoint=endpoint, actor=Actor.system())

    assert dns.lookups == ["hooks.hospital.example"]
    assert dns.connects == ["127.0.0.1"]
    assert [r[2] for r in loopback_server.requests] == [
        f"hooks.hospital.example:{loopback_server.port}"
    ]
    attempt = WebhookAttempt.objects.for_org(org).get()
    assert attempt.status_code == 200
    assert attempt.response_excerpt == CountingServer.BODY.decode()


def test_a_redirect_is_not_followed(
    org: Organization,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    target = CountingServer()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{target.port}/latest/meta-data")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    redirect = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    Thread(target=redirect.serve_forever, daemon=True).start()
    try:
        endpoint = webhook_endpoint_create(
            org=org,
            url=f"http://127.0.0.1:{redirect.server_address[1]}/hook",
            actor=Actor.system(),
        )
        with django_capture_on_commit_callbacks(execute=True):
            webhook_send_test(org=org, endpoint=endpoint, actor=Actor.system())
    finally:
        redirect.shutdown()
        redirect.server_close()
        target.close()

    assert target.requests == []
    attempt = WebhookAttempt.objects.for_org(org).get()
    assert attempt.status_code == 307
    assert attempt.error == "HTTP 307"
