"""Every write of SCIM provisioning: members (SCIM Users), SCIM groups and the roles they map to,
deactivation, and the SCIM token.

The identity provider is the source of truth for who belongs to the organization:

- A SCIM User is a ``Membership``; its ``id`` is ``Membership.scim_id``, its ``userName`` the
  person's email. A person who already has a Strata account (another hospital) keeps it; this
  organization's identity provider changes their name only while they belong to no other
  organization.
- ``active: false`` deactivates the membership: the person counts as no member anywhere in
  this organization (portal, API, DICOMweb), every open session of the person ends (sessions
  belong to the person, not to one organization, so they end even when the person belongs to
  another organization too) and the API tokens the person created in this organization are
  revoked. ``active: true`` reactivates the membership; revoked tokens stay revoked.
- ``DELETE /Users/<id>`` removes the membership (with the same effects first). Microsoft Entra
  ID and Okta deactivate with ``active: false`` and delete only when told to.
- Group membership decides the role when the organization maps groups to roles
  (``IdentityProvider.role_mapping``, keyed by group display name, matched exactly as single
  sign-on matches its groups claim):
  the highest of the mapped roles (owner, admin, billing, auditor, member in that order; owner
  only when a group maps to it), and member when the person is in no mapped group. Without a
  mapping, groups are kept but roles are left as the portal sets them. The last active owner
  is never demoted, deactivated or deleted by SCIM.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.context import Actor
from tenants.models import ApiToken, IdentityProvider, Membership, Organization, ScimGroup
from tenants.roles import Role, Scope
from tenants.scim.errors import ScimError, invalid_value
from tenants.services import (
    TOKEN_PREFIX,
    _hash,
    audit_record,
    member_role_write,
    sessions_end_for_user,
)

# Highest privilege first, as single sign-on ranks the roles of a person's groups.
from tenants.sso.services import ROLE_PRECEDENCE

logger = logging.getLogger(__name__)

SCIM_TOKEN_NAME = "SCIM provisioning"


def _uniqueness(detail: str) -> ScimError:
    return ScimError(409, detail, "uniqueness")


def _mutability(detail: str) -> ScimError:
    return ScimError(400, detail, "mutability")


@dataclass
class UserFields:
    """A SCIM User's writable attributes as Strata keeps them."""

    user_name: str
    given_name: str = ""
    family_name: str = ""
    external_id: str = ""
    active: bool = True


@dataclass
class GroupFields:
    display_name: str
    external_id: str = ""
    members: list[Membership] | None = None  # None: leave the members as they are


def _clean_user_fields(fields: UserFields) -> UserFields:
    user_name = (fields.user_name or "").strip().lower()
    if not user_name:
        raise invalid_value("userName is required.")
    if len(user_name) > 254:
        raise invalid_value("userName is longer than 254 characters.")
    try:
        validate_email(user_name)
    except ValidationError:
        raise invalid_value(
            f"userName must be the person's email address; {user_name!r} is not one."
        ) from None
    for label, value, limit in (
        ("name.givenName", fields.given_name, 150),
        ("name.familyName", fields.family_name, 150),
        ("externalId", fields.external_id, 255),
    ):
        if len(value) > limit:
            raise invalid_value(f"{label} is longer than {limit} characters.")
    return UserFields(
        user_name=user_name,
        given_name=fields.given_name.strip(),
        family_name=fields.family_name.strip(),
        external_id=fields.external_id.strip(),
        active=fields.active,
    )


def _belongs_elsewhere(user: Any, org: Organization) -> bool:
    return Membership.objects.filter(user=user).exclude(organization=org).exists()


def _active_owners_other_than_locked(*, org: Organization, membership: Membership) -> int:
    """Active owners left if ``membership`` stopped being one.

    Precondition: inside a transaction; the owner rows are locked so that two concurrent
    changes cannot both see "another owner remains"."""
    owners = list(
        Membership.objects.for_org(org)
        .select_for_update()
        .filter(role=Role.OWNER, deactivated_at__isnull=True)
        .values_list("id", flat=True)
    )
    return len([pk for pk in owners if pk != membership.pk])


