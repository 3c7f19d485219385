"""Every read of the tenancy core, always scoped to one organization."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.sessions.models import Session
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from tenants.errors import NotFound
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
)


def organization_list(*, status: str | None = None, q: str | None = None) -> QuerySet[Organization]:
    qs = Organization.objects.all()
    if status:
        qs = qs.filter(status=status)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(slug__icontains=q))
    return qs.order_by("name", "id")


def organization_get(*, organization_id: int | str) -> Organization:
    try:
        return Organization.objects.get(pk=int(organization_id))
    except (Organization.DoesNotExist, ValueError):
        raise NotFound("Organization not found.") from None


def memberships_for_user(*, user: Any) -> QuerySet[Membership]:
    """The organizations a person may enter: a deactivated membership (SCIM) is none."""
    return (
        Membership.objects.filter(user=user, deactivated_at__isnull=True)
        .select_related("organization")
        .order_by("organization__name")
    )


def membership_for_user(*, org: Organization, user: Any) -> Membership | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.for_org(org).filter(user=user).first()


def member_list(
    *, org: Organization, role: str | None = None, q: str | None = None
) -> QuerySet[Membership]:
    qs = Membership.objects.for_org(org).select_related("user")
    if role:
        qs = qs.filter(role=role)
    if q:
        qs = qs.filter(user__email__icontains=q)
    return qs.order_by("created_at", "id")


def member_get(*, org: Organization, membership_id: int | str) -> Membership:
    try:
        return Membership.objects.for_org(org).select_related("user").get(pk=int(membership_id))
    except (Membership.DoesNotExist, ValueError):
        raise NotFound("Member not found.") from None


def invitation_list(*, org: Organization, state: str | None = None) -> QuerySet[Invitation]:
    qs = Invitation.objects.for_org(org).select_related("invited_by")
    if state == "accepted":
        qs = qs.filter(accepted_at__isnull=False)
    elif state == "revoked":
        qs = qs.filter(revoked_at__isnull=False)
    elif state == "pending":
        from django.utils import timezone

        qs = qs.filter(
            accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        )
    return qs.order_by("-created_at", "-id")


def invitation_get(*, org: Organization, invitation_id: int | str) -> Invitation:
    try:
        return Invitation.objects.for_org(org).get(pk=int(invitation_id))
    except (Invitation.DoesNotExist, ValueError):
        raise NotFound("Invitation not found.") from None


def token_list(*, org: Organization, include_revoked: bool = True) -> QuerySet[ApiToken]:
    qs = ApiToken.objects.for_org(org).select_related("created_by")
    if not include_revoked:
        qs = qs.filter(revoked_at__isnull=True)
    return qs.order_by("-created_at", "-id")


def token_get(*, org: Organization, token_id: int | str) -> ApiToken:
    try:
        return ApiToken.objects.for_org(org).get(pk=int(token_id))
    except (ApiToken.DoesNotExist, ValueError):
        raise NotFound("Token not found.") from None


def audit_list(
    *,
    org: Organization,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events of one organization; ``since`` inclusive, ``until`` exclusive."""
    qs = AuditEvent.objects.for_org(org).select_related("actor_user")
    if actor:
        qs = qs.filter(actor_label__icontains=actor)
    if action:
        qs = (
            qs.filter(action__startswith=action)
            if action.endswith(".")
            else qs.filter(action=action)
        )
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    return qs.order_by("-created_at", "-id")


def audit_get(*, org: Organization, event_id: int | str) -> AuditEvent:
    try:
        return AuditEvent.objects.for_org(org).get(pk=int(event_id))
    except (AuditEvent.DoesNotExist, ValueError):
        raise NotFound("Audit event not found.") from None


def audit_actions(*, org: Organization) -> list[str]:
    return sorted(set(AuditEvent.objects.for_org(org).values_list("action", flat=True).distinct()))


def cors_origin_list(*, org: Organization) -> QuerySet[CorsOrigin]:
    return CorsOrigin.objects.for_org(org).order_by("origin", "id")


def cors_origin_get(*, org: Organization, origin_id: int | str) -> CorsOrigin:
    try:
        return CorsOrigin.objects.for_org(org).get(pk=int(origin_id))
    except (CorsOrigin.DoesNotExist, ValueError):
        raise NotFound("Origin not found.") from None


def webhook_list(*, org: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.for_org(org).order_by("created_at", "id")


def webhook_get(*, org: Organization, endpoint_id: int | str) -> WebhookEndpoint:
    try:
        return WebhookEndpoint.objects.for_org(org).get(pk=int(endpoint_id))
    except (WebhookEndpoint.DoesNotExist, ValueError):
        raise NotFound("Webhook not found.") from None


def webhook_deliveries(
    *, org: Organization, endpoint: WebhookEndpoint
) -> QuerySet[WebhookDelivery]:
    return (
        WebhookDelivery.objects.for_org(org)
        .filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related("attempts")
        .order_by("-created_at", "-id")
    )


# --- signed-in sessions ----------------------------------------------------------------------


def user_session_list(*, user: Any) -> QuerySet[UserSession]:
    """The person's open sessions: not ended, and still in the session store (a session that
    expired or was timed out is gone from the store, so it is not listed)."""
    alive = Session.objects.filter(
        session_key=OuterRef("session_key"), expire_date__gt=timezone.now()
    )
    return (
        UserSession.objects.filter(user=user, ended_at__isnull=True)
        .exclude(session_key="")
        .filter(Exists(alive))
    )


def user_session_get(*, user: Any, session_id: int | str) -> UserSession:
    """One open session of the person; another person's id answers NotFound."""
    try:
        return user_session_list(user=user).get(pk=int(session_id))
    except (UserSession.DoesNotExist, ValueError, OverflowError):
        raise NotFound("Session not found.") from None
