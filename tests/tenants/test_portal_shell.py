"""The portal shell: sign-in and its audit trail, sign-out, password reset, home, dashboard, layout."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.http import HttpRequest
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.context import Actor
from tenants.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    WebhookEndpoint,
)
from tenants.roles import Role
from tests.factories import PASSWORD, UserFactory

LOGIN = "/accounts/login/"


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


# --- sign in, sign out, password reset -------------------------------------------------------


def test_login_page_labels_the_email_field(db: None) -> None:
    content = Client().get(LOGIN).content.decode()
    assert '<label for="id_username">Email</label>' in content
    assert 'autocomplete="username"' in content
    assert '<label for="id_password">Password</label>' in content
    assert reverse("password_reset") in content


@pytest.mark.parametrize(
    "typed", ["owner@stmary.example", "Owner@StMary.EXAMPLE", "  owner@stmary.example "]
)
def test_login_with_email_in_any_case(typed: str, org: Organization, owner: Membership) -> None:
    client = Client()
    response = client.post(LOGIN, {"username": typed, "password": PASSWORD})
    assert response.status_code == 302
    # One organization: home sends the member straight to its dashboard.
    home = client.get(response["Location"])
    assert home.status_code == 302
    assert home["Location"] == reverse("portal-dashboard", args=[org.slug])
    login_event = AuditEvent.objects.for_org(org).get(action="auth.login")
    assert login_event.actor_user == owner.user


def test_login_failure_is_a_400_and_writes_an_audit_event(
    org: Organization, owner: Membership
) -> None:
    response = Client().post(
        LOGIN, {"username": "owner@stmary.example", "password": "wrong-password"}
    )
    assert response.status_code == 400
    content = response.content.decode()
    assert "The email or password is not correct." in content
    assert 'role="alert"' in content
    event = AuditEvent.objects.for_org(org).get(action="auth.login_failed")
    assert event.actor_label == "anonymous (owner@stmary.example)"
    assert event.actor_user is None
    assert event.ip == "127.0.0.1"


def test_login_failure_for_unknown_email_is_a_platform_event(db: None) -> None:
    Client().post(LOGIN, {"username": "nobody@nowhere.example", "password": "x"})
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.organization is None
    assert event.target_label == "nobody@nowhere.example"


def test_logout_is_post_only(owner: Membership) -> None:
    client = client_for(owner)
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert response["Location"] == reverse("login")
    assert client.get(reverse("portal-home")).status_code == 302


def test_password_reset_by_email(org: Organization, owner: Membership) -> None:
    client = Client()
    form = client.get(reverse("password_reset")).content.decode()
    assert '<label for="id_email">Email</label>' in form
    response = client.post(reverse("password_reset"), {"email": "owner@stmary.example"})
    assert response.status_code == 302
    assert "Check your email" in client.get(response["Location"]).content.decode()

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.subject == "Reset your Strata password"
    assert message.to == ["owner@stmary.example"]
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", str(message.body))
    assert link is not None

    confirm = client.get(link.group(1), follow=True)
    assert "Choose a new password" in confirm.content.decode()
    set_password_url = confirm.redirect_chain[-1][0]
    weak = client.post(set_password_url, {"new_password1": "short", "new_password2": "short"})
    assert weak.status_code == 200
    assert 'id="id_new_password2_error"' in weak.content.decode()

    done = client.post(
        set_password_url,
        {"new_password1": "Fresh-Archive-Tier-9", "new_password2": "Fresh-Archive-Tier-9"},
    )
    assert done.status_code == 302
    assert "Your password is set" in client.get(done["Location"]).content.decode()
    assert Client().login(
        request=HttpRequest(), username="owner@stmary.example", password="Fresh-Archive-Tier-9"
    )
    # The link works once.
    assert "This link no longer works" in client.get(link.group(1), follow=True).content.decode()


def test_password_reset_for_unknown_email_looks_the_same(db: None) -> None:
    response = Client().post(reverse("password_reset"), {"email": "nobody@nowhere.example"})
    assert response.status_code == 302
    assert response["Location"] == reverse("password_reset_done")
    assert mail.outbox == []


# --- home and layout -------------------------------------------------------------------------


def test_home_lists_every_organization_of_the_user(
    org: Organization, other_org: Organization, owner: Membership
) -> None:
    Membership.objects.create(user=owner.user, organization=other_org, role=Role.AUDITOR)
    response = client_for(owner).get(reverse("portal-home"))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'href="/o/st-mary/"' in content
    assert 'href="/o/other-clinic/"' in content
    assert "Auditor" in content


def test_home_without_organizations_explains_what_to_do(db: None) -> None:
    user: Any = UserFactory()
    client = Client()
    client.force_login(user)
    content = client.get(reverse("portal-home")).content.decode()
    assert "No organization yet" in content
    assert "invitation" in content


def test_header_has_switcher_email_and_logout_form(
    org: Organization, other_org: Organization, owner: Membership
) -> None:
    Membership.objects.create(user=owner.user, organization=other_org, role=Role.MEMBER)
    content = client_for(owner).get(reverse("portal-dashboard", args=[org.slug])).content.decode()
    assert '<a href="/o/st-mary/" aria-current="true">' in content
    assert '<a href="/o/other-clinic/">' in content
    assert "owner@stmary.example" in content
    assert f'<form method="post" action="{reverse("logout")}">' in content
    assert '<main id="main"' in content
    assert 'href="#main"' in content


def test_unknown_page_uses_the_portal_404(owner: Membership) -> None:
    response = client_for(owner).get("/no/such/page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def test_api_404_stays_json(owner: Membership) -> None:
    response = client_for(owner).get("/api/v1/no-such-endpoint/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_static_assets_are_served(db: None) -> None:
    for path in ("/static/saas/portal.css", "/static/saas/portal.js", "/static/saas/favicon.svg"):
        response = Client().get(path)
        assert response.status_code == 200, path


# --- dashboard -------------------------------------------------------------------------------


@pytest.fixture
def busy_org(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> Organization:
    actor = Actor(user=owner.user)
    make_member(org, Role.ADMIN)
    make_member(org, Role.MEMBER)
    make_member(org, Role.MEMBER)
    services.token_create(org=org, name="active", scopes=["dicom:read"], actor=actor)
    revoked, _ = services.token_create(org=org, name="revoked", scopes=["dicom:read"], actor=actor)
    services.token_revoke(org=org, token=revoked, actor=actor)
    expired, _ = services.token_create(org=org, name="expired", scopes=["dicom:read"], actor=actor)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    services.webhook_endpoint_create(org=org, url="https://a.example.com/h", actor=actor)
    failing = services.webhook_endpoint_create(org=org, url="https://b.example.com/h", actor=actor)
    WebhookEndpoint.objects.filter(pk=failing.pk).update(state="failing", consecutive_failures=5)
    services.invitation_create(
        org=org, email="pending@stmary.example", role=Role.MEMBER, actor=actor
    )
    old, _ = services.invitation_create(
        org=org, email="old@stmary.example", role=Role.MEMBER, actor=actor
    )
    Invitation.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(days=1))
    return org


def test_dashboard_shows_real_numbers(busy_org: Organization, owner: Membership) -> None:
    response = client_for(owner).get(reverse("portal-dashboard", args=[busy_org.slug]))
    assert response.status_code == 200
    context = response.context
    assert {r["value"]: r["count"] for r in context["roles"]} == {
        "owner": 1,
        "admin": 1,
        "billing": 0,
        "auditor": 0,
        "member": 2,
    }
    assert context["member_total"] == 4
    assert context["active_tokens"] == 1
    assert context["endpoint_states"] == {"healthy": 1, "failing": 1, "disabled": 0}
    assert context["pending_count"] == 1
    content = response.content.decode()
    assert "<td>pending@stmary.example</td>" in content
    assert "<td>old@stmary.example</td>" not in content
    assert ">https://b.example.com/h</a>" in content
    assert '<span class="badge badge-failing">Failing</span>' in content
    assert "Recent activity" in content
    assert "token.revoked" in content


@pytest.mark.parametrize(
    "role,sees_audit", [(Role.AUDITOR, True), (Role.MEMBER, False), (Role.BILLING, False)]
)
def test_dashboard_activity_only_with_audit_permission(
    role: str, sees_audit: bool, busy_org: Organization, make_member: Callable[..., Membership]
) -> None:
    response = client_for(make_member(busy_org, role)).get(
        reverse("portal-dashboard", args=[busy_org.slug])
    )
    content = response.content.decode()
    assert ("Recent activity" in content) is sees_audit
    assert ("token.revoked" in content) is sees_audit
    # Only managers see who is invited and where webhooks point.
    assert "<td>pending@stmary.example</td>" not in content
    assert ">https://b.example.com/h</a>" not in content
    assert "1 invitation waiting for an answer." in content


def test_server_error_page_needs_no_database() -> None:
    from saas.views import server_error

    # No ``db`` fixture: database access would raise, so the page must render without it.
    response = server_error(RequestFactory().get("/o/st-mary/"))
    assert response.status_code == 500
    assert "Something went wrong" in response.content.decode()
    api = server_error(RequestFactory().get("/api/v1/organizations/"))
    assert api.status_code == 500
    assert json.loads(api.content)["error"]["code"] == "server_error"
