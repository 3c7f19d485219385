"""Single sign-on in headless Chromium against a real OpenID Connect provider (panva's
oidc-provider, started on loopback by the test): the sign-in page, the hospital's IdP form, the
way back, the member created with the mapped role; a person with no mapped group is refused with
a clear page; the owner's Security page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from tenants import crypto
from tenants.models import AuditEvent, EmailDomain, IdentityProvider, Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import CHROMIUM_ARGS
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory
from tests.tenants.sso.idp import CLIENT_ID, CLIENT_SECRET, Idp, account, start_idp
from tests.tenants.sso.idp import PASSWORD as IDP_PASSWORD

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-security-{width}.png"


@pytest.fixture
def browser(chromium_path: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
            connections.close_all()


@pytest.fixture
def idp(live_server: Any) -> Iterator[Idp]:
    server = start_idp(
        redirect_uri=f"{live_server.url}/accounts/sso/callback/",
        accounts=[
            account("sub-ana", "ana@stmary.example", ["Strata-Radiology"]),
            account("sub-cid", "cid@stmary.example", ["Cafeteria"]),
        ],
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hospital(transactional_db: Any, idp: Idp, monkeypatch: pytest.MonkeyPatch) -> Organization:
    from tenants.sso import views

    # The live server answers every test from 127.0.0.1: no limit on sign-in starts here.
    monkeypatch.setattr(views, "STARTS_PER_MINUTE", 1_000_000)
    org = OrganizationFactory.create(name="St. Mary Hospital", slug="st-mary")
    EmailDomain.objects.create(
        organization=org,
        domain="stmary.example",
        verification_token="0" * 40,
        verified_at=timezone.now(),
        verified_by=EmailDomain.VerifiedBy.DNS,
    )
    EmailDomain.objects.create(
        organization=org, domain="stmary-imaging.example", verification_token="f" * 40
    )
    IdentityProvider.objects.create(
        organization=org,
        name="St. Mary Keycloak",
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        client_secret_encrypted=crypto.encrypt(CLIENT_SECRET),
        scopes="openid email profile groups",
        role_mapping={"Strata-Radiology": Role.MEMBER, "Strata-Admins": Role.ADMIN},
    )
    MembershipFactory.create(
        organization=org,
        role=Role.OWNER,
        user=UserFactory.create(email="owner@stmary.example", username="owner@stmary.example"),
    )
    return org


def sso_sign_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.screenshot(path="/tmp/strata-sso-login.png")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.get_by_label("Work email").fill(email)
    page.get_by_role("button", name="Continue").click()
    # Now at the hospital's identity provider (another origin).
    page.get_by_label("Username").fill(email)
    page.get_by_label("Passphrase").fill(IDP_PASSWORD)
    page.get_by_role("button", name="Log in at the IdP").click()


def test_sign_in_with_the_hospitals_idp_creates_the_member(
    live_server: Any, browser: Any, hospital: Organization, idp: Idp
) -> None:
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    sso_sign_in(page, live_server.url, "ana@stmary.example")
    expect(page).to_have_url(f"{live_server.url}/o/st-mary/")
    membership = Membership.objects.get(organization=hospital, user__email="ana@stmary.example")
    assert membership.role == Role.MEMBER
    login = AuditEvent.objects.filter(organization=hospital, action="auth.login").first()
    assert login is not None and login.details["method"] == "sso:St. Mary Keycloak"

    refused = browser.new_context().new_page()
    refused.set_default_timeout(15_000)
    sso_sign_in(refused, live_server.url, "cid@stmary.example")
    expect(refused.get_by_role("heading", name="You could not be signed in")).to_be_visible()
    expect(refused.get_by_role("alert")).to_contain_text("in no group that gives access")
    refused.screenshot(path="/tmp/strata-sso-refused.png")
    assert not Membership.objects.filter(user__email="cid@stmary.example").exists()
    assert AuditEvent.objects.filter(organization=hospital, action="auth.sso_refused").exists()


@pytest.mark.parametrize("width", [1280, 1920])
def test_owner_security_page(
    live_server: Any, browser: Any, hospital: Organization, width: int
) -> None:
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": width, "height": 1000}).new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("owner@stmary.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/o/st-mary/")
    page.get_by_role("link", name="Security").first.click()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_be_visible()
    expect(page.locator("#redirect-uri")).to_have_text(f"{live_server.url}/accounts/sso/callback/")
    expect(page.get_by_text("_strata-verification.stmary-imaging.example")).to_be_visible()
    assert CLIENT_SECRET not in page.content()
    page.screenshot(path=SCREENSHOT.format(width=width), full_page=True)
