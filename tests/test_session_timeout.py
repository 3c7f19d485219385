"""Portal sessions end after SESSION_IDLE_TIMEOUT_SECONDS without activity and
SESSION_ABSOLUTE_LIFETIME_SECONDS after sign-in (saas.middleware.SessionTimeoutMiddleware)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import reverse

from saas.middleware import SessionTimeoutMiddleware
from tenants.models import ApiToken, Membership, Organization
from tests.factories import PASSWORD

KEY = SessionTimeoutMiddleware.STATE_KEY
DASHBOARD = "/o/st-mary/"


@pytest.fixture
def client(org: Organization, owner: Membership) -> Client:
    client = Client()
    response = client.post(reverse("login"), {"username": owner.user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(DASHBOARD).status_code == 200  # the session's clock starts
    return client


def shift(client: Client, *, start: float = 0, seen: float = 0) -> dict[str, Any]:
    """Time travel: move the session's sign-in and last activity this many seconds back."""
    session = client.session
    state = dict(session[KEY])
    state["start"] -= start
    state["seen"] -= seen
    session[KEY] = state
    session.save()
    return state


def signed_out_to_login(response: Any, next_path: str) -> bool:
    return response.status_code == 302 and response["Location"] == (
        f"{reverse('login')}?next={next_path}"
    )


def test_a_session_idle_for_15_minutes_is_signed_out_with_a_message(client: Client) -> None:
    shift(client, seen=15 * 60 + 1)
    response = client.get(DASHBOARD)
    assert signed_out_to_login(response, DASHBOARD)
    assert SESSION_KEY not in client.session
    login_page = client.get(response["Location"]).content.decode()
    assert "You were signed out after 15 minutes without activity." in login_page
    # Signed out for good: the next page asks for a sign-in again, without the message.
    again = client.get(DASHBOARD)
    assert again.status_code == 302
    assert "without activity" not in client.get(again["Location"]).content.decode()


def test_activity_keeps_the_session_alive(client: Client) -> None:
    # Four steps of 14 minutes: close to an hour since sign-in, never 15 minutes idle.
    for _ in range(4):
        shift(client, start=14 * 60, seen=14 * 60)
        assert client.get(DASHBOARD).status_code == 200
    state = client.session[KEY]
    assert state["seen"] - state["start"] >= 56 * 60


def test_a_session_ends_12_hours_after_sign_in_whatever_the_activity(client: Client) -> None:
    shift(client, start=12 * 3600 - 60)
    assert client.get(DASHBOARD).status_code == 200
    shift(client, start=61)
    response = client.get(DASHBOARD)
    assert signed_out_to_login(response, DASHBOARD)
    assert "12 hours after signing in" in client.get(response["Location"]).content.decode()


def test_an_expired_post_goes_to_the_login_page_and_changes_nothing(
    client: Client, org: Organization
) -> None:
    shift(client, seen=16 * 60)
    response = client.post(f"/o/{org.slug}/tokens/", {"name": "PACS", "scopes": ["org.read"]})
    assert response.status_code == 302
    assert response["Location"] == reverse("login")
    assert not ApiToken.objects.filter(organization=org).exists()


def test_api_requests_with_the_session_count_as_activity(client: Client) -> None:
    state = shift(client, seen=14 * 60)
    assert client.get("/api/v1/o/st-mary/organization/").status_code == 200
    assert client.session[KEY]["seen"] > state["seen"] + 13 * 60


def test_an_api_request_with_an_expired_session_is_answered_as_anonymous(client: Client) -> None:
    shift(client, seen=16 * 60)
    response = client.get("/api/v1/o/st-mary/organization/")
    assert response.status_code in (401, 403)
    assert response["Content-Type"].startswith("application/json")
    # The message waits for the next portal page.
    page = client.get(DASHBOARD)
    assert "without activity" in client.get(page["Location"]).content.decode()


def test_background_polling_does_not_keep_the_session_alive(
    client: Client, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings

    # Any view named as background is a poll; the job progress page is the real one.
    assert "portal-ingest-job-progress" in settings.SESSION_BACKGROUND_URL_NAMES
    monkeypatch.setattr(settings, "SESSION_BACKGROUND_URL_NAMES", ["portal-members"])
    state = shift(client, seen=10 * 60)
    assert client.get(f"/o/{org.slug}/members/").status_code == 200
    assert client.session[KEY]["seen"] == state["seen"]
    shift(client, seen=6 * 60)
    assert client.get(f"/o/{org.slug}/members/").status_code == 302


def test_a_poll_that_follows_the_redirect_leaves_the_message_for_the_next_page(
    client: Client, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings

    monkeypatch.setattr(settings, "SESSION_BACKGROUND_URL_NAMES", ["portal-members"])
    shift(client, seen=16 * 60)
    json_only = {"Accept": "application/json"}
    poll = client.get(f"/o/{org.slug}/members/", headers=json_only, follow=True)
    assert poll.redirect_chain[-1][0].startswith(reverse("login"))
    assert "without activity" not in poll.content.decode()
    page = client.get(DASHBOARD, follow=True)
    assert "You were signed out after 15 minutes without activity." in page.content.decode()


def test_a_new_sign_in_starts_a_new_clock(client: Client, owner: Membership) -> None:
    shift(client, start=12 * 3600 + 1)
    client.get(DASHBOARD)  # signed out
    client.post(reverse("login"), {"username": owner.user.email, "password": PASSWORD})
    assert client.get(DASHBOARD).status_code == 200


def test_activity_is_written_at_most_once_a_minute(client: Client) -> None:
    state = shift(client, seen=30)
    client.get(DASHBOARD)
    assert client.session[KEY]["seen"] == state["seen"]
    state = shift(client, seen=31)
    client.get(DASHBOARD)
    assert client.session[KEY]["seen"] > state["seen"]


def test_session_cookie_lives_no_longer_than_the_absolute_lifetime(client: Client) -> None:
    from django.conf import settings

    assert settings.SESSION_COOKIE_AGE == settings.SESSION_ABSOLUTE_LIFETIME_SECONDS == 12 * 3600
    assert settings.SESSION_IDLE_TIMEOUT_SECONDS == 15 * 60
