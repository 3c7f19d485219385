"""The demo accounts of seed_demo sign in with the documented password, also on a database seeded
by an older version, and seeding sends no "set your password" email to an owner who has one."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.test import Client

from saas.management.commands.seed_demo import DEMO_EMAIL, DEMO_PASSWORD, STAFF
from tenants.context import Actor
from tenants.services import organization_create

pytestmark = pytest.mark.django_db

DEMO_ACCOUNTS = [DEMO_EMAIL, *(email for email, _ in STAFF)]


def seed() -> None:
    call_command("seed_demo", quiet=True, history_studies=4)


def signs_in(email: str) -> bool:
    response = Client().post(
        "/accounts/login/", {"username": email, "password": DEMO_PASSWORD}, follow=False
    )
    return response.status_code == 302


@pytest.mark.parametrize("email", DEMO_ACCOUNTS)
def test_every_demo_account_signs_in_with_the_documented_password(
    email: str, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        seed()
    assert signs_in(email)


def test_seeding_sends_no_set_your_password_email(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        seed()
    assert [m.subject for m in mail.outbox if "ready" in m.subject] == []
    assert not any("Set your password" in m.body for m in mail.outbox)


def test_reseeding_repairs_accounts_left_with_an_empty_password() -> None:
    seed()
    # What get_or_create made before: an empty password, "usable" to Django, matching nothing.
    get_user_model().objects.filter(email__in=DEMO_ACCOUNTS).update(password="")
    assert not any(signs_in(email) for email in DEMO_ACCOUNTS)
    seed()
    assert all(signs_in(email) for email in DEMO_ACCOUNTS)


def test_reseeding_keeps_working_passwords_as_they_are() -> None:
    seed()
    before = dict(
        get_user_model().objects.filter(email__in=DEMO_ACCOUNTS).values_list("email", "password")
    )
    seed()
    after = dict(
        get_user_model().objects.filter(email__in=DEMO_ACCOUNTS).values_list("email", "password")
    )
    assert after == before


def test_a_new_owner_who_already_has_a_password_gets_no_set_password_email(
    django_capture_on_commit_callbacks,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        organization_create(
            name="West",
            slug="west",
            owner_email="owner@west.example",
            owner_password="a-long-passphrase-9",
            actor=Actor.system(),
        )
    assert mail.outbox == []
    assert (
        get_user_model()
        .objects.get(email="owner@west.example")
        .check_password("a-long-passphrase-9")
    )


def test_an_existing_user_with_a_password_made_owner_gets_no_set_password_email(
    django_capture_on_commit_callbacks,
) -> None:
    user = get_user_model().objects.create_user(
        username="cio@north.example", email="cio@north.example", password="a-long-passphrase-9"
    )
    with django_capture_on_commit_callbacks(execute=True):
        organization_create(
            name="North", slug="north", owner_email="CIO@north.example", actor=Actor.system()
        )
    assert mail.outbox == []
    user.refresh_from_db()
    assert user.check_password("a-long-passphrase-9")
