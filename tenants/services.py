"""Every write of the tenancy core: organizations, members, invitations, tokens, audit, browser
origins (CORS), webhooks.

Each service validates, changes state in one transaction, writes its audit event in that same
transaction, and queues follow-up work (emails, webhook deliveries) with ``on_commit``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email, validate_slug
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from tenants import cors, rows
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, PermissionMissing, ValidationFailed
from tenants.models import (
    ApiToken,
    AuditEvent,
    CorsOrigin,
    Invitation,
    Membership,
    Organization,
    UserSession,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from tenants.roles import Role, Scope

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "strata_"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- audit -----------------------------------------------------------------------------------


def audit_record(
    *,
    org: Organization | None,
    actor: Actor,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    target_label: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. Call it inside the transaction of the change it describes."""
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or str(target.pk)
        target_label = target_label or str(target)
    return AuditEvent.objects.create(
        organization=org,
        actor_user=actor.user if actor.user is not None and actor.user.pk else None,
        actor_token=actor.token,
        actor_label=actor.label[:255],
        action=action,
        target_type=target_type[:64],
        target_id=target_id[:64],
        target_label=target_label[:255],
        ip=actor.ip,
        user_agent=actor.user_agent[:512],
        details=details or {},
    )


# --- organizations ---------------------------------------------------------------------------


def _user_get_or_create(*, email: str) -> tuple[User, bool]:
    user_model = get_user_model()
    existing = user_model.objects.filter(email__iexact=email).first()
    if existing is not None:
        return existing, False
    user = user_model.objects.create_user(username=email.lower(), email=email.lower())
    user.set_unusable_password()
    user.save(update_fields=["password"])
    return user, True


def organization_create(
    *, name: str, slug: str, owner_email: str, actor: Actor, owner_password: str | None = None
) -> Organization:
    """Create a hospital with its first owner (an existing user, or a new one by email).

    A new owner without a password gets a password-reset style email to set one.
    """
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    slug = (slug or "").strip().lower()
    owner_email = (owner_email or "").strip().lower()
    if not name:
        errors["name"] = ["This field is required."]
    try:
        validate_slug(slug)
        if len(slug) > 63:
            raise ValidationError("too long")
    except ValidationError:
        errors["slug"] = ["Use 1-63 letters, digits, hyphens or underscores."]
    try:
        validate_email(owner_email)
    except ValidationError:
        errors["owner_email"] = ["Enter a valid email address."]
    if not errors.get("slug") and Organization.objects.filter(slug=slug).exists():
        errors["slug"] = [f"An organization with slug '{slug}' already exists."]
    if errors:
        raise ValidationFailed("The organization could not be created.", fields=errors)
    try:
        with transaction.atomic():
            org = Organization.objects.create(name=name, slug=slug)
            owner, created = _user_get_or_create(email=owner_email)
            if owner_password:
                owner.set_password(owner_password)
                owner.save(update_fields=["password"])
            Membership.objects.create(user=owner, organization=org, role=Role.OWNER)
            if not owner.has_usable_password():
                transaction.on_commit(lambda: _owner_send_welcome(org=org, user=owner))
            audit_record(
                org=org,
                actor=actor,
                action="organization.created",
                target=org,
                details={"owner": owner_email, "owner_created": created},
            )
    except IntegrityError:
        raise ValidationFailed(
            "The organization could not be created.",
            fields={"slug": [f"An organization with slug '{slug}' already exists."]},
        ) from None
    return org


def _owner_send_welcome(*, org: Organization, user: User) -> None:
    """A new owner has no password yet: send a one-time link to set it (Django's reset token)."""
    from django.contrib.auth.tokens import default_token_generator
    from django.urls import reverse
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    send_mail(
        subject=f"Your Strata organization {org.name} is ready",
        message=(
            f"{org.name} has been created on Strata with you as its owner.\n\n"
            f"Set your password to sign in: {settings.SITE_URL}{path}\n"
        ),
        from_email=None,
        recipient_list=[user.email],
    )


def organization_update(*, org: Organization, actor: Actor, name: str) -> Organization:
    name = (name or "").strip()
    if not name:
        raise ValidationFailed(
            "Invalid organization.", fields={"name": ["This field is required."]}
        )
    with transaction.atomic():
        old = org.name
        org.name = name[:200]
        org.save(update_fields=["name"])
        audit_record(
            org=org,
            actor=actor,
            action="organization.updated",
            target=org,
            details={"name": {"from": old, "to": org.name}},
        )
    return org


