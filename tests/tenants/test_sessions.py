"""Signed-in sessions: the record kept of each, the audit of sign-in and of ending one, the
Account page, the owner's "End sessions", the API, and the throttled last-seen refresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization, UserSession
from tenants.roles import Role

PASSWORD = "correct horse battery staple 42"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


def sign_in(membership: Membership, *, address: str = "192.0.2.10", agent: str = FIREFOX) -> Client:
    user = membership.user
    if not user.check_password(PASSWORD):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    client = Client(REMOTE_ADDR=address, HTTP_USER_AGENT=agent)
    response = client.post(
        reverse("login"), {"username": user.email, "password": PASSWORD}, REMOTE_ADDR=address
    )
    assert response.status_code == 302, response.content[:500]
    return client


def record_of(client: Client) -> UserSession:
    return UserSession.objects.get(session_key=client.session.session_key)


@pytest.fixture
def member(org: Organization, make_member: Callable[..., Membership]) -> Membership:
    return make_member(org, Role.MEMBER, email="dana@stmary.example")


# --- sign-in records -------------------------------------------------------------------------


def test_sign_in_records_the_session_and_audits_method_address_and_agent(
    org: Organization, member: Membership
) -> None:
    client = sign_in(member, address="198.51.100.7", agent=CHROME_MAC)
    record = record_of(client)
    assert record.user == member.user
    assert (record.method, record.ip, record.user_agent) == ("password", "198.51.100.7", CHROME_MAC)
    assert record.ended_at is None
    event = AuditEvent.objects.for_org(org).get(action="auth.login")
    assert (event.ip, event.user_agent) == ("198.51.100.7", CHROME_MAC)
    assert event.details == {"method": "password", "factor": "", "session_id": record.pk}
    # One auth.login event per sign-in: the existing event was extended, not doubled.
    assert AuditEvent.objects.filter(action="auth.login").count() == 1


def test_sign_out_ends_the_record(member: Membership) -> None:
    client = sign_in(member)
    record = record_of(client)
    client.post(reverse("logout"))
    record.refresh_from_db()
    assert record.ended_at is not None
    assert (record.ended_by, record.session_key) == ("sign-out", "")


# --- the Account page ------------------------------------------------------------------------


def test_account_page_lists_sessions_with_this_device_first(member: Membership) -> None:
    other = sign_in(member, address="203.0.113.9", agent=CHROME_MAC)
    mine = sign_in(member, address="192.0.2.10", agent=FIREFOX)
    response = mine.get(reverse("portal-account"))
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('data-session="') == 2
    assert page.index("Firefox on Linux") < page.index("Chrome on macOS")
    assert "This device" in page
    assert "203.0.113.9" in page and "192.0.2.10" in page
    assert reverse("portal-account-session-end", args=[record_of(other).pk]) in page
    assert reverse("portal-account-session-end", args=[record_of(mine).pk]) not in page
    assert "End all other sessions" in page
    # The header's email links to the page.
    assert f'href="{reverse("portal-account")}"' in page


def test_account_page_needs_a_signed_in_person(db: Any) -> None:
    response = Client().get(reverse("portal-account"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_ending_another_session_signs_that_browser_out_at_once(
    org: Organization, member: Membership
) -> None:
    other = sign_in(member, address="203.0.113.9", agent=CHROME_MAC)
    mine = sign_in(member)
    target = record_of(other)
    assert other.get(reverse("portal-account")).status_code == 200

    response = mine.post(reverse("portal-account-session-end", args=[target.pk]))
    assert response.status_code == 302

    target.refresh_from_db()
    assert target.ended_at is not None and target.ended_by == member.user.email
    assert not Session.objects.filter(session_key=other.session.session_key).exists()
    after = other.get(reverse("portal-account"))
    assert after.status_code == 302 and after["Location"].startswith(reverse("login"))
    event = AuditEvent.objects.for_org(org).get(action="session.ended")
    assert event.actor_user == member.user
    assert event.details["session_id"] == target.pk
    assert event.details["reason"] == "ended by its owner"
    # The page that made the request is still signed in.
    assert mine.get(reverse("portal-account")).status_code == 200


def test_end_requires_post_and_csrf(member: Membership) -> None:
    other = sign_in(member, agent=CHROME_MAC)
    target = record_of(other)
    mine = Client(enforce_csrf_checks=True)
    mine.force_login(member.user)
    url = reverse("portal-account-session-end", args=[target.pk])
    assert mine.get(url).status_code == 405
    assert mine.get(reverse("portal-account-sessions-end-others")).status_code == 405
    assert mine.post(url).status_code == 403
    target.refresh_from_db()
    assert target.ended_at is None


def test_another_persons_session_is_not_found(
    org: Organization, member: Membership, make_member: Callable[..., Membership]
) -> None:
    stranger = make_member(org, Role.MEMBER, email="erin@stmary.example")
    theirs = record_of(sign_in(stranger))
    mine = sign_in(member)
    response = mine.post(reverse("portal-account-session-end", args=[theirs.pk]))
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.ended_at is None
    too_big = mine.post(f"/account/sessions/{2**70}/end/")
    assert too_big.status_code == 404


def test_the_current_session_is_not_ended_from_the_list(member: Membership) -> None:
    mine = sign_in(member)
    response = mine.post(reverse("portal-account-session-end", args=[record_of(mine).pk]))
    assert response.status_code == 302
    assert record_of(mine).ended_at is None
    assert mine.get(reverse("portal-account")).status_code == 200


def test_end_all_other_sessions_keeps_this_one(org: Organization, member: Membership) -> None:
    first = sign_in(member, agent=CHROME_MAC)
    second = sign_in(member, address="203.0.113.5")
    mine = sign_in(member)
    response = mine.post(reverse("portal-account-sessions-end-others"))
    assert response.status_code == 302
    assert AuditEvent.objects.for_org(org).filter(action="session.ended").count() == 2
    for client in (first, second):
        assert client.get(reverse("portal-account")).status_code == 302
    page = mine.get(reverse("portal-account")).content.decode()
    assert page.count('data-session="') == 1


def test_expired_sessions_are_not_listed(member: Membership) -> None:
    other = sign_in(member, agent=CHROME_MAC)
    Session.objects.filter(session_key=other.session.session_key).delete()
    mine = sign_in(member)
    page = mine.get(reverse("portal-account")).content.decode()
    assert page.count('data-session="') == 1


# --- owners ----------------------------------------------------------------------------------


def member_sessions_url(org: Organization, membership: Membership) -> str:
    return reverse("portal-member-sessions-end", args=[org.slug, membership.pk])


def test_owner_ends_every_session_of_a_member(
    org: Organization, owner: Membership, member: Membership
) -> None:
    browsers = [sign_in(member), sign_in(member, agent=CHROME_MAC)]
    owner_client = sign_in(owner, address="192.0.2.99")
    members_page = owner_client.get(reverse("portal-members", args=[org.slug])).content.decode()
    assert member_sessions_url(org, member) in members_page
    response = owner_client.post(member_sessions_url(org, member))
    assert response.status_code == 302
    for browser in browsers:
        assert browser.get(reverse("portal-account")).status_code == 302
    events = AuditEvent.objects.for_org(org).filter(action="session.ended")
    assert events.count() == 2
    assert {e.actor_user_id for e in events} == {owner.user_id}
    assert {e.target_id for e in events} == {str(member.user_id)}
    assert {e.ip for e in events} == {"192.0.2.99"}
    assert owner_client.get(reverse("portal-account")).status_code == 200


def test_an_admin_cannot_end_a_members_sessions(
    org: Organization, owner: Membership, member: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN, email="admin@stmary.example")
    browser = sign_in(member)
    admin_client = sign_in(admin)
    page = admin_client.get(reverse("portal-members", args=[org.slug])).content.decode()
    assert member_sessions_url(org, member) not in page
    assert admin_client.post(member_sessions_url(org, member)).status_code == 403
    assert browser.get(reverse("portal-account")).status_code == 200
    assert not AuditEvent.objects.filter(action="session.ended").exists()


def test_another_organizations_member_is_not_found(
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Callable[..., Membership],
) -> None:
    outsider = make_member(other_org, Role.MEMBER, email="frank@other.example")
    browser = sign_in(outsider)
    owner_client = sign_in(owner)
    # Their membership id under this organization's URL, and this organization's URL for theirs.
    assert owner_client.post(member_sessions_url(org, outsider)).status_code == 404
    assert owner_client.post(member_sessions_url(other_org, outsider)).status_code == 404
    assert browser.get(reverse("portal-account")).status_code == 200


def test_sessions_end_for_user_is_idempotent_and_counts(member: Membership) -> None:
    sign_in(member)
    sign_in(member, agent=CHROME_MAC)
    actor = Actor.system("scim")
    assert services.sessions_end_for_user(user=member.user, actor=actor, reason="deactivated") == 2
    assert services.sessions_end_for_user(user=member.user, actor=actor, reason="deactivated") == 0
    assert set(UserSession.objects.values_list("ended_by", flat=True)) == {"scim"}
    assert Session.objects.count() == 0


# --- the API ---------------------------------------------------------------------------------


def api_for(client: Client) -> APIClient:
    api = APIClient(HTTP_USER_AGENT=FIREFOX)
    api.cookies = client.cookies
    return api


def test_api_lists_own_sessions(member: Membership, make_member: Callable[..., Membership]) -> None:
    other = sign_in(member, address="203.0.113.9", agent=CHROME_MAC)
    mine = sign_in(member)
    sign_in(make_member(member.organization, Role.MEMBER, email="gina@stmary.example"))
    response = api_for(mine).get("/api/v1/sessions/")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert {r["id"] for r in results} == {record_of(other).pk, record_of(mine).pk}
    current = next(r for r in results if r["this_session"])
    assert current["id"] == record_of(mine).pk
    assert current["browser"] == "Firefox on Linux"
    assert current["method"] == "password"
    assert "session_key" not in current
    other_key = str(other.session.session_key)
    assert all(other_key not in str(r) for r in results)
    slug = member.organization.slug
    assert api_for(mine).get(f"/api/v1/o/{slug}/sessions/").status_code == 200


def test_api_deletes_own_session_and_404s_for_anothers(
    org: Organization, member: Membership, make_member: Callable[..., Membership]
) -> None:
    other = sign_in(member, agent=CHROME_MAC)
    mine = sign_in(member)
    theirs = record_of(sign_in(make_member(org, Role.MEMBER, email="hal@stmary.example")))
    api = api_for(mine)
    missing = api.delete(f"/api/v1/sessions/{theirs.pk}/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    target = record_of(other)
    assert api.delete(f"/api/v1/sessions/{target.pk}/").status_code == 204
    assert other.get(reverse("portal-account")).status_code == 302
    assert api.delete(f"/api/v1/sessions/{target.pk}/").status_code == 404
    assert AuditEvent.objects.for_org(org).filter(action="session.ended").count() == 1


def test_api_deleting_the_current_session_signs_it_out(member: Membership) -> None:
    mine = sign_in(member)
    api = api_for(mine)
    assert api.delete(f"/api/v1/sessions/{record_of(mine).pk}/").status_code == 204
    assert api.get("/api/v1/sessions/").status_code in (401, 403)


def test_api_refuses_tokens_and_other_organizations(
    org: Organization,
    other_org: Organization,
    member: Membership,
    token_client: Callable[..., APIClient],
) -> None:
    response = token_client(org).get("/api/v1/sessions/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "session_required"
    api = api_for(sign_in(member))
    assert api.get(f"/api/v1/o/{other_org.slug}/sessions/").status_code == 404
    assert api.get("/api/v1/o/no-such-org/sessions/").status_code == 404
    assert APIClient().get("/api/v1/sessions/").status_code in (401, 403)


def test_api_schema_documents_sessions(db: Any) -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert "/api/v1/sessions/" in schema["paths"]
    assert "delete" in schema["paths"]["/api/v1/sessions/{session_id}/"]


# --- last seen -------------------------------------------------------------------------------


def _queries(client: Client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


def test_last_seen_is_refreshed_at_most_once_per_interval(
    org: Organization, member: Membership, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = sign_in(member)
    record = record_of(client)
    url = reverse("portal-members", args=[org.slug])
    _queries(client, url)  # the first page after sign-in (the session clock starts)
    baseline = _queries(client, url)
    again = _queries(client, url)
    # A normal page request writes nothing about the session: the same statements each time,
    # none touching the session record.
    assert len(again) == len(baseline)
    assert not any("tenants_usersession" in q for q in again)
    seen = UserSession.objects.get(pk=record.pk).last_seen_at
    assert seen == record.last_seen_at

    # Past the interval, one request writes last_seen_at once.
    session = client.session
    state = session[services.USER_SESSION_KEY]
    session[services.USER_SESSION_KEY] = {**state, "seen": state["seen"] - 10_000}
    session.save()
    refreshed = _queries(client, url)
    assert sum("tenants_usersession" in q for q in refreshed) == 1
    assert UserSession.objects.get(pk=record.pk).last_seen_at > seen
    assert not any("tenants_usersession" in q for q in _queries(client, url))


def test_requests_without_a_session_record_write_nothing(
    org: Organization, member: Membership
) -> None:
    client = Client()
    client.force_login(member.user)
    session = client.session
    session.pop(services.USER_SESSION_KEY, None)
    assert SESSION_KEY in session
    session.save()
    queries = _queries(client, reverse("portal-members", args=[org.slug]))
    assert not any("tenants_usersession" in q for q in queries)


def test_a_page_costs_the_same_queries_with_and_without_the_last_seen_middleware(
    org: Organization, member: Membership, settings: Any
) -> None:
    client = sign_in(member)
    url = reverse("portal-members", args=[org.slug])
    _queries(client, url)
    with_record = _queries(client, url)
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if m != "tenants.middleware.SessionSeenMiddleware"
    ]
    without = _queries(client, url)
    assert len(with_record) == len(without)
