"""SAML 2.0 single sign-on in headless Chromium against pysaml2's own IdP (tests/saml_idp) on
loopback: sign in by work email, the AuthnRequest to the IdP, the signed Response posted back to
Strata's ACS from the IdP's site (another site: 127.0.0.1 against localhost, so the browser keeps
the session cookie off that POST and the ACS posts it once more from its own page), and the
person signed in with the mapped role; a person whose groups map to no role is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from tenants.models import AuditEvent, EmailDomain, IdentityProvider, Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import CHROMIUM_ARGS
from tests.factories import OrganizationFactory
from tests.saml_idp import Account, SamlIdp

pytestmark = pytest.mark.browser


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
def saml_idp() -> Iterator[SamlIdp]:
    idp = SamlIdp(
        accounts={
            "ana@stmary.example": Account(
                "ana@stmary.example", "ana@stmary.example", ["Strata-Radiology"]
            ),
            "cid@stmary.example": Account(
                "cid@stmary.example", "cid@stmary.example", ["Cafeteria"]
            ),
        }
    ).start()
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture
def hospital(
    transactional_db: Any, saml_idp: SamlIdp, monkeypatch: pytest.MonkeyPatch
) -> Organization:
    from tenants.sso import views

    monkeypatch.setattr(views, "STARTS_PER_MINUTE", 1_000_000)
    org = OrganizationFactory.create(name="St. Mary Hospital", slug="st-mary")
    EmailDomain.objects.create(
        organization=org,
        domain="stmary.example",
        verification_token="0" * 40,
        verified_at=timezone.now(),
        verified_by=EmailDomain.VerifiedBy.DNS,
    )
    IdentityProvider.objects.create(
        organization=org,
        protocol=IdentityProvider.Protocol.SAML,
        name="St. Mary ADFS",
        saml_metadata_url=f"{saml_idp.base}/metadata",
        saml_metadata_xml=saml_idp.metadata(),
        role_mapping={"Strata-Radiology": Role.MEMBER, "Strata-Admins": Role.ADMIN},
    )
    return org


def saml_sign_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.get_by_label("Work email").fill(email)
    page.get_by_role("button", name="Continue").click()


def test_sign_in_through_the_saml_idp_creates_the_member(
    live_server: Any, browser: Any, hospital: Organization, saml_idp: SamlIdp
) -> None:
    from playwright.sync_api import expect

    assert "localhost" in live_server.url  # the IdP on 127.0.0.1 is another site
    saml_idp.user = "ana@stmary.example"
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    saml_sign_in(page, live_server.url, "ana@stmary.example")
    expect(page).to_have_url(f"{live_server.url}/o/st-mary/")
    membership = Membership.objects.get(organization=hospital, user__email="ana@stmary.example")
    assert membership.role == Role.MEMBER
    login = AuditEvent.objects.get(organization=hospital, action="auth.login")
    assert login.details["method"] == "sso:St. Mary ADFS"
    page.screenshot(path="/tmp/strata-saml-signed-in.png")

    saml_idp.user = "cid@stmary.example"
    refused = browser.new_context().new_page()
    refused.set_default_timeout(15_000)
    saml_sign_in(refused, live_server.url, "cid@stmary.example")
    expect(refused.get_by_role("heading", name="You could not be signed in")).to_be_visible()
    expect(refused.get_by_role("alert")).to_contain_text("in no group that gives access")
    refused.screenshot(path="/tmp/strata-saml-refused.png")
    assert not Membership.objects.filter(user__email="cid@stmary.example").exists()
    refusal = AuditEvent.objects.get(organization=hospital, action="auth.sso_refused")
    assert refusal.details["reason"] == "no_role"
