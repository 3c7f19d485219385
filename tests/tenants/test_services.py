from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from tenants.context import Actor
from tenants.errors import Conflict, NotFound, PermissionMissing, ValidationFailed
from tenants.models import ApiToken, AuditEvent, Invitation, Membership, Organization
from tenants.roles import Role
from tenants.services import (
    TokenRejected,
    invitation_accept,
    invitation_create,
    invitation_revoke,
    membership_change_role,
    membership_remove,
    organization_create,
    organization_set_status,
    token_authenticate,
    token_create,
    token_revoke,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def as_user(membership: Membership) -> Actor:
    return Actor(user=membership.user, ip="10.1.2.3", user_agent="pytest")


def test_organization_create_makes_owner_and_audits():
    org = organization_create(
        name="North Clinic", slug="north", owner_email="Boss@North.example", actor=Actor.system()
    )
    membership = Membership.objects.get(organization=org)
    assert membership.role == Role.OWNER
    assert membership.user.email == "boss@north.example"
    assert AuditEvent.objects.for_org(org).filter(action="organization.created").count() == 1


@pytest.mark.parametrize(
    ("name", "slug", "email", "field"),
    [
        ("", "ok-slug", "a@b.example", "name"),
        ("Clinic", "bad slug!", "a@b.example", "slug"),
        ("Clinic", "ok-slug", "not-an-email", "owner_email"),
    ],
)
def test_organization_create_rejects_bad_input_without_writing(name, slug, email, field):
    with pytest.raises(ValidationFailed) as err:
        organization_create(name=name, slug=slug, owner_email=email, actor=Actor.system())
    assert field in err.value.fields
    assert not Organization.objects.exists()


def test_organization_slug_is_unique(org):
    with pytest.raises(ValidationFailed) as err:
        organization_create(
            name="Again", slug=org.slug, owner_email="x@y.example", actor=Actor.system()
        )
    assert "already exists" in err.value.fields["slug"][0]


def test_last_owner_cannot_be_demoted_or_removed(org, owner):
    with pytest.raises(Conflict) as err:
        membership_change_role(org=org, membership=owner, role=Role.ADMIN, actor=as_user(owner))
    assert err.value.code == "last_owner"
    with pytest.raises(Conflict):
        membership_remove(org=org, membership=owner, actor=as_user(owner))
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_owner_can_step_down_once_another_owner_exists(org, owner, make_member):
    second = make_member(org, Role.ADMIN)
    membership_change_role(org=org, membership=second, role=Role.OWNER, actor=as_user(owner))
    membership_change_role(org=org, membership=owner, role=Role.MEMBER, actor=as_user(owner))
    owner.refresh_from_db()
    assert owner.role == Role.MEMBER
    event = AuditEvent.objects.for_org(org).filter(action="member.role_changed").first()
    assert event.details == {"role": {"from": "owner", "to": "member"}}
    assert event.ip == "10.1.2.3"


def test_admin_cannot_grant_or_touch_owner_role(org, owner, make_member):
    admin = make_member(org, Role.ADMIN)
    member = make_member(org, Role.MEMBER)
    with pytest.raises(PermissionMissing):
        membership_change_role(org=org, membership=member, role=Role.OWNER, actor=as_user(admin))
    with pytest.raises(PermissionMissing):
        membership_remove(org=org, membership=owner, actor=as_user(admin))
    membership_change_role(org=org, membership=member, role=Role.BILLING, actor=as_user(admin))


def test_other_tenants_membership_is_not_found(org, other_org, owner, make_member):
    stranger = make_member(other_org, Role.MEMBER)
    with pytest.raises(NotFound):
        membership_remove(org=org, membership=stranger, actor=as_user(owner))


def test_invitation_email_accept_once(org, owner):
    invitation, secret = invitation_create(
        org=org, email="new.doc@stmary.example", role=Role.MEMBER, actor=as_user(owner)
    )
    assert len(mail.outbox) == 0  # sent only after commit
    with_commit = Invitation.objects.get(pk=invitation.pk)
    assert with_commit.token_hash != secret
    user = UserFactory(email="new.doc@stmary.example", username="new.doc@stmary.example")
    membership = invitation_accept(secret=secret, user=user, actor=Actor(user=user))
    assert membership.role == Role.MEMBER
    with pytest.raises(Conflict) as err:
        invitation_accept(secret=secret, user=user, actor=Actor(user=user))
    assert err.value.code == "invitation_used"


def test_invitation_email_is_sent_on_commit(org, owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _, secret = invitation_create(
            org=org, email="x@stmary.example", role=Role.AUDITOR, actor=as_user(owner)
        )
    assert len(mail.outbox) == 1
    assert f"/invitations/{secret}/" in mail.outbox[0].body
    assert mail.outbox[0].to == ["x@stmary.example"]


def test_expired_invitation_is_refused(org, owner):
    invitation, secret = invitation_create(
        org=org, email="late@stmary.example", role=Role.MEMBER, actor=as_user(owner)
    )
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    user = UserFactory(email="late@stmary.example", username="late@stmary.example")
    with pytest.raises(Conflict) as err:
        invitation_accept(secret=secret, user=user, actor=Actor(user=user))
    assert err.value.code == "invitation_expired"
    assert not Membership.objects.filter(user=user).exists()


def test_invitation_for_someone_else_is_refused(org, owner):
    _, secret = invitation_create(
        org=org, email="intended@stmary.example", role=Role.MEMBER, actor=as_user(owner)
    )
    intruder = UserFactory()
    with pytest.raises(PermissionMissing):
        invitation_accept(secret=secret, user=intruder, actor=Actor(user=intruder))


def test_revoked_invitation_is_refused_and_new_invite_replaces_old(org, owner):
    first, first_secret = invitation_create(
        org=org, email="r@stmary.example", role=Role.MEMBER, actor=as_user(owner)
    )
    _, second_secret = invitation_create(
        org=org, email="r@stmary.example", role=Role.ADMIN, actor=as_user(owner)
    )
    first.refresh_from_db()
    assert first.state == "revoked"
    user = UserFactory(email="r@stmary.example", username="r@stmary.example")
    with pytest.raises(Conflict):
        invitation_accept(secret=first_secret, user=user, actor=Actor(user=user))
    second = Invitation.objects.for_org(org).get(revoked_at__isnull=True)
    invitation_revoke(org=org, invitation=second, actor=as_user(owner))
    with pytest.raises(Conflict) as err:
        invitation_accept(secret=second_secret, user=user, actor=Actor(user=user))
    assert err.value.code == "invitation_revoked"


def test_token_lifecycle(org, owner):
    token, secret = token_create(org=org, name="PACS", scopes=["dicom:write"], actor=as_user(owner))
    assert secret.startswith(f"strata_{token.prefix}_")
    assert secret not in (token.secret_hash, token.prefix)
    assert token_authenticate(raw=secret).pk == token.pk
    token.refresh_from_db()
    assert token.last_used_at is not None
    token_revoke(org=org, token=token, actor=as_user(owner))
    with pytest.raises(TokenRejected) as err:
        token_authenticate(raw=secret)
    assert err.value.code == "token_revoked"
    actions = list(AuditEvent.objects.for_org(org).values_list("action", flat=True))
    assert "token.created" in actions and "token.revoked" in actions


def test_expired_token_is_rejected(org):
    token, secret = token_create(
        org=org,
        name="short",
        scopes=["dicom:read"],
        actor=Actor.system(),
        expires_at=timezone.now() + timedelta(hours=1),
    )
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TokenRejected) as err:
        token_authenticate(raw=secret)
    assert err.value.code == "token_expired"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("garbage", "token_malformed"),
        ("strata_short_x", "token_malformed"),
        ("strata_deadbeef_wrongsecret", "token_unknown"),
    ],
)
def test_bad_token_strings_are_rejected(raw, code):
    with pytest.raises(TokenRejected) as err:
        token_authenticate(raw=raw)
    assert err.value.code == code


