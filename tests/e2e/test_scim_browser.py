"""The SCIM page in the browser: an owner creates the SCIM token, copies it once, the identity
provider provisions a member and a group with it, and the page shows the group's role and the
activity. Screenshots at 1280 and 1920 px go to /tmp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tenants.models import IdentityProvider, Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in
from tests.tenants.test_scim_support import GROUP, ScimClient, user_body

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-scim-{width}.png"


@pytest.mark.parametrize("width", [1280, 1920])
def test_owner_connects_the_identity_provider(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    width: int,
) -> None:
    from playwright.sync_api import expect

    make_member(org, Role.OWNER, email="owner@stmary.example")
    IdentityProvider.objects.create(
        organization=org, name="Entra ID", role_mapping={"Strata Admins": Role.ADMIN}
    )
    page = browser_page
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, live_server, "owner@stmary.example", org.slug)
    page.goto(f"{live_server.url}/o/{org.slug}/security/scim/")
    expect(page.locator("#scim-base-url")).to_have_text(f"{live_server.url}/scim/v2/")
    page.get_by_role("button", name="Create SCIM token").click()
    secret = page.locator("#new-token-secret").inner_text()
    assert secret.startswith("strata_")

    # The identity provider at work (the test client stands in for it).
    scim = ScimClient(secret)
    dana = scim.post("Users", user_body("dana@stmary.example")).json()["id"]
    fox = scim.post("Users", user_body("fox.mulder@stmary.example", externalId="fox")).json()["id"]
    scim.post(
        "Groups",
        {"schemas": [GROUP], "displayName": "Strata Admins", "members": [{"value": dana}]},
    )
    scim.post(
        "Groups",
        {"schemas": [GROUP], "displayName": "Radiology residents", "members": [{"value": fox}]},
    )

    page.reload()
    expect(page.locator("#new-token-secret")).to_have_count(0)
    groups = page.locator("#groups")
    expect(groups).to_contain_text("Strata Admins")
    expect(groups).to_contain_text("Admin")
    expect(groups).to_contain_text("Not mapped")
    expect(page.locator("#activity")).to_contain_text("scim.user_create")
    expect(page.locator("#activity")).to_contain_text("member.role_changed")
    # Nothing wider than the window.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=SCREENSHOT.format(width=width), full_page=True)
