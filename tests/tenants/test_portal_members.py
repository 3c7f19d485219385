"""Members page: role changes, removal, invitations, and the owner rules through the portal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Invitation, Membership, Organization
from tenants.roles import Role


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def members_url(org: Organization) -> str:
    return reverse("portal-members", args=[org.slug])


def role_url(org: Organization, membership: Membership) -> str:
    return reverse("portal-member-role", args=[org.slug, membership.pk])


def remove_url(org: Organization, membership: Membership) -> str:
    return reverse("portal-member-remove", args=[org.slug, membership.pk])


def test_members_page_lists_members_with_roles(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    make_member(org, Role.AUDITOR, email="carol@stmary.example")
    content = client_for(owner).get(members_url(org)).content.decode()
    assert "owner@stmary.example" in content
    assert "carol@stmary.example" in content
    assert '<option value="auditor" selected>Auditor</option>' in content


def test_member_without_manage_sees_no_forms(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    member = make_member(org, Role.MEMBER)
    content = client_for(member).get(members_url(org)).content.decode()
    assert "owner@stmary.example" in content
    assert "/role/" not in content
    assert "/remove/" not in content
    assert "Invite a member" not in content


def test_owner_changes_a_role(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    member = make_member(org, Role.MEMBER, email="erin@stmary.example")
    response = client_for(owner).post(role_url(org, member), {"role": Role.AUDITOR}, follow=True)
    assert response.redirect_chain == [(members_url(org), 302)]
    assert "erin@stmary.example is now auditor." in response.content.decode()
    member.refresh_from_db()
    assert member.role == Role.AUDITOR
    event = AuditEvent.objects.for_org(org).get(action="member.role_changed")
    assert event.actor_user == owner.user
    assert event.details == {"role": {"from": "member", "to": "auditor"}}


def test_invalid_role_is_a_400_and_changes_nothing(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    member = make_member(org, Role.MEMBER)
    response = client_for(owner).post(role_url(org, member), {"role": "superuser"})
    assert response.status_code == 400
    assert "Choose a valid role" in response.content.decode()
    member.refresh_from_db()
    assert member.role == Role.MEMBER
    assert not AuditEvent.objects.for_org(org).filter(action="member.role_changed").exists()


def test_last_owner_cannot_be_demoted_through_the_portal(
    org: Organization, owner: Membership
) -> None:
    response = client_for(owner).post(role_url(org, owner), {"role": Role.ADMIN})
    assert response.status_code == 409
    assert "The last owner cannot be demoted" in response.content.decode()
    owner.refresh_from_db()
    assert owner.role == Role.OWNER
    assert not AuditEvent.objects.for_org(org).filter(action="member.role_changed").exists()


def test_last_owner_cannot_be_removed_through_the_portal(
    org: Organization, owner: Membership
) -> None:
    response = client_for(owner).post(remove_url(org, owner))
    assert response.status_code == 409
    assert "The last owner cannot be removed" in response.content.decode()
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_an_owner_can_step_down_when_another_owner_remains(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    make_member(org, Role.OWNER)
    response = client_for(owner).post(role_url(org, owner), {"role": Role.ADMIN})
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.role == Role.ADMIN


def test_admin_cannot_grant_owner(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN)
    member = make_member(org, Role.MEMBER)
    response = client_for(admin).post(role_url(org, member), {"role": Role.OWNER})
    assert response.status_code == 403
    assert "Only an owner may grant" in response.content.decode()
    member.refresh_from_db()
    assert member.role == Role.MEMBER


def test_admin_cannot_touch_an_owner(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN)
    client = client_for(admin)
    content = client.get(members_url(org)).content.decode()
    assert role_url(org, owner) not in content
    assert client.post(role_url(org, owner), {"role": Role.MEMBER}).status_code == 403
    assert client.post(remove_url(org, owner)).status_code == 403
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_remove_asks_for_confirmation_then_removes(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    member = make_member(org, Role.MEMBER, email="erin@stmary.example")
    client = client_for(owner)
    confirm = client.get(remove_url(org, member))
    assert confirm.status_code == 200
    assert "Remove erin@stmary.example?" in confirm.content.decode()
    assert Membership.objects.filter(pk=member.pk).exists()

    response = client.post(remove_url(org, member), follow=True)
    assert response.redirect_chain == [(members_url(org), 302)]
    assert "erin@stmary.example was removed" in response.content.decode()
    assert not Membership.objects.filter(pk=member.pk).exists()
    event = AuditEvent.objects.for_org(org).get(action="member.removed")
    assert event.target_label == "erin@stmary.example"
    assert event.actor_user == owner.user


def test_leaving_the_organization_goes_home(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN)
    response = client_for(admin).post(remove_url(org, admin))
    assert response.status_code == 302
    assert response["Location"] == reverse("portal-home")
    assert not Membership.objects.filter(pk=admin.pk).exists()


def test_invite_sends_an_email_and_lists_the_invitation(
    org: Organization,
    owner: Membership,
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = client_for(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("portal-invitation-create", args=[org.slug]),
            {"email": "New.Person@StMary.example", "role": Role.AUDITOR},
        )
    assert response.status_code == 302
    invitation = Invitation.objects.for_org(org).get()
    assert invitation.email == "new.person@stmary.example"
    assert invitation.role == Role.AUDITOR
    assert invitation.invited_by == owner.user
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["new.person@stmary.example"]
    assert "/invitations/" in mail.outbox[0].body
    assert AuditEvent.objects.for_org(org).filter(action="invitation.created").count() == 1

    content = client.get(members_url(org)).content.decode()
    assert "new.person@stmary.example" in content
    assert "badge-pending" in content
    assert reverse("portal-invitation-revoke", args=[org.slug, invitation.pk]) in content


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"email": "not-an-email", "role": Role.MEMBER}, "email", "Enter a valid email address."),
        ({"email": "", "role": Role.MEMBER}, "email", "This field is required."),
        ({"email": "x@stmary.example", "role": "root"}, "role", "Select a valid choice."),
        ({"email": "owner@stmary.example", "role": Role.MEMBER}, "email", "already a member"),
    ],
)
def test_invalid_invitation_is_a_400_with_field_errors(
    data: dict[str, str], field: str, message: str, org: Organization, owner: Membership
) -> None:
    response = client_for(owner).post(reverse("portal-invitation-create", args=[org.slug]), data)
    assert response.status_code == 400
    content = response.content.decode()
    assert f'id="id_{field}_error"' in content
    assert message in content
    assert f'aria-describedby="id_{field}_error"' in content
    assert 'aria-invalid="true"' in content
    assert not Invitation.objects.exists()
    assert len(mail.outbox) == 0


def test_admin_may_not_invite_an_owner(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> None:
    admin = make_member(org, Role.ADMIN)
    client = client_for(admin)
    assert '<option value="owner"' not in client.get(members_url(org)).content.decode()
    response = client.post(
        reverse("portal-invitation-create", args=[org.slug]),
        {"email": "boss@stmary.example", "role": Role.OWNER},
    )
    assert response.status_code == 400
    assert not Invitation.objects.exists()


def test_revoke_invitation(org: Organization, owner: Membership) -> None:
    invitation, _ = services.invitation_create(
        org=org, email="x@stmary.example", role=Role.MEMBER, actor=Actor.system("tests")
    )
    client = client_for(owner)
    url = reverse("portal-invitation-revoke", args=[org.slug, invitation.pk])
    response = client.post(url, follow=True)
    assert "The invitation of x@stmary.example was revoked." in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.state == "revoked"
    assert AuditEvent.objects.for_org(org).filter(action="invitation.revoked").count() == 1

    again = client.post(url)
    assert again.status_code == 409
    assert "is revoked and cannot be revoked" in again.content.decode()
    assert AuditEvent.objects.for_org(org).filter(action="invitation.revoked").count() == 1