def organization_set_status(*, org: Organization, actor: Actor, status: str) -> Organization:
    if status not in Organization.Status.values:
        raise ValidationFailed(
            "Invalid status.", fields={"status": [f"Choose one of {Organization.Status.values}."]}
        )
    with transaction.atomic():
        old = org.status
        org.status = status
        org.save(update_fields=["status"])
        audit_record(
            org=org,
            actor=actor,
            action="organization.status_changed",
            target=org,
            details={"status": {"from": old, "to": status}},
        )
    return org


# --- members ---------------------------------------------------------------------------------


def _actor_is_owner(*, org: Organization, actor: Actor) -> bool:
    if actor.user is None:
        return False
    return Membership.objects.for_org(org).filter(user=actor.user, role=Role.OWNER).exists()


def _check_owner_change(
    *, org: Organization, actor: Actor, from_role: str, to_role: str | None
) -> None:
    touches_owner = from_role == Role.OWNER or to_role == Role.OWNER
    if touches_owner and not _actor_is_owner(org=org, actor=actor):
        raise PermissionMissing(
            "Only an owner may grant, change or remove the owner role.", code="owner_required"
        )


def _owners_after_removal_locked(*, org: Organization, membership: Membership) -> int:
    """Count the owners left if ``membership`` stopped being one.

    Precondition: runs inside a transaction; the owner rows are locked so that two concurrent
    demotions cannot both see "another owner remains".
    """
    owners = list(
        Membership.objects.for_org(org)
        .select_for_update()
        .filter(role=Role.OWNER)
        .values_list("id", flat=True)
    )
    return len([pk for pk in owners if pk != membership.pk])


def membership_change_role(
    *, org: Organization, membership: Membership, role: str, actor: Actor
) -> Membership:
    if membership.organization_id != org.pk:
        raise NotFound("Member not found.")
    if role not in Role.values:
        raise ValidationFailed(
            "Invalid role.", fields={"role": [f"Choose one of: {', '.join(Role.values)}."]}
        )
    if role == membership.role:
        return membership
    _check_owner_change(org=org, actor=actor, from_role=membership.role, to_role=role)
    with transaction.atomic():
        if (
            membership.role == Role.OWNER
            and _owners_after_removal_locked(org=org, membership=membership) == 0
        ):
            raise Conflict(
                "The last owner cannot be demoted; make someone else owner first.",
                code="last_owner",
            )
        member_role_write(org=org, actor=actor, membership=membership, role=role)
    return membership


