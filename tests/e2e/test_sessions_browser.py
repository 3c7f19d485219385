"""Active sessions in the browser: a member signed in from two browsers sees both on the Account
page, ends the other one, and the other browser is signed out on its next request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections

from tenants.models import AuditEvent, Membership, Organization, UserSession
from tenants.roles import Role
from tests.e2e.conftest import CHROMIUM_ARGS
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser

AGENT_LAPTOP = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
AGENT_WARD = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
SCREENSHOT = "/tmp/strata-account-sessions-{width}.png"


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


def open_page(browser: Any, agent: str, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900}, user_agent=agent)
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def sign_in(page: Any, base: str, email: str, org_slug: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/o/{org_slug}/")


def test_end_the_other_browsers_session(
    live_server: Any,
    browser: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    email = "nurse@stmary.example"
    make_member(org, Role.MEMBER, email=email)
    base = live_server.url
    ward = open_page(browser, AGENT_WARD)
    sign_in(ward, base, email, org.slug)
    laptop = open_page(browser, AGENT_LAPTOP)
    sign_in(laptop, base, email, org.slug)

    # The header's email leads to the Account page, which lists both browsers.
    laptop.get_by_role("link", name=email).click()
    expect(laptop).to_have_url(f"{base}/account/")
    expect(laptop.get_by_role("heading", name="Active sessions")).to_be_visible()
    rows = laptop.locator("#sessions tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Chrome on Linux")
    expect(rows.nth(0)).to_contain_text("This device")
    expect(rows.nth(1)).to_contain_text("Firefox on Windows")
    expect(rows.nth(1)).to_contain_text("127.0.0.1")
    for width in (1366, 1920):
        laptop.set_viewport_size({"width": width, "height": 900})
        laptop.screenshot(path=SCREENSHOT.format(width=width), full_page=True)
    overflow = laptop.evaluate(
        "document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
    assert not overflow

    # The ward browser still works, then is ended from the laptop.
    ward.goto(f"{base}/account/")
    expect(ward.locator("#sessions tbody tr")).to_have_count(2)
    rows.nth(1).get_by_role("button", name="End").click()
    expect(laptop.get_by_text("The session from Firefox on Windows ended.")).to_be_visible()
    expect(laptop.locator("#sessions tbody tr")).to_have_count(1)

    ward.goto(f"{base}/o/{org.slug}/")
    expect(ward).to_have_url(f"{base}/accounts/login/?next=/o/{org.slug}/")
    laptop.goto(f"{base}/o/{org.slug}/")
    expect(laptop).to_have_url(f"{base}/o/{org.slug}/")

    logins = AuditEvent.objects.for_org(org).filter(action="auth.login").order_by("id")
    assert [(e.details["method"], e.ip, e.user_agent) for e in logins] == [
        ("password", "127.0.0.1", AGENT_WARD),
        ("password", "127.0.0.1", AGENT_LAPTOP),
    ]
    ended = AuditEvent.objects.for_org(org).get(action="session.ended")
    assert ended.actor_label == email
    ward_session = UserSession.objects.get(user_agent=AGENT_WARD)
    assert ended.details["session_id"] == ward_session.pk
    assert ward_session.ended_at is not None and ward_session.ended_by == email
