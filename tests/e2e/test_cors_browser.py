"""CORS in a real browser: a page on another origin calls DICOMweb with a token; Chromium refuses
the answer until an owner allows the origin on the portal page, then reads it (and its exposed
headers). The page on a phone-sized screen. Screenshots at 1280 and 390 pixels wide."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tenants.models import ApiToken, CorsOrigin, Membership, Organization
from tenants.roles import Role
from tests.e2e.conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOT_WIDE = "/tmp/strata-cors-origins-1280.png"
SCREENSHOT_NARROW = "/tmp/strata-cors-origins-390.png"

FETCH = """async ([url, token]) => {
  try {
    const response = await fetch(url, {
      headers: {Authorization: `Bearer ${token}`, Accept: "application/dicom+json"},
    });
    return {
      status: response.status,
      body: await response.text(),
      contentType: response.headers.get("Content-Type"),
      vary: response.headers.get("Vary"),
    };
  } catch (error) {
    return {error: String(error)};
  }
}"""


def test_an_allowed_origin_reads_dicomweb_from_the_browser(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    from playwright.sync_api import expect

    make_member(org, Role.OWNER, email="alice@stmary.example")
    _, secret = make_token(org, ["dicom:read"], name="viewer")
    # Strata at http://localhost:<port>; the "viewer" at http://127.0.0.1:<port>, another origin.
    api = f"{live_server.url}/dicomweb/studies"
    port = live_server.url.rsplit(":", 1)[1]
    viewer_origin = f"http://127.0.0.1:{port}"
    assert viewer_origin != live_server.url
    viewer = browser_page.context.new_page()
    viewer.goto(f"{viewer_origin}/accounts/login/")

    refused = viewer.evaluate(FETCH, [api, secret])
    assert "error" in refused, refused  # the browser hides the answer: no origin allowed

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, "alice@stmary.example", org.slug)
    page.get_by_role("link", name="API tokens").click()
    page.get_by_role("link", name="Browser origins (CORS)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Browser origins (CORS)")
    expect(page.get_by_text("No origin is allowed")).to_be_visible()

    page.locator("#id_origin").fill(f"{viewer_origin}/ohif/")
    page.get_by_role("button", name="Allow origin").click()
    expect(page.locator(".field.has-error")).to_contain_text("no path")
    assert not CorsOrigin.objects.exists()

    page.locator("#id_origin").fill(viewer_origin)
    page.locator("#id_description").fill("OHIF viewer in the radiology portal")
    page.get_by_role("button", name="Allow origin").click()
    expect(page.get_by_role("status")).to_contain_text("may now call the APIs")
    expect(page.get_by_role("row").filter(has_text=viewer_origin)).to_contain_text("OHIF viewer")
    page.screenshot(path=SCREENSHOT_WIDE, full_page=True)

    allowed = viewer.evaluate(FETCH, [api, secret])
    assert allowed.get("status") == 200, allowed
    assert allowed["body"] == "[]"
    assert allowed["contentType"] == "application/dicom+json"

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, overflow
    page.screenshot(path=SCREENSHOT_NARROW, full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Remove {viewer_origin}").click()
    expect(page.get_by_role("status")).to_contain_text("no longer allowed")
    assert not CorsOrigin.objects.exists()
