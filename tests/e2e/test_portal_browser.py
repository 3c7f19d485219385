"""The portal in a real browser: sign in, switch organization, create a token, invite a member."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail

from tenants.models import ApiToken, Invitation, Membership, Organization
from tenants.roles import Role
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-portal.png"


def test_member_of_two_organizations_creates_token_and_invites(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    alice = make_member(org, Role.OWNER, email="alice@stmary.example")
    Membership.objects.create(user=alice.user, organization=other_org, role=Role.ADMIN)

    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Email").fill("Alice@StMary.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # Two organizations: the home page lists both.
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
    page.get_by_role("link", name=re.compile("St. Mary Hospital")).click()
    expect(page).to_have_url(f"{live_server.url}/o/{org.slug}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("St. Mary Hospital")

    # The switcher in the header takes us to the other organization.
    page.locator(".switcher > summary").click()
    page.locator(".switcher .menu").get_by_role("link", name=re.compile("Other Clinic")).click()
    expect(page).to_have_url(f"{live_server.url}/o/{other_org.slug}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Other Clinic")

    # Create an API token; its secret is shown once.
    page.get_by_role("navigation", name="Other Clinic").get_by_role(
        "link", name="API tokens"
    ).click()
    page.get_by_label("Name").fill("Radiology PACS router")
    page.get_by_label(re.compile("dicom:read")).check()
    page.get_by_label(re.compile("dicom:write")).check()
    page.get_by_role("button", name="Create token").click()
    secret_box = page.locator("#new-token-secret")
    expect(secret_box).to_be_visible()
    secret = secret_box.inner_text().strip()
    assert secret.startswith("strata_")
    token = ApiToken.objects.get(organization=other_org, name="Radiology PACS router")
    assert token.scopes == ["dicom:read", "dicom:write"]
    assert secret.split("_")[1] == token.prefix

    page.reload()
    expect(page.get_by_role("row").filter(has_text="Radiology PACS router")).to_contain_text(
        "Active"
    )
    expect(page.locator("#new-token-secret")).to_have_count(0)
    assert secret not in page.content()

    # Invite a member by email; the invitation is listed as pending.
    page.get_by_role("link", name="Members").click()
    page.get_by_label("Email address").fill("new.radiologist@otherclinic.example")
    page.get_by_label("Role", exact=True).select_option("auditor")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_role("status").filter(has_text="Invitation sent")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="new.radiologist@otherclinic.example")
    expect(row).to_contain_text("Pending")
    expect(row).to_contain_text("Auditor")

    invitation = Invitation.objects.get(organization=other_org)
    assert invitation.email == "new.radiologist@otherclinic.example"
    assert invitation.state == "pending"
    assert [m.to for m in mail.outbox] == [["new.radiologist@otherclinic.example"]]

    page.screenshot(path=SCREENSHOT, full_page=True)
