"""Reads of second factors: a person's own, and an organization's view of its members."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from tenants.errors import NotFound
from tenants.mfa.models import RecoveryCode, TotpDevice, WebAuthnCredential
from tenants.models import Membership, Organization, SecurityPolicy
from tenants.roles import Role

ADMIN_ROLES = (Role.OWNER, Role.ADMIN)


def totp_list(*, user: Any) -> QuerySet[TotpDevice]:
    return TotpDevice.objects.filter(user=user)


def webauthn_list(*, user: Any) -> QuerySet[WebAuthnCredential]:
    return WebAuthnCredential.objects.filter(user=user)


def recovery_codes_left(*, user: Any) -> int:
    return RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()


def has_factor(*, user: Any) -> bool:
    """An authenticator app or a security key. Recovery codes stand in for a lost factor; on their
    own they are not one."""
    return totp_list(user=user).exists() or webauthn_list(user=user).exists()


def factor_get(*, user: Any, kind: str, factor_id: int) -> TotpDevice | WebAuthnCredential:
    """One of the person's own factors; anyone else's answers ``NotFound``."""
    row: TotpDevice | WebAuthnCredential | None = None
    if kind == "totp":
        row = TotpDevice.objects.filter(user=user, pk=factor_id).first()
    elif kind == "webauthn":
        row = WebAuthnCredential.objects.filter(user=user, pk=factor_id).first()
    if row is None:
        raise NotFound("No such sign-in factor on your account.")
    return row


def policy_get(*, org: Organization) -> SecurityPolicy:
    """The organization's policy; an organization that never set one requires nothing."""
    policy = SecurityPolicy.objects.filter(organization=org).first()
    return policy or SecurityPolicy(organization=org)


def policy_applies(*, level: str, role: str) -> bool:
    if level == SecurityPolicy.Mfa.ALL:
        return True
    return level == SecurityPolicy.Mfa.ADMINS and role in ADMIN_ROLES


def organizations_requiring_mfa(*, user: Any) -> list[Organization]:
    """The active organizations whose policy requires a second factor of this person, by their
    role there (deactivated memberships count for nothing)."""
    memberships = Membership.objects.filter(
        user=user,
        deactivated_at__isnull=True,
        organization__status=Organization.Status.ACTIVE,
        organization__security_policy__isnull=False,
    ).select_related("organization", "organization__security_policy")
    return [
        m.organization
        for m in memberships
        if policy_applies(level=m.organization.security_policy.mfa_required, role=m.role)
    ]


def members_without_factor(*, org: Organization, level: str | None = None) -> QuerySet[Membership]:
    """Active members of ``org`` who have no second factor; with ``level``, only those that policy
    level would cover."""
    has_totp = TotpDevice.objects.filter(user=OuterRef("user"))
    has_key = WebAuthnCredential.objects.filter(user=OuterRef("user"))
    qs = (
        Membership.objects.for_org(org)
        .filter(deactivated_at__isnull=True)
        .filter(~Exists(has_totp), ~Exists(has_key))
        .select_related("user")
        .order_by("user__email", "id")
    )
    if level == SecurityPolicy.Mfa.OFF:
        return qs.none()
    if level == SecurityPolicy.Mfa.ADMINS:
        qs = qs.filter(Q(role__in=ADMIN_ROLES))
    return qs
