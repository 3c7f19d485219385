"""Brute-force protection: sign-in lockout per account and per address, password-reset limits."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.core import mail
from django.test import Client, override_settings
from django.urls import reverse

from tenants.models import AuditEvent, Membership, Organization
from tests.factories import PASSWORD

LOGIN = "/accounts/login/"
OWNER = "owner@stmary.example"
ATTACKER = "203.0.113.66"
ELSEWHERE = "198.51.100.7"


def sign_in(
    email: str, password: str, address: str = ATTACKER, client: Client | None = None
) -> Any:
    return (client or Client()).post(
        LOGIN, {"username": email, "password": password}, REMOTE_ADDR=address
    )


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and response["Location"] != LOGIN


def rewind_attempts(minutes: int) -> None:
    """Time travel: every recorded failure happened ``minutes`` earlier."""
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= timedelta(minutes=minutes)
        attempt.save(update_fields=["attempt_time"])


def test_sixty_wrong_passwords_then_the_right_one_is_refused_with_the_lockout_page(
    org: Organization, owner: Membership
) -> None:
    statuses = [sign_in(OWNER, f"wrong-{n}").status_code for n in range(60)]
    # Four plain failures, then the fifth locks: from then on every answer is the lockout page.
    assert statuses[:4] == [400] * 4
    assert set(statuses[4:]) == {429}

    response = sign_in(OWNER, PASSWORD)
    assert response.status_code == 429
    page = response.content.decode()
    assert "Sign-in paused" in page
    assert "This account is locked after 5 failed sign-in attempts" in page
    assert "locked for 15 minutes" in page
    assert "Try again in 15 minutes" in page
    assert 'class="card auth-card"' in page  # the portal's layout, not a bare error page
    assert "_auth_user_id" not in Client().session  # nobody signed in


def test_the_lockout_is_audited_once_in_the_accounts_organizations(
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    Membership.objects.create(organization=other_org, user=owner.user, role="member")
    with caplog.at_level(logging.WARNING, logger="tenants.lockout"):
        for n in range(12):
            sign_in(OWNER, f"wrong-{n}")

    for organization in (org, other_org):
        event = AuditEvent.objects.for_org(organization).get(action="auth.locked_out")
        assert event.actor_label == f"anonymous ({OWNER})"
        assert event.ip == ATTACKER
        assert event.target_label == OWNER
        assert event.details["scope"] == ["account"]
        assert event.details["failures"] == 5
        assert event.details["lockout_minutes"] == 15
    # The refused attempts during the lockout are audited as failed sign-ins.
    assert AuditEvent.objects.for_org(org).filter(action="auth.login_failed").count() == 12
    warnings = [r for r in caplog.records if r.name == "tenants.lockout"]
    assert len(warnings) == 1
    assert OWNER not in warnings[0].getMessage()
    assert f"user id {owner.user.pk}" in warnings[0].getMessage()


def test_lockout_of_an_unknown_account_is_a_platform_event(db: None) -> None:
    for n in range(5):
        sign_in("nobody@nowhere.example", f"wrong-{n}")
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.organization is None
    assert event.target_label == "nobody@nowhere.example"


def test_a_locked_account_is_locked_from_every_address_other_accounts_are_not(
    org: Organization, owner: Membership, make_member: Any
) -> None:
    colleague = make_member(org, email="colleague@stmary.example")
    for n in range(5):
        sign_in(OWNER, f"wrong-{n}")

    # Per account: the right password from the hospital's own address is refused too.
    assert sign_in(OWNER, PASSWORD, address=ELSEWHERE).status_code == 429
    # Another account is not concerned, from the attacker's address (below its limit) or elsewhere.
    assert signed_in(sign_in(colleague.user.email, PASSWORD, address=ATTACKER))
    assert signed_in(sign_in(colleague.user.email, PASSWORD, address=ELSEWHERE))


def test_an_address_with_too_many_failures_is_locked_for_every_account(
    org: Organization, owner: Membership, make_member: Any
) -> None:
    colleague = make_member(org, email="colleague@stmary.example")
    # Password spraying: four tries for each of five accounts stays under each account's limit.
    for account in range(5):
        for n in range(4):
            sign_in(f"user{account}@stmary.example", f"wrong-{n}")

    response = sign_in(colleague.user.email, PASSWORD, address=ATTACKER)
    assert response.status_code == 429
    assert "came from your network address" in response.content.decode()
    assert signed_in(sign_in(colleague.user.email, PASSWORD, address=ELSEWHERE))
    event = AuditEvent.objects.filter(action="auth.locked_out").get()
    assert event.details["scope"] == ["address"]


@override_settings(LOGIN_FAILURE_LIMIT_PER_ADDRESS=0, AXES_LOCKOUT_PARAMETERS=["username"])
def test_the_per_address_lockout_can_be_turned_off(
    org: Organization, owner: Membership, make_member: Any
) -> None:
    colleague = make_member(org, email="colleague@stmary.example")
    for account in range(10):
        for n in range(4):
            sign_in(f"user{account}@stmary.example", f"wrong-{n}")
    assert signed_in(sign_in(colleague.user.email, PASSWORD))


def test_sign_in_works_again_after_the_cool_off(org: Organization, owner: Membership) -> None:
    for n in range(60):
        sign_in(OWNER, f"wrong-{n}")
    rewind_attempts(14)
    response = sign_in(OWNER, PASSWORD)
    assert response.status_code == 429
    assert "Try again in 1 minute," in response.content.decode()

    rewind_attempts(1)
    assert signed_in(sign_in(OWNER, PASSWORD))


def test_an_operator_can_lift_a_lockout(org: Organization, owner: Membership) -> None:
    from django.core.management import call_command

    for n in range(5):
        sign_in(OWNER, f"wrong-{n}")
    call_command("axes_reset_username", OWNER)
    assert signed_in(sign_in(OWNER, PASSWORD))


def test_attempts_during_a_lockout_do_not_extend_it(org: Organization, owner: Membership) -> None:
    for n in range(5):
        sign_in(OWNER, f"wrong-{n}")
    rewind_attempts(10)
    for n in range(20):
        assert sign_in(OWNER, f"still-wrong-{n}").status_code == 429
    rewind_attempts(5)
    assert signed_in(sign_in(OWNER, PASSWORD))


def test_a_successful_sign_in_clears_the_accounts_failures(
    org: Organization, owner: Membership
) -> None:
    for n in range(4):
        sign_in(OWNER, f"wrong-{n}")
    assert signed_in(sign_in(OWNER, PASSWORD))
    for n in range(4):
        assert sign_in(OWNER, f"wrong-again-{n}").status_code == 400
    assert signed_in(sign_in(OWNER, PASSWORD))


def test_the_account_key_ignores_case_and_spaces(org: Organization, owner: Membership) -> None:
    for n, typed in enumerate(["OWNER@stmary.example", " owner@STMARY.example", OWNER] * 2):
        sign_in(typed, f"wrong-{n}")
    assert sign_in(OWNER, PASSWORD).status_code == 429


@override_settings(LOGIN_FAILURE_LIMIT=3, AXES_FAILURE_LIMIT=3)
def test_the_limit_is_configurable(org: Organization, owner: Membership) -> None:
    assert [sign_in(OWNER, f"wrong-{n}").status_code for n in range(3)] == [400, 400, 429]


def test_the_admin_sign_in_is_protected_too(org: Organization, owner: Membership) -> None:
    for n in range(5):
        Client().post(
            "/admin/login/", {"username": OWNER, "password": f"wrong-{n}"}, REMOTE_ADDR=ATTACKER
        )
    assert sign_in(OWNER, PASSWORD).status_code == 429


def test_api_token_and_session_authentication_still_work(
    org: Organization, owner: Membership, token_client: Any
) -> None:
    assert token_client(org).get("/api/v1/organization/").status_code == 200
    client = Client()
    assert signed_in(sign_in(OWNER, PASSWORD, client=client))
    assert client.get("/api/v1/o/st-mary/organization/").status_code == 200


# --- password reset --------------------------------------------------------------------------------


def ask_reset(email: str, address: str = ATTACKER) -> Any:
    return Client().post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)


def test_password_reset_requests_are_limited_per_email(
    org: Organization, owner: Membership
) -> None:
    assert [ask_reset(OWNER, address=f"198.51.100.{n}").status_code for n in range(3)] == [302] * 3
    assert len(mail.outbox) == 3

    refused = ask_reset(OWNER.upper(), address="198.51.100.99")
    assert refused.status_code == 429
    page = refused.content.decode()
    assert "Too many password reset requests for this email address or from your network" in page
    assert "Try again in 60 minutes" in page
    assert len(mail.outbox) == 3
    # Another email is not concerned.
    assert ask_reset("someone-else@stmary.example", address="198.51.100.99").status_code == 302


def test_password_reset_requests_are_limited_per_address(db: None) -> None:
    statuses = [ask_reset(f"person{n}@example.org").status_code for n in range(11)]
    assert statuses == [302] * 10 + [429]
    assert ask_reset("person99@example.org", address=ELSEWHERE).status_code == 302


def test_password_reset_limit_looks_the_same_for_unknown_emails(db: None) -> None:
    statuses = [ask_reset("nobody@nowhere.example").status_code for _ in range(4)]
    assert statuses == [302, 302, 302, 429]


def test_password_reset_refusal_says_how_long_the_window_lasts(
    org: Organization, owner: Membership, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenants import lockout

    for _ in range(3):
        ask_reset(OWNER)
    start = lockout.time.time()
    monkeypatch.setattr(lockout.time, "time", lambda: start + 59 * 60 + 10)
    refused = ask_reset(OWNER)
    assert refused.status_code == 429
    assert "Try again in 1 minute;" in refused.content.decode()