def _refuse_last_owner(*, org: Organization, membership: Membership, what: str) -> None:
    if (
        membership.role == Role.OWNER
        and membership.deactivated_at is None
        and _active_owners_other_than_locked(org=org, membership=membership) == 0
    ):
        raise _mutability(
            f"{membership.user.email} is the organization's last active owner and cannot be "
            f"{what}; make someone else owner first."
        )


# --- roles from groups -----------------------------------------------------------------------


def role_mapping(*, org: Organization) -> dict[str, str]:
    """The organization's group display name -> role; empty without a mapping. Names match
    exactly, as the groups claim of single sign-on does."""
    provider = IdentityProvider.objects.for_org(org).first()
    mapping = provider.role_mapping if provider is not None else {}
    if not isinstance(mapping, dict):
        return {}
    return {
        str(name): role
        for name, role in mapping.items()
        if isinstance(role, str) and role in Role.values
    }


def role_from_groups(mapping: dict[str, str], group_names: Iterable[str]) -> str | None:
    """The role a person's groups give: None when the organization maps no group (roles then
    stay as the portal sets them), member when none of the person's groups is mapped."""
    if not mapping:
        return None
    roles = {mapping[name] for name in group_names if name in mapping}
    for role in ROLE_PRECEDENCE:
        if role in roles:
            return role
    return Role.MEMBER


def _roles_apply(
    *, org: Organization, actor: Actor, memberships: Iterable[Membership]
) -> dict[str, list[str]]:
    """Set each membership's role from its groups. Returns emails by outcome ("changed",
    "kept_last_owner"). Precondition: inside the transaction of the group change."""
    mapping = role_mapping(org=org)
    outcome: dict[str, list[str]] = {"changed": [], "kept_last_owner": []}
    if not mapping:
        return outcome
    for membership in memberships:
        membership.refresh_from_db(fields=["role", "deactivated_at"])
        names = list(membership.scim_groups.values_list("display_name", flat=True))
        role = role_from_groups(mapping, names)
        if role is None or role == membership.role:
            continue
        if (
            membership.role == Role.OWNER
            and membership.deactivated_at is None
            and _active_owners_other_than_locked(org=org, membership=membership) == 0
        ):
            outcome["kept_last_owner"].append(membership.user.email)
            continue
        member_role_write(
            org=org,
            actor=actor,
            membership=membership,
            role=role,
            details={"source": "scim", "groups": names},
        )
        outcome["changed"].append(membership.user.email)
    return outcome


def scim_roles_recompute(*, org: Organization, actor: Actor) -> dict[str, list[str]]:
    """Recompute the role of every member of a SCIM group, e.g. after the role mapping changed
    (called by the single sign-on settings). A person in no SCIM group keeps the role the
    portal gave them."""
    with transaction.atomic():
        members = (
            Membership.objects.for_org(org)
            .filter(scim_groups__isnull=False)
            .distinct()
            .select_related("user")
        )
        return _roles_apply(org=org, actor=actor, memberships=list(members))


# --- users -----------------------------------------------------------------------------------


def scim_ids_assign(*, org: Organization) -> int:
    """Give every member without one a SCIM id, so that the identity provider can find people
    who joined before provisioning (by invitation) and link them instead of creating them."""
    assigned = 0
    for membership in Membership.objects.for_org(org).filter(scim_id__isnull=True):
        updated = Membership.objects.filter(pk=membership.pk, scim_id__isnull=True).update(
            scim_id=uuid.uuid4()
        )
        assigned += updated
    return assigned


