"""Invitations through the API: the link goes by email only; revocation; state filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from tenants import services
from tenants.context import Actor
from tenants.models import ApiToken, AuditEvent, Invitation, Membership, Organization
from tenants.roles import Role, Scope
from tests.tenants.test_api_support import bearer_client, error, session_client


def test_invitation_is_created_and_its_link_only_emailed(
    org: Organization,
    owner: Membership,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    client = session_client(owner.user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/api/v1/o/{org.slug}/invitations/",
            {"email": "New.Doctor@StMary.example", "role": "admin"},
            format="json",
        )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {
        "id",
        "email",
        "role",
        "state",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    }
    assert body["email"] == "new.doctor@stmary.example"
    assert (body["role"], body["state"], body["invited_by"]) == (
        "admin",
        "pending",
        "owner@stmary.example",
    )
    [message] = mail.outbox
    link = next(line for line in message.body.splitlines() if "/invitations/" in line)
    secret = link.rstrip("/").rsplit("/", 1)[-1]
    assert secret not in response.content.decode()
    event = AuditEvent.objects.for_org(org).get(action="invitation.created")
    assert event.actor_user_id == owner.user.pk


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"email"}),
        ({"email": "not-an-address"}, {"email"}),
        ({"email": "a@b.example", "role": "king"}, {"role"}),
        ({"email": "owner@stmary.example", "role": "member"}, {"email"}),
    ],
    ids=["missing", "bad-email", "bad-role", "already-member"],
)
def test_invalid_invitation_gets_400_and_creates_nothing(
    org: Organization, owner: Membership, payload: dict[str, Any], fields: set[str]
) -> None:
    client = session_client(owner.user)
    before = Invitation.objects.count()

    response = client.post(f"/api/v1/o/{org.slug}/invitations/", payload, format="json")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == fields
    assert Invitation.objects.count() == before
    assert not AuditEvent.objects.filter(action="invitation.created").exists()


@pytest.fixture
def invitations(org: Organization) -> dict[str, Invitation]:
    actor = Actor.system("tests")
    pending, _ = services.invitation_create(
        org=org, email="pending@x.example", role=Role.MEMBER, actor=actor
    )
    revoked, _ = services.invitation_create(
        org=org, email="revoked@x.example", role=Role.MEMBER, actor=actor
    )
    services.invitation_revoke(org=org, invitation=revoked, actor=actor)
    accepted, _ = services.invitation_create(
        org=org, email="accepted@x.example", role=Role.MEMBER, actor=actor
    )
    Invitation.objects.filter(pk=accepted.pk).update(accepted_at=timezone.now())
    return {"pending": pending, "revoked": revoked, "accepted": accepted}


@pytest.mark.parametrize(
    ("query", "emails"),
    [
        ("", ["accepted@x.example", "revoked@x.example", "pending@x.example"]),
        ("?state=pending", ["pending@x.example"]),
        ("?state=revoked", ["revoked@x.example"]),
        ("?state=accepted", ["accepted@x.example"]),
    ],
)
def test_invitation_list_filters_by_state(
    org: Organization,
    invitations: dict[str, Invitation],
    token_client: Callable[..., Any],
    query: str,
    emails: list[str],
) -> None:
    response = token_client(org, [Scope.ADMIN]).get(f"/api/v1/invitations/{query}")

    assert response.status_code == 200
    assert [i["email"] for i in response.json()["results"]] == emails


def test_invitation_list_rejects_an_unknown_state(
    org: Organization, token_client: Callable[..., Any]
) -> None:
    response = token_client(org).get("/api/v1/invitations/?state=lost")

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"state"}


def test_invitation_revoke_by_token_is_audited_and_only_works_once(
    org: Organization,
    invitations: dict[str, Invitation],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    token, secret = make_token(org, [Scope.ADMIN])
    client = bearer_client(secret)
    invitation = invitations["pending"]

    first = client.delete(f"/api/v1/invitations/{invitation.pk}/")
    second = client.delete(f"/api/v1/invitations/{invitation.pk}/")

    assert first.status_code == 204
    assert client.get(f"/api/v1/invitations/{invitation.pk}/").json()["state"] == "revoked"
    assert second.status_code == 409
    assert error(second)["code"] == "invitation_not_pending"
    event = AuditEvent.objects.for_org(org).get(
        action="invitation.revoked", target_id=str(invitation.pk)
    )
    assert event.actor_token_id == token.pk
