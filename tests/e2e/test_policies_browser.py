"""Archive policies in a real browser: an owner writes a rule, previews it (the moves it would
plan today and the projected cost), changes the rule, previews again and sees the simulated cost
change, then saves and activates the version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from archive.models import ArchiveSettings, PolicyVersion
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.archive.analytics_helpers import add_study
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/strata-policies.png"
GIB = 2**30


def _candidate_total(page: Any) -> Decimal:
    text = page.locator('#simulation-totals [data-scenario-total="candidate"]').inner_text()
    return Decimal(text.replace("$", "").replace(",", "").strip())


def test_owner_edits_previews_and_sees_the_simulated_cost_change(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    from playwright.sync_api import expect

    now = datetime.now(UTC)
    # Two years of CT: 40 studies of 2 GiB, received a month apart, never read again.
    for k in range(40):
        received = now - timedelta(days=20 + 18 * k)
        add_study(
            org,
            study_date=received.date(),
            received=received,
            series=[("CT", 4, GIB // 2)],
        )
    make_member(org, Role.OWNER, email="alice@stmary.example")

    page = browser_page
    sign_in(page, live_server, "alice@stmary.example", org.slug)

    page.get_by_role("link", name="Archive policies").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Archive policies")

    # A first rule (the editor opens with an empty one): CT unread for 90 days goes to warm.
    page.locator("#rule-0-name").fill("CT unread 90 days to warm")
    page.locator("#rule-0-action").select_option("move:warm")
    page.locator("#rule-0-access_min").fill("90")
    page.locator("#rule-0-modalities").fill("CT")
    page.locator("#preview-button").click()

    expect(page.locator("#policy-preview")).to_be_visible()
    # Studies received 90 days ago or more: k >= 4 (20 + 18k >= 90), 36 studies of 4 instances.
    expect(page.locator("#preview-instances")).to_have_text("144")
    expect(page.locator("#preview-studies")).to_have_text("36")
    expect(page.locator("#simulation")).to_be_visible()
    warm_total = _candidate_total(page)
    all_hot = Decimal(
        page.locator('#simulation-totals [data-scenario-total="all_hot"]')
        .inner_text()
        .replace("$", "")
        .replace(",", "")
    )
    assert warm_total < all_hot

    # Colder: the same rule to the archive tier costs less again over the year.
    page.locator("#rule-0-action").select_option("move:archive")
    page.locator("#preview-button").click()
    expect(page.locator("#preview-instances")).to_have_text("144")
    archive_total = _candidate_total(page)
    assert archive_total < warm_total
    # No policy is active yet: the verdict weighs the edited rules against everything hot.
    expect(page.locator("#simulation-verdict")).to_contain_text(
        "The policy being edited would cost $"
    )
    expect(page.locator("#simulation-verdict")).to_contain_text("less than keeping everything hot")
    page.screenshot(path=SCREENSHOT, full_page=True)

    # Save and activate the version.
    page.locator("#policy-note").fill("CT to archive after 90 days unread")
    page.locator("#policy-activate").check()
    page.locator("#save-button").click()
    expect(page.locator("#active-number")).to_have_text("1")
    version = PolicyVersion.objects.get(organization=org)
    assert version.rules[0]["action"] == {"type": "move", "tier": "archive"}
    assert ArchiveSettings.objects.get(organization=org).active_policy == version
