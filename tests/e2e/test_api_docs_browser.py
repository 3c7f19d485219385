"""ReDoc and Swagger UI render in a browser that may reach only this server."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/api/redoc/", "#redoc-container h1"), ("/api/docs/", "#swagger-ui .title")],
)
def test_reference_renders_with_requests_to_this_server_only(
    live_server: Any, browser_page: Any, path: str, rendered: str
) -> None:
    from playwright.sync_api import expect

    page, server = browser_page, urlsplit(live_server.url).netloc
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == server or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(live_server.url + path)
    # ReDoc lays out the whole schema before it shows anything: seconds in a headless browser.
    expect(page.locator(rendered).first).to_contain_text("Strata API", timeout=60_000)
    page.wait_for_load_state("networkidle")
    assert outside == []
    page.screenshot(path=f"/tmp/strata-api-{path.strip('/').replace('/', '-')}.png")
