"""The one permission matrix: which role, and which token scope, may do what.

Roles belong to people (memberships); scopes belong to API tokens. Both resolve to the same
permission names, so every view checks a permission and never a role or a scope directly.
Only an owner may grant, change or remove the owner role (enforced in services).
"""

from __future__ import annotations

from enum import nonmember

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    BILLING = "billing", "Billing"
    AUDITOR = "auditor", "Auditor"
    MEMBER = "member", "Member"


class Scope(models.TextChoices):
    DICOM_READ = "dicom:read", "Read images (QIDO-RS, WADO-RS)"
    DICOM_WRITE = "dicom:write", "Send images (STOW-RS)"
    USAGE_READ = "usage:read", "Read usage and invoices"
    ADMIN = "admin", "Administer the organization"
    # The SCIM token's scope, on no other token: not a member of the enum, so that the token
    # form, the token API and every list of scopes leave it out. Whoever provisions members
    # through SCIM can map groups to any role, so only an owner creates this token, on the
    # Security page (tenants.scim); it may call /scim/v2/ and nothing else, and no other token
    # may call /scim/v2/.
    SCIM = nonmember("scim")


SCIM_SCOPE_LABEL = "Provision members (SCIM)"


class Perm:
    ORG_VIEW = "org.view"
    MEMBERS_VIEW = "members.view"
    MEMBERS_MANAGE = "members.manage"
    TOKENS_MANAGE = "tokens.manage"
    WEBHOOKS_MANAGE = "webhooks.manage"
    STORAGE_MANAGE = "storage.manage"
    POLICIES_MANAGE = "policies.manage"
    HOLDS_MANAGE = "holds.manage"
    SETTINGS_MANAGE = "settings.manage"
    INVOICES_VIEW = "invoices.view"
    BILLING_MANAGE = "billing.manage"
    IMAGES_READ = "images.read"
    IMAGES_WRITE = "images.write"
    AUDIT_READ = "audit.read"
    # Single sign-on, email domains, the second-factor policy and the SCIM token: owners only,
    # never a token scope (whoever maps IdP groups to roles can make themselves an owner).
    SECURITY_MANAGE = "security.manage"
    # The SCIM token's one permission; no role has it (owners manage the token in the portal
    # through SECURITY_MANAGE).
    SCIM_PROVISION = "scim.provision"


PERMISSION_DESCRIPTIONS: dict[str, str] = {
    Perm.ORG_VIEW: "see the organization",
    Perm.MEMBERS_VIEW: "see the members",
    Perm.MEMBERS_MANAGE: "invite, change and remove members",
    Perm.TOKENS_MANAGE: "create and revoke API tokens",
    Perm.WEBHOOKS_MANAGE: "manage webhooks",
    Perm.STORAGE_MANAGE: "manage storage locations",
    Perm.POLICIES_MANAGE: "manage archive policies",
    Perm.HOLDS_MANAGE: "set and lift legal holds",
    Perm.SETTINGS_MANAGE: "change organization settings",
    Perm.INVOICES_VIEW: "see usage and invoices",
    Perm.BILLING_MANAGE: "manage budgets and billing settings",
    Perm.IMAGES_READ: "read images",
    Perm.IMAGES_WRITE: "send images",
    Perm.AUDIT_READ: "read the audit log",
    Perm.SECURITY_MANAGE: "configure single sign-on, MFA and provisioning",
    Perm.SCIM_PROVISION: "provision members (SCIM)",
}

_MANAGE = {
    Perm.MEMBERS_MANAGE,
    Perm.TOKENS_MANAGE,
    Perm.WEBHOOKS_MANAGE,
    Perm.STORAGE_MANAGE,
    Perm.POLICIES_MANAGE,
    Perm.HOLDS_MANAGE,
    Perm.SETTINGS_MANAGE,
    Perm.BILLING_MANAGE,
}
_EVERYONE = {Perm.ORG_VIEW, Perm.MEMBERS_VIEW}

_PORTAL = set(PERMISSION_DESCRIPTIONS) - {Perm.SCIM_PROVISION}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(_PORTAL),
    Role.ADMIN: frozenset(_PORTAL - {Perm.SECURITY_MANAGE}),
    Role.BILLING: frozenset(_EVERYONE | {Perm.INVOICES_VIEW, Perm.BILLING_MANAGE}),
    Role.AUDITOR: frozenset(_EVERYONE | {Perm.AUDIT_READ, Perm.INVOICES_VIEW}),
    Role.MEMBER: frozenset(_EVERYONE | {Perm.IMAGES_READ, Perm.IMAGES_WRITE}),
}

SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    Scope.DICOM_READ: frozenset({Perm.ORG_VIEW, Perm.IMAGES_READ}),
    Scope.DICOM_WRITE: frozenset({Perm.ORG_VIEW, Perm.IMAGES_WRITE}),
    Scope.USAGE_READ: frozenset({Perm.ORG_VIEW, Perm.INVOICES_VIEW}),
    Scope.ADMIN: frozenset(_EVERYONE | _MANAGE | {Perm.AUDIT_READ, Perm.INVOICES_VIEW}),
    Scope.SCIM: frozenset({Perm.SCIM_PROVISION}),
}

# Which scope a token needs for a permission, to name it in a 403.
PERMISSION_SCOPE: dict[str, str] = {
    perm: scope for scope, perms in reversed(list(SCOPE_PERMISSIONS.items())) for perm in perms
}


def role_permissions(role: str) -> frozenset[str]:
    return ROLE_PERMISSIONS.get(role, frozenset())


def scopes_permissions(scopes: list[str]) -> frozenset[str]:
    result: set[str] = set()
    for scope in scopes:
        result |= SCOPE_PERMISSIONS.get(scope, frozenset())
    return frozenset(result)