def scim_user_create(*, org: Organization, actor: Actor, fields: UserFields) -> Membership:
    fields = _clean_user_fields(fields)
    user_model = get_user_model()
    with transaction.atomic():
        user = user_model.objects.filter(email__iexact=fields.user_name).first()
        created_user = user is None
        if user is None:
            if user_model.objects.filter(username__iexact=fields.user_name).exists():
                raise _uniqueness(f"The userName {fields.user_name!r} is already taken.")
            try:
                with transaction.atomic():
                    user = user_model.objects.create_user(
                        username=fields.user_name,
                        email=fields.user_name,
                        first_name=fields.given_name,
                        last_name=fields.family_name,
                    )
            except IntegrityError:
                # The same person created by a concurrent request.
                raise _uniqueness(f"The userName {fields.user_name!r} is already taken.") from None
            # Signs in through the organization's single sign-on, or sets a password with
            # "Forgot password" (the email address is theirs).
            user.set_unusable_password()
            user.save(update_fields=["password"])
        elif Membership.objects.for_org(org).filter(user=user).exists():
            raise _uniqueness(
                f"A member with the userName {fields.user_name!r} already exists in this "
                "organization."
            )
        elif not _belongs_elsewhere(user, org):
            user.first_name, user.last_name = fields.given_name, fields.family_name
            user.save(update_fields=["first_name", "last_name"])
        try:
            with transaction.atomic():
                membership = Membership.objects.create(
                    organization=org,
                    user=user,
                    role=Role.MEMBER,
                    scim_id=uuid.uuid4(),
                    scim_external_id=fields.external_id,
                    deactivated_at=None if fields.active else timezone.now(),
                )
        except IntegrityError:
            raise _uniqueness(
                f"A member with the userName {fields.user_name!r} already exists in this "
                "organization."
            ) from None
        audit_record(
            org=org,
            actor=actor,
            action="scim.user_create",
            target=membership,
            target_label=user.email,
            details={
                "external_id": fields.external_id,
                "active": fields.active,
                "new_account": created_user,
            },
        )
    return membership


def _membership_locked(*, org: Organization, membership: Membership) -> Membership:
    """``membership`` read again with its row locked, and its person.

    Precondition: inside a transaction; the caller has checked that it belongs to ``org``."""
    return (
        Membership.objects.for_org(org)
        .select_for_update()
        .select_related("user")
        .get(pk=membership.pk)
    )


def scim_user_update(
    *, org: Organization, actor: Actor, membership: Membership, fields: UserFields
) -> Membership:
    """Replace a member's SCIM attributes with ``fields`` (PUT, or PATCH after its operations
    were applied to the current attributes): all checked first, then written together."""
    if membership.organization_id != org.pk:
        raise ScimError(404, "User not found.")
    fields = _clean_user_fields(fields)
    user_model = get_user_model()
    with transaction.atomic():
        membership = _membership_locked(org=org, membership=membership)
        user = membership.user
        changes: dict[str, Any] = {}
        elsewhere = _belongs_elsewhere(user, org)
        if fields.user_name != (user.email or "").lower():
            if elsewhere:
                raise _mutability(
                    "This person also belongs to another organization; their userName (email) "
                    "cannot be changed from here."
                )
            taken = (
                user_model.objects.filter(email__iexact=fields.user_name)
                | user_model.objects.filter(username__iexact=fields.user_name)
            ).exclude(pk=user.pk)
            if taken.exists():
                raise _uniqueness(f"The userName {fields.user_name!r} is already taken.")
            changes["userName"] = {"from": user.email, "to": fields.user_name}
            user.email = user.username = fields.user_name
        if not elsewhere and (user.first_name, user.last_name) != (
            fields.given_name,
            fields.family_name,
        ):
            changes["name"] = True
            user.first_name, user.last_name = fields.given_name, fields.family_name
        if changes:
            try:
                with transaction.atomic():
                    user.save(update_fields=["email", "username", "first_name", "last_name"])
            except IntegrityError:
                raise _uniqueness(f"The userName {fields.user_name!r} is already taken.") from None
        if fields.external_id != membership.scim_external_id:
            changes["externalId"] = {"from": membership.scim_external_id, "to": fields.external_id}
            membership.scim_external_id = fields.external_id
            membership.save(update_fields=["scim_external_id"])
        if changes:
            audit_record(
                org=org,
                actor=actor,
                action="scim.user_update",
                target=membership,
                target_label=user.email,
                details=changes,
            )
        was_active = membership.deactivated_at is None
        if was_active and not fields.active:
            membership_deactivate(org=org, actor=actor, membership=membership)
        elif not was_active and fields.active:
            membership_reactivate(org=org, actor=actor, membership=membership)
    return membership


def _cut_off(
    *, org: Organization, actor: Actor, membership: Membership, reason: str
) -> dict[str, int]:
    """Revoke the person's API tokens in this organization and end their sessions.

    Precondition: inside the transaction of the change that cut the person off."""
    now = timezone.now()
    tokens = list(
        ApiToken.objects.for_org(org)
        .select_for_update()
        .filter(created_by=membership.user, revoked_at__isnull=True)
    )
    for token in tokens:
        token.revoked_at = now
        token.save(update_fields=["revoked_at"])
        audit_record(
            org=org, actor=actor, action="token.revoked", target=token, details={"reason": reason}
        )
    sessions = sessions_end_for_user(user=membership.user, actor=actor, reason=reason, org=org)
    return {"tokens_revoked": len(tokens), "sessions_ended": sessions}