def member_role_write(
    *,
    org: Organization,
    actor: Actor,
    membership: Membership,
    role: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Set a member's role and audit it (``member.role_changed``, with ``details`` beside the
    change). Used by the Members page, single sign-on and SCIM.

    Precondition: inside a transaction holding the membership's row lock, with the last-owner
    rule already applied by the caller (each source treats it its own way)."""
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        org=org,
        actor=actor,
        action="member.role_changed",
        target=membership,
        target_label=membership.user.email,
        details={"role": {"from": old, "to": role}, **(details or {})},
    )


def membership_remove(*, org: Organization, membership: Membership, actor: Actor) -> None:
    if membership.organization_id != org.pk:
        raise NotFound("Member not found.")
    _check_owner_change(org=org, actor=actor, from_role=membership.role, to_role=None)
    with transaction.atomic():
        if (
            membership.role == Role.OWNER
            and _owners_after_removal_locked(org=org, membership=membership) == 0
        ):
            raise Conflict(
                "The last owner cannot be removed; make someone else owner first.",
                code="last_owner",
            )
        audit_record(
            org=org,
            actor=actor,
            action="member.removed",
            target=membership,
            target_label=membership.user.email,
            details={"role": membership.role},
        )
        membership.delete()


# --- invitations -----------------------------------------------------------------------------


def invitation_create(
    *, org: Organization, email: str, role: str, actor: Actor
) -> tuple[Invitation, str]:
    """Invite someone by email. Returns the invitation and the one-time secret (only in the email link)."""
    email = (email or "").strip().lower()
    errors: dict[str, list[str]] = {}
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = ["Enter a valid email address."]
    if role not in Role.values:
        errors["role"] = [f"Choose one of: {', '.join(Role.values)}."]
    if not errors and Membership.objects.for_org(org).filter(user__email__iexact=email).exists():
        errors["email"] = ["This person is already a member."]
    if errors:
        raise ValidationFailed("The invitation could not be sent.", fields=errors)
    _check_owner_change(org=org, actor=actor, from_role="", to_role=role)
    secret = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        # A new invitation replaces any pending one for the same address.
        Invitation.objects.for_org(org).filter(
            email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=now)
        invitation = Invitation.objects.create(
            organization=org,
            email=email,
            role=role,
            token_hash=_hash(secret),
            invited_by=actor.user,
            created_at=now,
            expires_at=now + timedelta(hours=settings.INVITATION_TTL_HOURS),
        )
        audit_record(
            org=org,
            actor=actor,
            action="invitation.created",
            target=invitation,
            target_label=email,
            details={"role": role},
        )
        transaction.on_commit(lambda: _invitation_send_email(invitation=invitation, secret=secret))
    return invitation, secret


def invitation_url(secret: str) -> str:
    return f"{settings.SITE_URL}/invitations/{secret}/"


def _invitation_send_email(*, invitation: Invitation, secret: str) -> None:
    org = invitation.organization
    body = (
        f"You have been invited to join {org.name} on Strata as {invitation.get_role_display()}.\n\n"
        f"Accept the invitation: {invitation_url(secret)}\n\n"
        f"The link works once and expires on {invitation.expires_at:%Y-%m-%d %H:%M} UTC.\n"
    )
    send_mail(
        subject=f"Invitation to {org.name} on Strata",
        message=body,
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_get_by_secret(*, secret: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(token_hash=_hash(secret or ""))
        .first()
    )
    if invitation is None:
        raise NotFound("This invitation link is not valid.", code="invitation_invalid")
    return invitation


def invitation_accept(*, secret: str, user: User, actor: Actor) -> Membership:
    """Accept an invitation once, before it expires, as the invited email's user."""
    with transaction.atomic():
        invitation = invitation_get_by_secret(secret=secret)
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        state = invitation.state
        if state == "accepted":
            raise Conflict("This invitation has already been used.", code="invitation_used")
        if state == "revoked":
            raise Conflict("This invitation was withdrawn.", code="invitation_revoked")
        if state == "expired":
            raise Conflict(
                "This invitation has expired; ask for a new one.", code="invitation_expired"
            )
        if (getattr(user, "email", "") or "").lower() != invitation.email:
            raise PermissionMissing(
                f"This invitation is for {invitation.email}; sign in with that address.",
                code="invitation_wrong_user",
            )
        org = invitation.organization
        if not org.is_active:
            raise PermissionMissing(
                f"The organization {org.name} is {org.status}.", code="organization_inactive"
            )
        membership, created = Membership.objects.get_or_create(
            user=user, organization=org, defaults={"role": invitation.role}
        )
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        audit_record(
            org=org,
            actor=actor,
            action="invitation.accepted",
            target=invitation,
            target_label=invitation.email,
            details={"role": membership.role, "new_member": created},
        )
    return membership


def invitation_signup(*, secret: str, name: str, password: str, actor: Actor) -> Membership:
    """Create the invited person's account and accept the invitation, in one transaction.

    The email comes from the invitation. A refused acceptance leaves no account behind; an
    existing account for the email must sign in and accept instead.
    """
    user_model = get_user_model()
    with transaction.atomic():
        invitation = invitation_get_by_secret(secret=secret)
        if user_model.objects.filter(email__iexact=invitation.email).exists():
            raise Conflict(
                "An account with this email address already exists; sign in to accept.",
                code="account_exists",
            )
        first, _, last = (name or "").strip().partition(" ")
        user = user_model(
            username=invitation.email,
            email=invitation.email,
            first_name=first[:150],
            last_name=last.strip()[:150],
        )
        user.set_password(password)
        try:
            with transaction.atomic():
                user.save()
        except IntegrityError:
            raise Conflict(
                "An account with this email address already exists; sign in to accept.",
                code="account_exists",
            ) from None
        return invitation_accept(
            secret=secret,
            user=user,
            actor=Actor(user=user, ip=actor.ip, user_agent=actor.user_agent),
        )


