"""Reads of single sign-on: an organization's provider and email domains, and, across
organizations, which one holds an email domain verified (sign-in by email)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from tenants.errors import NotFound
from tenants.models import EmailDomain, IdentityProvider, Membership, Organization
from tenants.roles import Role


def provider_get(*, org: Organization) -> IdentityProvider | None:
    return IdentityProvider.objects.for_org(org).first()


def domain_list(*, org: Organization) -> QuerySet[EmailDomain]:
    return EmailDomain.objects.for_org(org).order_by("domain", "id")


def domain_get(*, org: Organization, domain_id: int | str) -> EmailDomain:
    try:
        return EmailDomain.objects.for_org(org).get(pk=int(domain_id))
    except (EmailDomain.DoesNotExist, ValueError):
        raise NotFound("Email domain not found.") from None


def email_domain_of(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower().rstrip(".") if "@" in email else ""


def provider_for_email(*, email: str) -> IdentityProvider | None:
    """The enabled provider (OpenID Connect or SAML 2.0) of the organization that holds ``email``'s domain
    verified, or None. Only one organization can hold a domain verified (a unique constraint)."""
    domain = email_domain_of(email)
    if not domain:
        return None
    holder = (
        EmailDomain.objects.filter(domain=domain, verified_at__isnull=False)
        .select_related("organization")
        .first()
    )
    if holder is None or not holder.organization.is_active:
        return None
    return (
        IdentityProvider.objects.for_org(holder.organization)
        .filter(enabled=True)
        .select_related("organization")
        .first()
    )


def domain_verified_holder(*, domain: str) -> EmailDomain | None:
    return EmailDomain.objects.filter(domain=domain, verified_at__isnull=False).first()


def password_refused_in(*, user: Any) -> list[Organization]:
    """The organizations whose "SSO required" forbids ``user`` a password sign-in: those where
    they are an active member other than owner (owners keep the password as break-glass)."""
    memberships = (
        Membership.objects.filter(
            user=user,
            deactivated_at__isnull=True,
            organization__identity_provider__sso_required=True,
            organization__identity_provider__enabled=True,
        )
        .exclude(role=Role.OWNER)
        .select_related("organization")
    )
    return [m.organization for m in memberships]