def membership_deactivate(*, org: Organization, actor: Actor, membership: Membership) -> Membership:
    """Deactivate a member: no access to the organization, sessions ended, tokens revoked."""
    if membership.organization_id != org.pk:
        raise ScimError(404, "User not found.")
    with transaction.atomic():
        membership = _membership_locked(org=org, membership=membership)
        if membership.deactivated_at is not None:
            return membership
        _refuse_last_owner(org=org, membership=membership, what="deactivated")
        membership.deactivated_at = timezone.now()
        membership.save(update_fields=["deactivated_at"])
        effects = _cut_off(
            org=org,
            actor=actor,
            membership=membership,
            reason="deactivated by the identity provider",
        )
        audit_record(
            org=org,
            actor=actor,
            action="scim.user_deactivate",
            target=membership,
            target_label=membership.user.email,
            details=effects,
        )
    return membership


def membership_reactivate(*, org: Organization, actor: Actor, membership: Membership) -> Membership:
    """Give a deactivated member access again; the tokens revoked at deactivation stay revoked."""
    if membership.organization_id != org.pk:
        raise ScimError(404, "User not found.")
    with transaction.atomic():
        membership = _membership_locked(org=org, membership=membership)
        if membership.deactivated_at is None:
            return membership
        since = membership.deactivated_at
        membership.deactivated_at = None
        membership.save(update_fields=["deactivated_at"])
        audit_record(
            org=org,
            actor=actor,
            action="scim.user_reactivate",
            target=membership,
            target_label=membership.user.email,
            details={"deactivated_at": since.isoformat()},
        )
    return membership


def scim_user_delete(*, org: Organization, actor: Actor, membership: Membership) -> None:
    """Remove the membership (the person's account stays: it may belong to other hospitals)."""
    if membership.organization_id != org.pk:
        raise ScimError(404, "User not found.")
    with transaction.atomic():
        membership = _membership_locked(org=org, membership=membership)
        _refuse_last_owner(org=org, membership=membership, what="removed")
        effects = _cut_off(
            org=org, actor=actor, membership=membership, reason="removed by the identity provider"
        )
        audit_record(
            org=org,
            actor=actor,
            action="scim.user_delete",
            target=membership,
            target_label=membership.user.email,
            details={**effects, "role": membership.role},
        )
        membership.delete()


# --- groups ----------------------------------------------------------------------------------


def _clean_group_fields(fields: GroupFields) -> GroupFields:
    name = (fields.display_name or "").strip()
    if not name:
        raise invalid_value("displayName is required.")
    if len(name) > 255:
        raise invalid_value("displayName is longer than 255 characters.")
    if len(fields.external_id) > 255:
        raise invalid_value("externalId is longer than 255 characters.")
    return GroupFields(
        display_name=name, external_id=fields.external_id.strip(), members=fields.members
    )


def _name_taken(*, org: Organization, name: str, exclude: ScimGroup | None = None) -> bool:
    qs = ScimGroup.objects.for_org(org).filter(display_name__iexact=name)
    if exclude is not None:
        qs = qs.exclude(pk=exclude.pk)
    return qs.exists()


def scim_group_create(*, org: Organization, actor: Actor, fields: GroupFields) -> ScimGroup:
    fields = _clean_group_fields(fields)
    with transaction.atomic():
        if _name_taken(org=org, name=fields.display_name):
            raise _uniqueness(f"A group named {fields.display_name!r} already exists.")
        try:
            with transaction.atomic():
                group = ScimGroup.objects.create(
                    organization=org,
                    display_name=fields.display_name,
                    external_id=fields.external_id,
                )
        except IntegrityError:
            raise _uniqueness(f"A group named {fields.display_name!r} already exists.") from None
        members = fields.members or []
        group.members.set(members)
        roles = _roles_apply(org=org, actor=actor, memberships=members)
        audit_record(
            org=org,
            actor=actor,
            action="scim.group_create",
            target=group,
            details={"members": [m.user.email for m in members], **_nonempty(roles)},
        )
    return group