def invitation_revoke(*, org: Organization, invitation: Invitation, actor: Actor) -> Invitation:
    if invitation.organization_id != org.pk:
        raise NotFound("Invitation not found.")
    if invitation.state != "pending":
        raise Conflict(
            f"This invitation is {invitation.state} and cannot be revoked.",
            code="invitation_not_pending",
        )
    with transaction.atomic():
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            org=org,
            actor=actor,
            action="invitation.revoked",
            target=invitation,
            target_label=invitation.email,
        )
    return invitation


# --- API tokens ------------------------------------------------------------------------------


def token_create(
    *,
    org: Organization,
    name: str,
    scopes: list[str],
    actor: Actor,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token. Returns it with its secret, which is shown once and stored only as a hash."""
    name = (name or "").strip()
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["This field is required."]
    elif len(name) > 100:
        errors["name"] = ["At most 100 characters."]
    unknown = [s for s in scopes if s not in Scope.values]
    if not scopes:
        errors["scopes"] = [f"Choose at least one of: {', '.join(Scope.values)}."]
    elif unknown:
        errors["scopes"] = [
            f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope.values)}."
        ]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["The expiry must be in the future."]
    if errors:
        raise ValidationFailed("The token could not be created.", fields=errors)
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            organization=org,
            name=name,
            prefix=prefix,
            secret_hash=_hash(secret),
            scopes=sorted(set(scopes)),
            created_by=actor.user,
            expires_at=expires_at,
        )
        audit_record(
            org=org,
            actor=actor,
            action="token.created",
            target=token,
            details={
                "scopes": token.scopes,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return token, secret


def token_revoke(*, org: Organization, token: ApiToken, actor: Actor) -> ApiToken:
    if token.organization_id != org.pk:
        raise NotFound("Token not found.")
    if token.revoked_at is not None:
        return token
    with transaction.atomic():
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(org=org, actor=actor, action="token.revoked", target=token)
    return token


class TokenRejected(Exception):
    def __init__(self, code: str, message: str, token: ApiToken | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.token = token


def token_parse_prefix(raw: str) -> str | None:
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, rest = raw[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(prefix) != 8 or not rest:
        return None
    return prefix


# The bearer token's look-up, written out once: every API request and every frame a viewer reads
# makes it, and the ORM's select_related costs ten times the query's own time (about 0.6 ms).
_TOKEN_JOIN = rows.Join(
    [
        (ApiToken, "t", rows.columns(ApiToken)),
        (Organization, "o", rows.columns(Organization)),
    ]
)


def _token_by_prefix(prefix: str) -> ApiToken | None:
    sql = (
        f"SELECT {_TOKEN_JOIN.select()} FROM {_TOKEN_JOIN.table(ApiToken)} t "  # noqa: S608
        f"JOIN {_TOKEN_JOIN.table(Organization)} o ON o.id = t.organization_id "
        "WHERE t.prefix = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    token, org = _TOKEN_JOIN.load(row)
    assert isinstance(token, ApiToken) and isinstance(org, Organization)
    token.organization = org
    return token


def token_authenticate(*, raw: str) -> ApiToken:
    """Resolve a bearer secret to a usable token or raise ``TokenRejected`` saying why.

    Records last-used time at most once a minute per token (a conditional update, no lock).
    """
    prefix = token_parse_prefix(raw)
    if prefix is None:
        raise TokenRejected("token_malformed", "The bearer token is malformed.")
    token = _token_by_prefix(prefix)
    if token is None or not hmac.compare_digest(token.secret_hash, _hash(raw)):
        raise TokenRejected("token_unknown", "The bearer token is not valid.")
    if token.revoked_at is not None:
        raise TokenRejected("token_revoked", "The bearer token has been revoked.", token)
    now = timezone.now()
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenRejected("token_expired", "The bearer token has expired.", token)
    if not token.organization.is_active:
        raise TokenRejected(
            "organization_inactive",
            f"The organization '{token.organization.slug}' is {token.organization.status}; its tokens are refused.",
            token,
        )
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- browser origins (CORS) ------------------------------------------------------------------


def cors_origin_add(
    *, org: Organization, actor: Actor, origin: str, description: str = ""
) -> CorsOrigin:
    """Allow a browser origin to call the organization's APIs with a bearer token.

    The origin is normalized (``tenants.cors.origin_normalize``) and refused with a reason when it
    is not ``http(s)://host[:port]``; an origin already listed is a conflict (409).
    """
    normalized = cors.origin_normalize(origin)
    description = (description or "").strip()
    if len(description) > 200 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in description):
        raise ValidationFailed(
            "The description is not valid.",
            fields={"description": ["At most 200 characters, without control characters."]},
        )
    try:
        with transaction.atomic():
            # The organization's row lock serializes concurrent additions for the count below.
            Organization.objects.select_for_update().filter(pk=org.pk).first()
            existing = CorsOrigin.objects.for_org(org)
            if existing.filter(origin=normalized).exists():
                raise Conflict(
                    f"{normalized} is already allowed.",
                    code="origin_exists",
                    fields={"origin": [f"{normalized} is already allowed."]},
                )
            if existing.count() >= cors.MAX_ORIGINS_PER_ORGANIZATION:
                raise ValidationFailed(
                    f"An organization allows at most {cors.MAX_ORIGINS_PER_ORGANIZATION} origins; "
                    "remove one that is no longer used first.",
                    code="too_many_origins",
                    fields={"origin": [f"At most {cors.MAX_ORIGINS_PER_ORGANIZATION} origins."]},
                )
            row = CorsOrigin.objects.create(
                organization=org, origin=normalized, description=description
            )
            audit_record(
                org=org,
                actor=actor,
                action="cors_origin.added",
                target=row,
                details={"origin": normalized, "description": description},
            )
            transaction.on_commit(
                lambda: cors.cache_invalidate(organization_id=org.pk, origin=normalized)
            )
    except IntegrityError:  # the same origin added at the same moment
        raise Conflict(
            f"{normalized} is already allowed.",
            code="origin_exists",
            fields={"origin": [f"{normalized} is already allowed."]},
        ) from None
    return row


def cors_origin_remove(*, org: Organization, actor: Actor, cors_origin: CorsOrigin) -> None:
    """Stop allowing a browser origin: its requests get no CORS header from the next request on
    (within ``tenants.cors.CACHE_SECONDS`` in other web processes without Redis)."""
    origin = cors_origin.origin
    with transaction.atomic():
        audit_record(
            org=org,
            actor=actor,
            action="cors_origin.removed",
            target=cors_origin,
            details={"origin": origin},
        )
        CorsOrigin.objects.for_org(org).filter(pk=cors_origin.pk).delete()
        transaction.on_commit(lambda: cors.cache_invalidate(organization_id=org.pk, origin=origin))


# --- webhooks --------------------------------------------------------------------------------


def _webhook_validate(*, url: str, event_types: list[str]) -> dict[str, list[str]]:
    from tenants.webhooks import EVENT_TYPES, UnsafeURL, url_check_safe

    errors: dict[str, list[str]] = {}
    try:
        url_check_safe(url)
    except UnsafeURL as exc:
        errors["url"] = [str(exc)]
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        errors["event_types"] = [f"Unknown event type(s): {', '.join(unknown)}."]
    return errors


def webhook_endpoint_create(
    *,
    org: Organization,
    url: str,
    actor: Actor,
    description: str = "",
    event_types: list[str] | None = None,
) -> WebhookEndpoint:
    event_types = sorted(set(event_types or []))
    errors = _webhook_validate(url=url, event_types=event_types)
    if errors:
        raise ValidationFailed("The webhook could not be saved.", fields=errors)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            organization=org,
            url=url,
            description=(description or "")[:200],
            secret=f"whsec_{secrets.token_urlsafe(32)}",
            event_types=event_types,
        )
        audit_record(
            org=org,
            actor=actor,
            action="webhook.created",
            target=endpoint,
            details={"event_types": event_types},
        )
    return endpoint


def webhook_endpoint_update(
    *,
    org: Organization,
    endpoint: WebhookEndpoint,
    actor: Actor,
    url: str | None = None,
    description: str | None = None,
    event_types: list[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    if endpoint.organization_id != org.pk:
        raise NotFound("Webhook not found.")
    new_url = endpoint.url if url is None else url
    new_types = endpoint.event_types if event_types is None else sorted(set(event_types))
    errors = _webhook_validate(url=new_url, event_types=new_types)
    if errors:
        raise ValidationFailed("The webhook could not be saved.", fields=errors)
    changes: dict[str, Any] = {}
    with transaction.atomic():
        if new_url != endpoint.url:
            changes["url"] = {"from": endpoint.url, "to": new_url}
            endpoint.url = new_url
        if description is not None and description != endpoint.description:
            changes["description"] = {"from": endpoint.description, "to": description[:200]}
            endpoint.description = description[:200]
        if new_types != endpoint.event_types:
            changes["event_types"] = {"from": endpoint.event_types, "to": new_types}
            endpoint.event_types = new_types
        if enabled is not None:
            new_state: str = (
                WebhookEndpoint.State.HEALTHY if enabled else WebhookEndpoint.State.DISABLED
            )
            if enabled and endpoint.state != WebhookEndpoint.State.DISABLED:
                new_state = str(endpoint.state)
            if new_state != endpoint.state:
                changes["state"] = {"from": endpoint.state, "to": new_state}
                endpoint.state = new_state
                endpoint.consecutive_failures = 0
        endpoint.save()
        if changes:
            audit_record(
                org=org, actor=actor, action="webhook.updated", target=endpoint, details=changes
            )
    return endpoint


def webhook_endpoint_rotate_secret(
    *, org: Organization, endpoint: WebhookEndpoint, actor: Actor
) -> WebhookEndpoint:
    if endpoint.organization_id != org.pk:
        raise NotFound("Webhook not found.")
    with transaction.atomic():
        endpoint.secret = f"whsec_{secrets.token_urlsafe(32)}"
        endpoint.save(update_fields=["secret"])
        audit_record(org=org, actor=actor, action="webhook.secret_rotated", target=endpoint)
    return endpoint


def webhook_endpoint_delete(*, org: Organization, endpoint: WebhookEndpoint, actor: Actor) -> None:
    if endpoint.organization_id != org.pk:
        raise NotFound("Webhook not found.")
    with transaction.atomic():
        audit_record(org=org, actor=actor, action="webhook.deleted", target=endpoint)
        endpoint.delete()


def webhook_event_emit(
    *,
    org: Organization,
    event_type: str,
    payload: dict[str, Any],
    only_endpoint: WebhookEndpoint | None = None,
) -> WebhookEvent:
    """Record an event and one delivery per subscribed endpoint; deliveries go out after commit.

    Never blocks the caller on the network: sending happens in the ``webhooks`` queue.
    """
    from tenants.webhooks import EVENT_TYPES

    if event_type not in EVENT_TYPES:
        raise ValueError(f"Unknown webhook event type {event_type!r}")
    with transaction.atomic():
        event = WebhookEvent.objects.create(organization=org, type=event_type, payload=payload)
        endpoints = (
            [only_endpoint]
            if only_endpoint is not None
            else [e for e in WebhookEndpoint.objects.for_org(org) if e.wants(event_type)]
        )
        deliveries = WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(organization=org, endpoint=e, event=event) for e in endpoints]
        )

        def _queue() -> None:
            from tenants.tasks import webhook_deliver

            for delivery in deliveries:
                webhook_deliver.delay(org.pk, delivery.pk)

        transaction.on_commit(_queue)
    return event


def webhook_send_test(
    *, org: Organization, endpoint: WebhookEndpoint, actor: Actor
) -> WebhookEvent:
    if endpoint.organization_id != org.pk:
        raise NotFound("Webhook not found.")
    with transaction.atomic():
        event = webhook_event_emit(
            org=org,
            event_type="webhook.test",
            payload={"message": "This is a test event from Strata.", "endpoint_id": endpoint.pk},
            only_endpoint=endpoint,
        )
        audit_record(
            org=org,
            actor=actor,
            action="webhook.test_sent",
            target=endpoint,
            details={"event_id": str(event.id)},
        )
    return event


# --- signed-in sessions ----------------------------------------------------------------------

# Keys kept in the Django session of a signed-in person: which UserSession it is and when its
# last_seen_at was last written (epoch seconds), so that most requests write nothing.
USER_SESSION_KEY = "strata.user_session"
# last_seen_at is written at most once per interval and session.
SESSION_SEEN_INTERVAL_SECONDS = 300


def _session_store_delete(session_key: str) -> None:
    """Delete one session from Django's session store: its browser is signed out at once."""
    if session_key:
        store = import_module(settings.SESSION_ENGINE).SessionStore
        store(session_key=session_key).delete()


def _orgs_of_user(user: Any) -> list[Organization]:
    return [
        m.organization for m in Membership.objects.filter(user=user).select_related("organization")
    ]


def user_session_start(
    *, request: Any, user: Any, method: str, factor: str = ""
) -> UserSession | None:
    """Record the session a sign-in just opened (called from the user_logged_in signal).

    ``method`` is "password" or "sso:<provider>"; ``factor`` the second factor (tenants.signin).
    The record's id and the time its activity was written are kept in the session itself, which
    is saved at the end of the sign-in request.
    """
    session = getattr(request, "session", None)
    if session is None:
        return None
    if session.session_key is None:
        session.save()
    actor = Actor.from_request(request)
    record = UserSession.objects.create(
        user=user,
        session_key=session.session_key or "",
        method=method[:64],
        factor=factor[:64],
        ip=actor.ip,
        user_agent=actor.user_agent[:512],
    )
    session[USER_SESSION_KEY] = {"id": record.pk, "seen": time.time()}
    return record


def user_session_seen(*, request: Any, user_id: Any) -> None:
    """Refresh ``last_seen_at`` of the request's session, at most once per interval.

    Most requests read only the session (already loaded) and write nothing. The session key is
    written too: it changes when Django cycles it (a password change keeps the person signed in).
    """
    session = request.session
    state = session.get(USER_SESSION_KEY)
    if not isinstance(state, dict):
        return
    now = time.time()
    seen = state.get("seen")
    if isinstance(seen, (int, float)) and 0 <= now - seen < SESSION_SEEN_INTERVAL_SECONDS:
        return
    record_id = state.get("id")
    if not isinstance(record_id, int):
        return
    UserSession.objects.filter(pk=record_id, user_id=user_id, ended_at__isnull=True).update(
        last_seen_at=timezone.now(), session_key=session.session_key or ""
    )
    session[USER_SESSION_KEY] = {"id": record_id, "seen": now}


def user_session_signed_out(*, request: Any, user: Any) -> None:
    """Mark the request's session ended when its person signs out (user_logged_out)."""
    session = getattr(request, "session", None)
    state = session.get(USER_SESSION_KEY) if session is not None else None
    if user is None or not isinstance(state, dict) or not isinstance(state.get("id"), int):
        return
    UserSession.objects.filter(pk=state["id"], user=user, ended_at__isnull=True).update(
        ended_at=timezone.now(), ended_by="sign-out", session_key=""
    )


def user_session_end(
    *, user_session: UserSession, actor: Actor, reason: str, org: Organization | None = None
) -> bool:
    """End one session: delete it from the session store (its browser is signed out on its next
    request), mark the record ended and audit ``session.ended``.

    ``org`` is the organization in whose audit log the event goes (an owner's action); without
    it, the event goes to every organization of the session's person. Ending a session twice
    is harmless: the second call changes nothing and returns False.
    """
    with transaction.atomic():
        record = (
            UserSession.objects.select_for_update()
            .filter(pk=user_session.pk, ended_at__isnull=True)
            .first()
        )
        if record is None:
            return False
        session_key = record.session_key
        record.ended_at = timezone.now()
        record.ended_by = actor.label[:255]
        record.session_key = ""
        record.save(update_fields=["ended_at", "ended_by", "session_key"])
        user = record.user
        details = {
            "session_id": record.pk,
            "reason": reason[:200],
            "method": record.method,
            "session_ip": record.ip,
            "signed_in_at": record.created_at.isoformat(),
        }
        orgs: list[Organization | None] = [org] if org is not None else [*_orgs_of_user(user)]
        for event_org in orgs or [None]:
            audit_record(
                org=event_org,
                actor=actor,
                action="session.ended",
                target=user,
                target_label=user.email or user.get_username(),
                details=details,
            )
        _session_store_delete(session_key)
    user_session.ended_at = record.ended_at
    user_session.ended_by = record.ended_by
    user_session.session_key = ""
    return True


def sessions_end_for_user(
    *,
    user: Any,
    actor: Actor,
    reason: str,
    org: Organization | None = None,
    keep_session_key: str | None = None,
) -> int:
    """End every open session of ``user`` (an owner's action, SCIM deactivation, "end all other
    sessions" with ``keep_session_key`` the caller's own). Returns how many were ended."""
    ended = 0
    records = UserSession.objects.filter(user=user, ended_at__isnull=True).order_by("id")
    for record in list(records):
        if keep_session_key and record.session_key == keep_session_key:
            continue
        if user_session_end(user_session=record, actor=actor, reason=reason, org=org):
            ended += 1
    return ended
