"""Every demo account of the README signs in with the documented password after seed_demo, and
sees the sections its role allows and no others.

The expectations come from the permission matrix (tenants.roles) and the portal's navigation
(saas.portal), and the accounts from the README's table, so none of them is typed twice here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from saas.management.commands.seed_demo import DEMO_EMAIL, DEMO_PASSWORD, STAFF
from saas.portal import NAV_SECTIONS
from tenants.models import Membership
from tenants.roles import Role, role_permissions

pytestmark = pytest.mark.browser

ORG = "demo-hospital"
README = Path(settings.BASE_DIR) / "README.md"
ACCOUNT_ROW = re.compile(r"^\|\s*`([^`]+@[^`]+)`\s*\|\s*(`[^`]+`|same)\s*\|", re.MULTILINE)


def readme_accounts() -> list[tuple[str, str]]:
    """The README's demo accounts as (email, password); "same" repeats the row above's password."""
    accounts: list[tuple[str, str]] = []
    for email, password in ACCOUNT_ROW.findall(README.read_text()):
        accounts.append((email, accounts[-1][1] if password == "same" else password.strip("`")))
    return accounts


def test_the_readme_documents_every_account_seed_demo_makes() -> None:
    documented = readme_accounts()
    assert sorted(email for email, _ in documented) == sorted(
        [DEMO_EMAIL, *(email for email, _ in STAFF)]
    )
    assert {password for _, password in documented} == {DEMO_PASSWORD}


@pytest.fixture
def demo(transactional_db: None) -> None:
    call_command("seed_demo", quiet=True, history_studies=4)
    # One account per role: every row of the permission matrix is signed in below.
    roles = Membership.objects.filter(organization__slug=ORG).values_list("role", flat=True)
    assert sorted(roles) == sorted(Role.values)


def sign_in(page: Any, base: str, email: str, password: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    # The owner belongs to two demo organizations and lands on the list of them first.
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))
    page.goto(f"{base}/o/{ORG}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Demo General Hospital")


def portal_links(page: Any, base: str) -> set[str]:
    """This organization's pages linked from the page's content (not the shell's navigation)."""
    hrefs = page.locator("main a[href]").evaluate_all("links => links.map(a => a.href)")
    prefix = f"{base}/o/{ORG}/"
    return {
        urlsplit(href)._replace(fragment="").geturl() for href in hrefs if href.startswith(prefix)
    }


@pytest.mark.parametrize("email", [DEMO_EMAIL, *(email for email, _ in STAFF)])
def test_demo_account_sees_what_its_role_allows(
    demo: None, live_server: Any, browser_page: Any, email: str
) -> None:
    page, base = browser_page, live_server.url
    password = dict(readme_accounts())[email]
    role = Membership.objects.get(organization__slug=ORG, user__email=email).role
    allowed = role_permissions(role)
    sign_in(page, base, email, password)

    sections = [section for section in NAV_SECTIONS if section["url_name"]]
    shown = page.get_by_role("navigation", name="Demo General Hospital").locator("a.nav-link")
    assert shown.all_inner_texts() == [
        section["label"] for section in sections if section["perm"] in allowed
    ]

    linked: set[str] = set()
    for section in sections:
        response = page.goto(base + reverse(section["url_name"], args=[ORG]))
        if section["perm"] in allowed:
            assert response.status == 200, (email, section["key"])
            linked |= portal_links(page, base)
        else:
            assert response.status == 403, (email, section["key"])
            assert page.get_by_role(
                "heading", name="You don't have access to this page"
            ).is_visible()
            assert section["perm"] in page.locator("main").inner_text()
    # A page shows this role no link it may not follow.
    refused = [url for url in sorted(linked) if page.request.get(url).status == 403]
    assert refused == [], (email, refused)

    page.goto(f"{base}/o/{ORG}/")
    page.screenshot(path=f"/tmp/strata-demo-{role}.png", full_page=True)