def _nonempty(roles: dict[str, list[str]]) -> dict[str, list[str]]:
    return {f"roles_{k}": v for k, v in roles.items() if v}


def scim_group_update(
    *, org: Organization, actor: Actor, group: ScimGroup, fields: GroupFields
) -> ScimGroup:
    """Replace a group's name, externalId and (unless ``fields.members`` is None) members; then
    recompute the roles of everyone who joined or left, and of all members if the name changed
    (the mapping is by name)."""
    if group.organization_id != org.pk:
        raise ScimError(404, "Group not found.")
    fields = _clean_group_fields(fields)
    with transaction.atomic():
        group = ScimGroup.objects.for_org(org).select_for_update().get(pk=group.pk)
        if fields.display_name != group.display_name and _name_taken(
            org=org, name=fields.display_name, exclude=group
        ):
            raise _uniqueness(f"A group named {fields.display_name!r} already exists.")
        before = {m.pk: m for m in group.members.select_related("user")}
        details: dict[str, Any] = {}
        renamed = fields.display_name != group.display_name
        if renamed:
            details["displayName"] = {"from": group.display_name, "to": fields.display_name}
        if fields.external_id != group.external_id:
            details["externalId"] = {"from": group.external_id, "to": fields.external_id}
        group.display_name = fields.display_name
        group.external_id = fields.external_id
        group.updated_at = timezone.now()
        try:
            with transaction.atomic():
                group.save(update_fields=["display_name", "external_id", "updated_at"])
        except IntegrityError:
            raise _uniqueness(f"A group named {fields.display_name!r} already exists.") from None
        affected: dict[int, Membership] = dict(before) if renamed else {}
        if fields.members is not None:
            after = {m.pk: m for m in fields.members}
            added = [m for pk, m in after.items() if pk not in before]
            removed = [m for pk, m in before.items() if pk not in after]
            if added:
                group.members.add(*added)
                details["members_added"] = [m.user.email for m in added]
            if removed:
                group.members.remove(*removed)
                details["members_removed"] = [m.user.email for m in removed]
            affected.update({m.pk: m for m in [*added, *removed]})
        roles = _roles_apply(org=org, actor=actor, memberships=affected.values())
        details.update(_nonempty(roles))
        if details:
            audit_record(
                org=org, actor=actor, action="scim.group_update", target=group, details=details
            )
    return group


def scim_group_delete(*, org: Organization, actor: Actor, group: ScimGroup) -> None:
    if group.organization_id != org.pk:
        raise ScimError(404, "Group not found.")
    with transaction.atomic():
        group = ScimGroup.objects.for_org(org).select_for_update().get(pk=group.pk)
        members = list(group.members.select_related("user"))
        audit_record(
            org=org,
            actor=actor,
            action="scim.group_delete",
            target=group,
            details={"members": [m.user.email for m in members]},
        )
        group.delete()
        roles = _roles_apply(org=org, actor=actor, memberships=members)
        if any(roles.values()):
            logger.info("SCIM group deletion in organization %s changed roles", org.pk)


# --- the SCIM token --------------------------------------------------------------------------


def scim_token_create(*, org: Organization, actor: Actor) -> tuple[ApiToken, str]:
    """Create a token with the scim scope (and no other). Returns it with its secret, shown
    once. Precondition: the actor is an owner (the portal page requires SECURITY_MANAGE)."""
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            organization=org,
            name=SCIM_TOKEN_NAME,
            prefix=prefix,
            secret_hash=_hash(secret),
            scopes=[Scope.SCIM],
            created_by=actor.user,
        )
        audit_record(
            org=org,
            actor=actor,
            action="scim.token_create",
            target=token,
            details={"scopes": token.scopes},
        )
    return token, secret


def scim_token_revoke(*, org: Organization, actor: Actor, token: ApiToken) -> ApiToken:
    if token.organization_id != org.pk or Scope.SCIM not in token.scopes:
        raise ScimError(404, "Token not found.")
    with transaction.atomic():
        token = ApiToken.objects.for_org(org).select_for_update().get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(org=org, actor=actor, action="scim.token_revoke", target=token)
    return token
