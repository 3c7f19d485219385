"""The public invitation page: accept as the invited user, sign up, and every refusal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Invitation, Membership, Organization, SecurityPolicy
from tenants.roles import Role
from tests.factories import PASSWORD, UserFactory

User = get_user_model()
INVITED = "new.radiologist@stmary.example"
STRONG = "Scan-Archive-Orbit-42"


@pytest.fixture
def invited(org: Organization, owner: Membership) -> tuple[Invitation, str]:
    return services.invitation_create(
        org=org, email=INVITED, role=Role.AUDITOR, actor=Actor(user=owner.user)
    )


def make_user(email: str, username: str | None = None) -> Any:
    return UserFactory(email=email, username=username or email)


def url(secret: str) -> str:
    return reverse("invitation-accept", args=[secret])


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_page_shows_organization_role_and_state(invited: tuple[Invitation, str]) -> None:
    _, secret = invited
    response = Client().get(url(secret))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Join St. Mary Hospital on Strata" in content
    assert "Auditor" in content
    assert "Pending" in content
    assert INVITED in content


def test_unknown_secret_is_404(db: None) -> None:
    response = Client().get(url("not-a-real-secret"))
    assert response.status_code == 404
    assert "This invitation link is not valid." in response.content.decode()


def test_invited_user_accepts_and_lands_on_the_dashboard(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    invitation, secret = invited
    user = make_user(INVITED, INVITED)
    client = logged_in(user)
    page = client.get(url(secret))
    assert page.status_code == 200
    assert "Accept and join St. Mary Hospital" in page.content.decode()

    response = client.post(url(secret))
    assert response.status_code == 302
    assert response["Location"] == reverse("portal-dashboard", args=[org.slug])
    membership = Membership.objects.get(organization=org, user=user)
    assert membership.role == Role.AUDITOR
    invitation.refresh_from_db()
    assert invitation.state == "accepted"
    assert invitation.accepted_by == user
    event = AuditEvent.objects.for_org(org).get(action="invitation.accepted")
    assert event.actor_user == user
    assert client.get(reverse("portal-dashboard", args=[org.slug])).status_code == 200


def test_invited_email_matches_case_insensitively(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    _, secret = invited
    user = make_user(INVITED.upper(), "radiologist")
    assert logged_in(user).post(url(secret)).status_code == 302
    assert Membership.objects.filter(organization=org, user=user).exists()


def test_used_invitation_cannot_be_reused(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    _, secret = invited
    user = make_user(INVITED, INVITED)
    client = logged_in(user)
    assert client.post(url(secret)).status_code == 302

    again = client.post(url(secret))
    assert again.status_code == 409
    assert "already been used" in again.content.decode()
    assert client.get(url(secret)).status_code == 409
    assert Membership.objects.filter(organization=org, user=user).count() == 1
    assert AuditEvent.objects.for_org(org).filter(action="invitation.accepted").count() == 1


def test_expired_invitation_is_refused(org: Organization, invited: tuple[Invitation, str]) -> None:
    invitation, secret = invited
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    user = make_user(INVITED, INVITED)
    client = logged_in(user)
    page = client.get(url(secret))
    assert page.status_code == 410
    assert "This invitation has expired" in page.content.decode()
    assert client.post(url(secret)).status_code == 410
    assert not Membership.objects.filter(organization=org, user=user).exists()


def test_expired_invitation_refuses_signup(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    invitation, secret = invited
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = Client().post(
        url(secret), {"name": "New Person", "password1": STRONG, "password2": STRONG}
    )
    assert response.status_code == 410
    assert not User.objects.filter(email=INVITED).exists()


def test_revoked_invitation_is_refused(
    org: Organization, owner: Membership, invited: tuple[Invitation, str]
) -> None:
    invitation, secret = invited
    services.invitation_revoke(org=org, invitation=invitation, actor=Actor(user=owner.user))
    response = Client().get(url(secret))
    assert response.status_code == 410
    assert "withdrawn" in response.content.decode()


def test_wrong_user_is_refused(
    org: Organization, invited: tuple[Invitation, str], make_member: Callable[..., Membership]
) -> None:
    invitation, secret = invited
    intruder = make_user("someone.else@stmary.example")
    client = logged_in(intruder)
    page = client.get(url(secret))
    assert page.status_code == 403
    content = page.content.decode()
    assert f"This invitation is for <strong>{INVITED}</strong>" in content
    assert "Accept and join" not in content

    response = client.post(url(secret))
    assert response.status_code == 403
    assert not Membership.objects.filter(organization=org, user=intruder).exists()
    invitation.refresh_from_db()
    assert invitation.state == "pending"


def test_existing_account_is_asked_to_sign_in(invited: tuple[Invitation, str]) -> None:
    _, secret = invited
    make_user(INVITED, INVITED)
    response = Client().get(url(secret))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Sign in to accept" in content
    assert f"{reverse('login')}?next=%2Finvitations%2F{secret}%2F" in content
    assert 'name="password1"' not in content

    # Posting a sign-up for an existing account is refused and changes nothing.
    refused = Client().post(url(secret), {"name": "X", "password1": STRONG, "password2": STRONG})
    assert refused.status_code == 409
    assert User.objects.filter(email=INVITED).count() == 1


def test_sign_in_then_accept(org: Organization, invited: tuple[Invitation, str]) -> None:
    _, secret = invited
    make_user(INVITED, INVITED)
    client = Client()
    login = client.post(
        f"{reverse('login')}?next={url(secret)}",
        {"username": INVITED, "password": PASSWORD, "next": url(secret)},
    )
    assert login.status_code == 302
    assert login["Location"] == url(secret)
    assert client.post(url(secret)).status_code == 302
    assert Membership.objects.filter(organization=org, user__email=INVITED).exists()


def test_signup_creates_the_user_and_the_membership_and_logs_in(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    invitation, secret = invited
    client = Client()
    page = client.get(url(secret))
    assert 'name="password1"' in page.content.decode()

    response = client.post(
        url(secret), {"name": "Rosa Lind", "password1": STRONG, "password2": STRONG}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("portal-dashboard", args=[org.slug])
    user = User.objects.get(email=INVITED)
    assert user.username == INVITED
    assert (user.first_name, user.last_name) == ("Rosa", "Lind")
    assert user.check_password(STRONG)
    assert Membership.objects.get(organization=org, user=user).role == Role.AUDITOR
    invitation.refresh_from_db()
    assert invitation.accepted_by == user
    # Logged in: the dashboard opens without another sign-in.
    assert client.get(reverse("portal-dashboard", args=[org.slug])).status_code == 200
    assert Client().login(request=HttpRequest(), username=INVITED, password=STRONG)


@pytest.mark.parametrize(
    "data,field,message",
    [
        (
            {"name": "Rosa Lind", "password1": STRONG, "password2": STRONG + "x"},
            "password2",
            "do not match",
        ),
        (
            {"name": "Rosa Lind", "password1": "password", "password2": "password"},
            "password1",
            "too common",
        ),
        (
            {"name": "Rosa Lind", "password1": "8731946205", "password2": "8731946205"},
            "password1",
            "entirely numeric",
        ),
        ({"name": "", "password1": STRONG, "password2": STRONG}, "name", "This field is required."),
    ],
)
def test_invalid_signup_is_a_400_and_creates_nothing(
    data: dict[str, str],
    field: str,
    message: str,
    org: Organization,
    invited: tuple[Invitation, str],
) -> None:
    invitation, secret = invited
    response = Client().post(url(secret), data)
    assert response.status_code == 400
    content = response.content.decode()
    assert f'id="id_{field}_error"' in content
    assert message in content
    assert not User.objects.filter(email=INVITED).exists()
    assert not Membership.objects.filter(organization=org, user__email=INVITED).exists()
    invitation.refresh_from_db()
    assert invitation.state == "pending"


@pytest.mark.parametrize("status", [Organization.Status.SUSPENDED, Organization.Status.CLOSED])
def test_inactive_organization_refuses_acceptance(
    status: str, org: Organization, invited: tuple[Invitation, str]
) -> None:
    _, secret = invited
    Organization.objects.filter(pk=org.pk).update(status=status)
    response = Client().post(
        url(secret), {"name": "Rosa Lind", "password1": STRONG, "password2": STRONG}
    )
    assert response.status_code == 403
    assert f"St. Mary Hospital is {status}" in response.content.decode()
    assert not User.objects.filter(email=INVITED).exists()


def test_signup_into_an_organization_requiring_a_second_factor_goes_to_enrolment(
    org: Organization, invited: tuple[Invitation, str]
) -> None:
    _, secret = invited
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    client = Client()
    response = client.post(
        url(secret), {"name": "Rosa Lind", "password1": STRONG, "password2": STRONG}
    )
    assert response.status_code == 302
    # Signed in, but every page leads to enrolment until a factor is added.
    dashboard = client.get(reverse("portal-dashboard", args=[org.slug]))
    assert dashboard.status_code == 302
    assert dashboard["Location"].startswith(reverse("mfa-factors"))


def test_a_deactivated_membership_is_not_offered_on_the_home_page(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    other = make_member(org, "member", email="leaver@stmary.example")
    other.deactivated_at = timezone.now()
    other.save(update_fields=["deactivated_at"])
    client = Client()
    client.force_login(other.user)
    page = client.get(reverse("portal-home"))
    assert page.status_code == 200
    assert org.name not in page.content.decode()
