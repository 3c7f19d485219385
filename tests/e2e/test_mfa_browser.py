"""Second factors in Chromium: a security key (Chromium's virtual authenticator, driven over the
DevTools protocol) is registered and then signs in; an authenticator app is added from its
enrolment page and its code signs in. WebAuthn needs a host name as relying party, so the pages
are opened at http://localhost:<port> (never 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.cache import cache

from tenants.mfa import totp
from tenants.mfa.models import RecoveryCode, TotpDevice, WebAuthnCredential
from tenants.models import AuditEvent, Membership, Organization, SecurityPolicy, UserSession
from tenants.roles import Role
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser

EMAIL = "radiologist@stmary.example"


def base_url(live_server: Any) -> str:
    port = urlsplit(live_server.url).port
    return f"http://localhost:{port}"


def password_step(page: Any, base: str, email: str = EMAIL) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def add_virtual_authenticator(page: Any) -> tuple[Any, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    result = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, result["authenticatorId"]


def test_a_security_key_is_registered_and_then_signs_in(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    cache.clear()
    make_member(org, Role.ADMIN, email=EMAIL)
    base = base_url(live_server)
    page = browser_page
    cdp, authenticator = add_virtual_authenticator(page)

    password_step(page, base)
    expect(page).to_have_url(f"{base}/o/{org.slug}/")
    page.goto(f"{base}/account/")
    page.get_by_role("link", name="Manage sign-in factors").click()
    page.get_by_role("link", name="Add security key or passkey").click()
    page.get_by_label("Name").fill("Laptop passkey")
    page.get_by_role("button", name="Register security key or passkey").click()

    expect(page).to_have_url(f"{base}/account/factors/#recovery")
    expect(page.locator("#factors")).to_contain_text("Laptop passkey")
    key = WebAuthnCredential.objects.get(user__email=EMAIL)
    assert key.name == "Laptop passkey"
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(stored) == 1
    assert AuditEvent.objects.filter(action="mfa.enrolled", details__factor="webauthn").exists()

    # Recovery codes, offered once a factor exists: shown once.
    page.get_by_role("button", name="Create recovery codes").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    assert RecoveryCode.objects.filter(user__email=EMAIL).count() == 10

    page.get_by_role("button", name="Log out").click()
    password_step(page, base)
    expect(page).to_have_url(f"{base}/accounts/mfa/")
    page.get_by_role("button", name="Use a security key or passkey").click()

    expect(page).to_have_url(f"{base}/o/{org.slug}/")
    latest = UserSession.objects.filter(user__email=EMAIL).order_by("-id").first()
    assert latest is not None and latest.factor == "webauthn"
    key.refresh_from_db()
    assert key.last_used_at is not None
    login = AuditEvent.objects.filter(action="auth.login").order_by("-id").first()
    assert login is not None and login.details["factor"] == "webauthn"


def test_an_unregistered_key_cannot_sign_in(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    cache.clear()
    member = make_member(org, Role.MEMBER, email=EMAIL)
    # A key registered elsewhere: this browser's virtual authenticator does not hold it.
    WebAuthnCredential.objects.create(
        user=member.user, name="Lost key", credential_id="AAAA", public_key=b"\x00"
    )
    base = base_url(live_server)
    page = browser_page
    add_virtual_authenticator(page)

    password_step(page, base)
    expect(page).to_have_url(f"{base}/accounts/mfa/")
    page.get_by_role("button", name="Use a security key or passkey").click()

    expect(page.locator("[data-webauthn-error]")).to_be_visible()
    expect(page).to_have_url(f"{base}/accounts/mfa/")
    assert not UserSession.objects.filter(user=member.user).exists()


def test_enrolment_required_then_an_authenticator_app_signs_in(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    cache.clear()
    make_member(org, Role.MEMBER, email=EMAIL)
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    base = base_url(live_server)
    page = browser_page

    password_step(page, base)
    expect(page).to_have_url(f"{base}/account/factors/")
    expect(page.locator("#enrol-required")).to_contain_text(
        "St. Mary Hospital requires a second factor"
    )
    page.goto(f"{base}/o/{org.slug}/members/")
    expect(page).to_have_url(f"{base}/account/factors/?next=%2Fo%2F{org.slug}%2Fmembers%2F")

    page.get_by_role("link", name="Add authenticator app").click()
    expect(page.locator(".mfa-qr svg")).to_be_visible()
    page.get_by_text("Can't scan? Type the key instead").click()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    # A code of the previous step (a phone's clock a little behind): the current one stays unused.
    page.get_by_label("Code the app shows now").fill(totp.code_at(secret, totp.current_step() - 1))
    page.get_by_role("button", name="Add authenticator app").click()
    expect(page).to_have_url(f"{base}/account/factors/#recovery")
    assert TotpDevice.objects.filter(user__email=EMAIL).count() == 1

    page.get_by_role("button", name="Log out").click()
    password_step(page, base)
    expect(page).to_have_url(f"{base}/accounts/mfa/")
    page.get_by_label("Code from your authenticator app").fill(
        totp.code_at(secret, totp.current_step())
    )
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{base}/o/{org.slug}/")
    latest = UserSession.objects.filter(user__email=EMAIL).order_by("-id").first()
    assert latest is not None and latest.factor == "totp"