def test_suspended_organization_token_is_rejected(org):
    _, secret = token_create(org=org, name="t", scopes=["admin"], actor=Actor.system())
    organization_set_status(org=org, status=Organization.Status.SUSPENDED, actor=Actor.system())
    with pytest.raises(TokenRejected) as err:
        token_authenticate(raw=secret)
    assert err.value.code == "organization_inactive"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "scopes": ["admin"]}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": ["admin"], "expires_at": "past"}, "expires_at"),
    ],
)
def test_token_create_rejects_bad_input(org, kwargs, field):
    if kwargs.get("expires_at") == "past":
        kwargs["expires_at"] = timezone.now() - timedelta(days=1)
    with pytest.raises(ValidationFailed) as err:
        token_create(org=org, actor=Actor.system(), **kwargs)
    assert field in err.value.fields
    assert not ApiToken.objects.exists()


def test_audit_events_are_append_only(org, owner):
    event = AuditEvent.objects.for_org(org).first() or AuditEvent.objects.create(
        organization=org, action="x"
    )
    event.action = "tampered"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.for_org(org).update(action="tampered")
    with pytest.raises(PermissionError):
        AuditEvent.objects.for_org(org).delete()


def test_new_owner_gets_a_set_password_link(django_capture_on_commit_callbacks, client):
    with django_capture_on_commit_callbacks(execute=True):
        organization_create(
            name="East", slug="east", owner_email="new.owner@east.example", actor=Actor.system()
        )
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new.owner@east.example"]
    link = next(word for word in message.body.split() if "/accounts/reset/" in word)
    path = link.split("localhost:8000", 1)[1]
    response = client.get(path, follow=True)
    assert response.status_code == 200
    assert b"new_password1" in response.content


def test_invitation_signup_creates_account_and_membership(org, owner):
    from tenants.services import invitation_signup

    _, secret = invitation_create(
        org=org, email="fresh@stmary.example", role=Role.AUDITOR, actor=as_user(owner)
    )
    membership = invitation_signup(
        secret=secret, name="Fresh Face", password="a-long-passphrase-9", actor=Actor()
    )
    assert membership.role == Role.AUDITOR
    assert membership.user.check_password("a-long-passphrase-9")
    assert membership.user.first_name == "Fresh"
    with pytest.raises(Conflict):
        invitation_signup(
            secret=secret, name="Again", password="a-long-passphrase-9", actor=Actor()
        )


def test_invitation_signup_refused_leaves_no_account(org, owner):
    from django.contrib.auth import get_user_model

    from tenants.services import invitation_signup

    invitation, secret = invitation_create(
        org=org, email="late2@stmary.example", role=Role.MEMBER, actor=as_user(owner)
    )
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(Conflict):
        invitation_signup(secret=secret, name="Late", password="a-long-passphrase-9", actor=Actor())
    assert not get_user_model().objects.filter(email="late2@stmary.example").exists()
