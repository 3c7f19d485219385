"""“SSO required”: members cannot sign in with a password; owners can (break-glass), and the
refusal is audited. When the IdP is down the sign-in page says so."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tenants.models import AuditEvent, Organization
from tenants.roles import Role
from tests.factories import PASSWORD
from tests.tenants.sso.conftest import configure_provider, verified_domain


def require_sso(org: Organization, issuer: str = "http://127.0.0.1:9/") -> None:
    verified_domain(org, "stmary.example")
    configure_provider(org, issuer, sso_required=True)


def password_login(email: str) -> Any:
    client = Client()
    response = client.post("/accounts/login/", {"username": email, "password": PASSWORD})
    return client, response


def test_member_password_is_refused_when_sso_is_required(
    org: Organization, make_member: Any
) -> None:
    make_member(org, Role.ADMIN, email="ana@stmary.example")
    require_sso(org)
    client, response = password_login("ana@stmary.example")
    assert response.status_code == 400
    assert "requires single sign-on" in response.content.decode()
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.get(organization=org, action="auth.password_refused")
    assert event.details == {"reason": "sso_required"}


def test_owner_keeps_the_password_as_break_glass(org: Organization, owner: Any) -> None:
    require_sso(org)
    client, response = password_login(owner.user.email)
    assert response.status_code == 302
    assert "_auth_user_id" in client.session


def test_password_is_allowed_when_sso_is_not_required(org: Organization, make_member: Any) -> None:
    make_member(org, Role.MEMBER, email="ana@stmary.example")
    verified_domain(org, "stmary.example")
    configure_provider(org, "http://127.0.0.1:9/", sso_required=False)
    assert password_login("ana@stmary.example")[1].status_code == 302


def test_deactivated_membership_does_not_block_the_password_elsewhere(
    org: Organization, other_org: Organization, make_member: Any
) -> None:
    from django.utils import timezone

    member = make_member(org, Role.MEMBER, email="ana@stmary.example")
    member.deactivated_at = timezone.now()
    member.save()
    require_sso(org)
    assert password_login("ana@stmary.example")[1].status_code == 302


def test_idp_down_shows_a_clear_page_pointing_owners_to_the_password(
    org: Organization, owner: Any
) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    require_sso(org, issuer="http://127.0.0.1:9")
    response = Client().post("/accounts/sso/", {"email": "ana@stmary.example"})
    assert response.status_code == 502
    text = response.content.decode()
    assert "is not answering" in text
    assert "only its owners may still sign in with a password" in text
    # and the break-glass path works for the owner
    assert password_login(owner.user.email)[1].status_code == 302


def test_login_page_offers_single_sign_on(db: Any) -> None:
    page = Client().get("/accounts/login/").content.decode()
    assert "Sign in with single sign-on" in page
    assert 'href="/accounts/sso/"' in page
