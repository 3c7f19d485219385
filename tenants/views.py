"""Portal pages of the tenancy core: members and invitations, API tokens and the browser origins
allowed to use them (CORS), webhooks, the audit log, and the public invitation page.

Thin views: a form checks the input's shape, a service writes (and refuses with a
``ServiceError``), a selector reads. Every object id in a URL is looked up through a selector
scoped to the organization in the URL, so another tenant's id answers 404.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordResetForm
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from tenants import cors, lockout, selectors, services
from tenants.context import Actor, client_ip
from tenants.csvexport import audit_events_csv
from tenants.errors import NotFound, ServiceError
from tenants.forms import (
    AuditFilterForm,
    CorsOriginForm,
    InvitationForm,
    InvitationSignupForm,
    MemberRoleForm,
    TokenForm,
    WebhookForm,
    form_apply_service_error,
)
from tenants.models import Invitation, Organization, WebhookEndpoint
from tenants.portal import PortalContext, org_view
from tenants.roles import PERMISSION_DESCRIPTIONS, ROLE_PERMISSIONS, Perm, Role, Scope
from tenants.signin import sign_in
from tenants.useragent import browser_label
from tenants.webhooks import EVENT_TYPES

T = TypeVar("T")

AUDIT_PAGE_SIZE = 50
RECENT_DELIVERIES = 20
INVITATIONS_SHOWN = 50
# Session key holding a just-created token's secret until the next GET of the tokens page.
NEW_TOKEN_SESSION_KEY = "portal.new_token"


def get_or_404(selector: Callable[..., T], **kwargs: Any) -> T:
    """Call an organization-scoped selector; an unknown or another tenant's id becomes a 404."""
    try:
        return selector(**kwargs)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _redirect_to_top(url_name: str, ctx: PortalContext) -> HttpResponse:
    """Redirect to a list page, scrolled to its top where the success message is.

    Forms further down post to ``...#form`` so that an error re-render lands on the form; without
    a fragment of its own, the redirect after success would inherit that one.
    """
    return redirect(reverse(url_name, args=[ctx.org.slug]) + "#main")


def _no_store(response: HttpResponse) -> HttpResponse:
    # Pages that show secrets must not come back from the browser cache (back button, history).
    add_never_cache_headers(response)
    return response


# --- members and invitations -----------------------------------------------------------------


def _assignable_roles(ctx: PortalContext) -> list[str]:
    """Roles the current member may hand out: only an owner grants the owner role."""
    if ctx.membership.role == Role.OWNER:
        return list(Role.values)
    return [r for r in Role.values if r != Role.OWNER]


def _members_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    invite_form: InvitationForm | None = None,
    status: int = 200,
) -> HttpResponse:
    manage = ctx.can(Perm.MEMBERS_MANAGE)
    assignable = _assignable_roles(ctx)
    actor_is_owner = ctx.membership.role == Role.OWNER
    rows = [
        {
            "membership": m,
            "is_self": m.pk == ctx.membership.pk,
            # A non-owner cannot touch an owner's role; the service refuses it too.
            "editable": manage and (actor_is_owner or m.role != Role.OWNER),
        }
        for m in selectors.member_list(org=ctx.org)
    ]
    invitations = list(selectors.invitation_list(org=ctx.org)[:INVITATIONS_SHOWN]) if manage else []
    context = {
        "ctx": ctx,
        "active_section": "members",
        "rows": rows,
        "can_manage": manage,
        # Signing a member out everywhere is the owners' alone.
        "can_end_sessions": manage and actor_is_owner,
        "role_choices": [(v, label) for v, label in Role.choices if v in assignable],
        "invite_form": invite_form or InvitationForm(allowed_roles=assignable),
        "invitations": invitations,
        "invitation_ttl_hours": settings.INVITATION_TTL_HOURS,
        "role_help": [
            (label, sorted(PERMISSION_DESCRIPTIONS[p] for p in ROLE_PERMISSIONS[value]))
            for value, label in Role.choices
        ],
    }
    return render(request, "tenants/members.html", context, status=status)


@org_view(Perm.MEMBERS_VIEW)
@require_safe
def members(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    return _members_page(request, ctx)


@org_view(Perm.MEMBERS_MANAGE)
@require_POST
def member_role(request: HttpRequest, ctx: PortalContext, membership_id: int) -> HttpResponse:
    membership = get_or_404(selectors.member_get, org=ctx.org, membership_id=membership_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Choose a valid role for {membership.user.email}.")
        return _members_page(request, ctx, status=400)
    try:
        services.membership_change_role(
            org=ctx.org, membership=membership, role=form.cleaned_data["role"], actor=ctx.actor
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _members_page(request, ctx, status=exc.status)
    messages.success(
        request, f"{membership.user.email} is now {membership.get_role_display().lower()}."
    )
    return redirect("portal-members", ctx.org.slug)


@org_view(Perm.MEMBERS_MANAGE)
@require_http_methods(["GET", "POST"])
def member_remove(request: HttpRequest, ctx: PortalContext, membership_id: int) -> HttpResponse:
    membership = get_or_404(selectors.member_get, org=ctx.org, membership_id=membership_id)
    context = {
        "ctx": ctx,
        "active_section": "members",
        "membership": membership,
        "is_self": membership.pk == ctx.membership.pk,
    }
    if request.method == "POST":
        email = membership.user.email
        is_self = membership.pk == ctx.membership.pk
        try:
            services.membership_remove(org=ctx.org, membership=membership, actor=ctx.actor)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return render(request, "tenants/member_remove.html", context, status=exc.status)
        if is_self:
            messages.success(request, f"You left {ctx.org.name}.")
            return redirect("portal-home")
        messages.success(request, f"{email} was removed from {ctx.org.name}.")
        return redirect("portal-members", ctx.org.slug)
    return render(request, "tenants/member_remove.html", context)


@org_view(Perm.MEMBERS_MANAGE)
@require_POST
def member_sessions_end(
    request: HttpRequest, ctx: PortalContext, membership_id: int
) -> HttpResponse:
    """An owner signs a member out everywhere: every open session of the member ends."""
    membership = get_or_404(selectors.member_get, org=ctx.org, membership_id=membership_id)
    if ctx.membership.role != Role.OWNER:
        return render(
            request,
            "saas/forbidden.html",
            {"ctx": ctx, "permission_text": "End a member's sessions (owners only)"},
            status=403,
        )
    count = services.sessions_end_for_user(
        user=membership.user,
        actor=ctx.actor,
        reason=f"ended by an owner of {ctx.org.slug}",
        org=ctx.org,
        keep_session_key=request.session.session_key,
    )
    noun = "session" if count == 1 else "sessions"
    messages.success(request, f"{count} {noun} of {membership.user.email} ended.")
    return _redirect_to_top("portal-members", ctx)


@org_view(Perm.MEMBERS_MANAGE)
@require_POST
def invitation_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = InvitationForm(request.POST, allowed_roles=_assignable_roles(ctx))
    if not form.is_valid():
        return _members_page(request, ctx, invite_form=form, status=400)
    try:
        invitation, _secret = services.invitation_create(
            org=ctx.org,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor=ctx.actor,
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return _members_page(request, ctx, invite_form=form, status=exc.status)
    messages.success(
        request,
        f"Invitation sent to {invitation.email} as {invitation.get_role_display().lower()}.",
    )
    return _redirect_to_top("portal-members", ctx)


@org_view(Perm.MEMBERS_MANAGE)
@require_POST
def invitation_revoke(request: HttpRequest, ctx: PortalContext, invitation_id: int) -> HttpResponse:
    invitation = get_or_404(selectors.invitation_get, org=ctx.org, invitation_id=invitation_id)
    try:
        services.invitation_revoke(org=ctx.org, invitation=invitation, actor=ctx.actor)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _members_page(request, ctx, status=exc.status)
    messages.success(request, f"The invitation of {invitation.email} was revoked.")
    return redirect("portal-members", ctx.org.slug)


# --- API tokens ------------------------------------------------------------------------------


def _tokens_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    form: TokenForm | None = None,
    new_token: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    scope_labels = dict(Scope.choices)
    context = {
        "ctx": ctx,
        "active_section": "tokens",
        "tokens": [
            {"token": t, "scopes": [(s, scope_labels.get(s, s)) for s in t.scopes]}
            for t in selectors.token_list(org=ctx.org)
        ],
        "form": form or TokenForm(),
        "new_token": new_token,
    }
    return _no_store(render(request, "tenants/tokens.html", context, status=status))


@org_view(Perm.TOKENS_MANAGE)
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if request.method == "POST":
        form = TokenForm(request.POST)
        status = 400
        if form.is_valid():
            try:
                token, secret = services.token_create(
                    org=ctx.org,
                    name=form.cleaned_data["name"],
                    scopes=list(form.cleaned_data["scopes"]),
                    expires_at=form.expires_at_datetime(),
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                # Shown once: the next GET pops it, so a reload no longer contains the secret.
                request.session[NEW_TOKEN_SESSION_KEY] = {
                    "org_id": ctx.org.pk,
                    "token_id": token.pk,
                    "name": token.name,
                    "secret": secret,
                }
                messages.success(request, f"Token “{token.name}” created.")
                return _redirect_to_top("portal-tokens", ctx)
        return _tokens_page(request, ctx, form=form, status=status)
    new_token = request.session.get(NEW_TOKEN_SESSION_KEY)
    if new_token is not None and new_token.get("org_id") == ctx.org.pk:
        del request.session[NEW_TOKEN_SESSION_KEY]
    else:
        new_token = None
    return _tokens_page(request, ctx, new_token=new_token)


@org_view(Perm.TOKENS_MANAGE)
@require_POST
def token_revoke(request: HttpRequest, ctx: PortalContext, token_id: int) -> HttpResponse:
    token = get_or_404(selectors.token_get, org=ctx.org, token_id=token_id)
    try:
        services.token_revoke(org=ctx.org, token=token, actor=ctx.actor)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _tokens_page(request, ctx, status=exc.status)
    messages.success(request, f"Token “{token.name}” was revoked; requests using it are refused.")
    return redirect("portal-tokens", ctx.org.slug)


# --- browser origins (CORS) ------------------------------------------------------------------


def _cors_origins_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    form: CorsOriginForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "ctx": ctx,
        "active_section": "tokens",
        "origins": list(selectors.cors_origin_list(org=ctx.org)),
        "form": form or CorsOriginForm(),
        "max_origins": cors.MAX_ORIGINS_PER_ORGANIZATION,
        "exposed_headers": settings.CORS_EXPOSE_HEADERS,
        "allowed_headers": settings.CORS_ALLOW_HEADERS,
    }
    return render(request, "tenants/cors_origins.html", context, status=status)


@org_view(Perm.SETTINGS_MANAGE)
@require_http_methods(["GET", "POST"])
def cors_origins(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if request.method != "POST":
        return _cors_origins_page(request, ctx)
    form = CorsOriginForm(request.POST)
    if not form.is_valid():
        return _cors_origins_page(request, ctx, form=form, status=400)
    try:
        row = services.cors_origin_add(
            org=ctx.org,
            actor=ctx.actor,
            origin=form.cleaned_data["origin"],
            description=form.cleaned_data["description"],
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return _cors_origins_page(request, ctx, form=form, status=exc.status)
    messages.success(request, f"{row.origin} may now call the APIs with a token of {ctx.org.name}.")
    return _redirect_to_top("portal-cors-origins", ctx)


@org_view(Perm.SETTINGS_MANAGE)
@require_POST
def cors_origin_remove(request: HttpRequest, ctx: PortalContext, origin_id: int) -> HttpResponse:
    row = get_or_404(selectors.cors_origin_get, org=ctx.org, origin_id=origin_id)
    try:
        services.cors_origin_remove(org=ctx.org, actor=ctx.actor, cors_origin=row)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _cors_origins_page(request, ctx, status=exc.status)
    messages.success(request, f"{row.origin} is no longer allowed; its pages cannot read the APIs.")
    return _redirect_to_top("portal-cors-origins", ctx)


# --- webhooks --------------------------------------------------------------------------------


def _webhook_context(ctx: PortalContext, **extra: Any) -> dict[str, Any]:
    return {"ctx": ctx, "active_section": "webhooks", "event_types": EVENT_TYPES, **extra}


@org_view(Perm.WEBHOOKS_MANAGE)
@require_safe
def webhooks(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    endpoints = selectors.webhook_list(org=ctx.org)
    return render(request, "tenants/webhooks.html", _webhook_context(ctx, endpoints=endpoints))


@org_view(Perm.WEBHOOKS_MANAGE)
@require_http_methods(["GET", "POST"])
def webhook_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = WebhookForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                endpoint = services.webhook_endpoint_create(
                    org=ctx.org,
                    url=form.cleaned_data["url"],
                    description=form.cleaned_data["description"],
                    event_types=list(form.cleaned_data["event_types"]),
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(
                    request, "Webhook endpoint added. Send a test event to check that it answers."
                )
                return redirect("portal-webhook-detail", ctx.org.slug, endpoint.pk)
    context = _webhook_context(ctx, form=form, endpoint=None)
    return render(request, "tenants/webhook_form.html", context, status=status)


@org_view(Perm.WEBHOOKS_MANAGE)
@require_safe
def webhook_detail(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    endpoint = get_or_404(selectors.webhook_get, org=ctx.org, endpoint_id=endpoint_id)
    deliveries = list(
        selectors.webhook_deliveries(org=ctx.org, endpoint=endpoint)[:RECENT_DELIVERIES]
    )
    context = _webhook_context(ctx, endpoint=endpoint, deliveries=deliveries)
    return _no_store(render(request, "tenants/webhook_detail.html", context))


@org_view(Perm.WEBHOOKS_MANAGE)
@require_http_methods(["GET", "POST"])
def webhook_edit(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    endpoint = get_or_404(selectors.webhook_get, org=ctx.org, endpoint_id=endpoint_id)
    initial = {
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
    }
    form = WebhookForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                services.webhook_endpoint_update(
                    org=ctx.org,
                    endpoint=endpoint,
                    url=form.cleaned_data["url"],
                    description=form.cleaned_data["description"],
                    event_types=list(form.cleaned_data["event_types"]),
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(request, "Webhook endpoint saved.")
                return redirect("portal-webhook-detail", ctx.org.slug, endpoint.pk)
        # The failed update may have assigned fields in memory; show the stored endpoint.
        endpoint.refresh_from_db()
    context = _webhook_context(ctx, form=form, endpoint=endpoint)
    return render(request, "tenants/webhook_form.html", context, status=status)


def _webhook_action(
    request: HttpRequest,
    ctx: PortalContext,
    endpoint_id: int,
    action: Callable[[WebhookEndpoint], str],
) -> HttpResponse:
    """Run one state-changing button of the detail page and come back to it with a message."""
    endpoint = get_or_404(selectors.webhook_get, org=ctx.org, endpoint_id=endpoint_id)
    try:
        message = action(endpoint)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, message)
    return redirect("portal-webhook-detail", ctx.org.slug, endpoint.pk)


@org_view(Perm.WEBHOOKS_MANAGE)
@require_POST
def webhook_toggle(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    enable = request.POST.get("enabled") == "1"

    def toggle(endpoint: WebhookEndpoint) -> str:
        services.webhook_endpoint_update(
            org=ctx.org, endpoint=endpoint, enabled=enable, actor=ctx.actor
        )
        if enable:
            return "Webhook endpoint enabled; new events are delivered to it again."
        return "Webhook endpoint disabled; no events are delivered to it."

    return _webhook_action(request, ctx, endpoint_id, toggle)


@org_view(Perm.WEBHOOKS_MANAGE)
@require_POST
def webhook_rotate(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    def rotate(endpoint: WebhookEndpoint) -> str:
        services.webhook_endpoint_rotate_secret(org=ctx.org, endpoint=endpoint, actor=ctx.actor)
        return "Signing secret rotated. Update your receiver: the old secret no longer verifies."

    return _webhook_action(request, ctx, endpoint_id, rotate)


@org_view(Perm.WEBHOOKS_MANAGE)
@require_POST
def webhook_test(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    def send(endpoint: WebhookEndpoint) -> str:
        event = services.webhook_send_test(org=ctx.org, endpoint=endpoint, actor=ctx.actor)
        return f"Test event {event.id} queued; its delivery appears below."

    return _webhook_action(request, ctx, endpoint_id, send)


@org_view(Perm.WEBHOOKS_MANAGE)
@require_http_methods(["GET", "POST"])
def webhook_delete(request: HttpRequest, ctx: PortalContext, endpoint_id: int) -> HttpResponse:
    endpoint = get_or_404(selectors.webhook_get, org=ctx.org, endpoint_id=endpoint_id)
    context = _webhook_context(ctx, endpoint=endpoint)
    if request.method == "POST":
        url = endpoint.url
        try:
            services.webhook_endpoint_delete(org=ctx.org, endpoint=endpoint, actor=ctx.actor)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return render(request, "tenants/webhook_delete.html", context, status=exc.status)
        messages.success(request, f"Webhook endpoint {url} deleted.")
        return redirect("portal-webhooks", ctx.org.slug)
    return render(request, "tenants/webhook_delete.html", context)


# --- audit log -------------------------------------------------------------------------------


def _audit_filter_form(request: HttpRequest, ctx: PortalContext) -> AuditFilterForm:
    params = request.GET.copy()
    params.pop("page", None)
    actions = selectors.audit_actions(org=ctx.org)
    return AuditFilterForm(params or None, actions=actions)


def _audit_filters(form: AuditFilterForm) -> dict[str, Any] | None:
    """Keyword arguments for ``selectors.audit_list``, or None when the filter is invalid."""
    if not form.is_bound:
        return {}
    if not form.is_valid():
        return None
    return form.filters()


@org_view(Perm.AUDIT_READ)
@require_safe
def audit(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = _audit_filter_form(request, ctx)
    filters = _audit_filters(form)
    context: dict[str, Any] = {"ctx": ctx, "active_section": "audit", "form": form, "page": None}
    if filters is None:
        return render(request, "tenants/audit.html", context, status=400)
    events = selectors.audit_list(org=ctx.org, **filters)
    context["page"] = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    context["filtered"] = any(filters.values())
    return render(request, "tenants/audit.html", context)


@org_view(Perm.AUDIT_READ)
@require_safe
def audit_detail(request: HttpRequest, ctx: PortalContext, event_id: int) -> HttpResponse:
    event = get_or_404(selectors.audit_get, org=ctx.org, event_id=event_id)
    context = {
        "ctx": ctx,
        "active_section": "audit",
        "event": event,
        "details": audit_detail_rows(event.details),
    }
    return render(request, "tenants/audit_detail.html", context)


def audit_detail_rows(details: Any, prefix: str = "") -> list[tuple[str, str]]:
    """An event's details as (term, value) rows for a definition list: nested objects flattened
    to ``outer · inner`` terms in key order, lists of plain values joined, anything empty ``—``.
    A page of raw JSON (``{}``) is what an auditor should not have to read."""
    if isinstance(details, dict) and details:
        rows: list[tuple[str, str]] = []
        for key in sorted(details, key=str):
            term = f"{prefix} · {key}" if prefix else str(key)
            rows += audit_detail_rows(details[key], term)
        return rows
    return [(prefix or "Details", _detail_value(details))] if prefix or details else []


def _detail_value(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_detail_value(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


AUDIT_CSV_HEADER = [
    "time_utc",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target",
    "ip",
    "user_agent",
    "details",
]


def _audit_details(details: Any) -> str:
    return json.dumps(details, sort_keys=True, ensure_ascii=False)


# org_view is typed for HttpResponse; a StreamingHttpResponse is an HttpResponseBase.
@org_view(Perm.AUDIT_READ)
# GET only, not HEAD: every export is recorded in the audit log.
@require_GET
def audit_export(request: HttpRequest, ctx: PortalContext) -> HttpResponseBase:
    form = _audit_filter_form(request, ctx)
    filters = _audit_filters(form)
    if filters is None:
        context = {"ctx": ctx, "active_section": "audit", "form": form, "page": None}
        return render(request, "tenants/audit.html", context, status=400)
    with transaction.atomic():
        record = services.audit_record(
            org=ctx.org,
            actor=ctx.actor,
            action="audit.exported",
            target=ctx.org,
            details={
                "format": "csv",
                "filters": {
                    k: (v.isoformat() if hasattr(v, "isoformat") else v)
                    for k, v in filters.items()
                    if v
                },
            },
        )
    # The export lists what happened before it; its own record is the next line in the log.
    events = selectors.audit_list(org=ctx.org, **filters).exclude(pk=record.pk)
    filename = f"audit-{ctx.org.slug}-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response = StreamingHttpResponse(
        # iterator(): constant memory however long the log is.
        audit_events_csv(
            events.iterator(chunk_size=500), header=AUDIT_CSV_HEADER, details=_audit_details
        ),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    add_never_cache_headers(response)
    return response


# --- invitation page (public: the secret in the URL is the credential) ------------------------


def _account_exists(email: str) -> bool:
    user_model = get_user_model()
    return user_model.objects.filter(Q(email__iexact=email) | Q(username__iexact=email)).exists()


def _invitation_closed(
    request: HttpRequest, invitation: Invitation | None, *, title: str, message: str, status: int
) -> HttpResponse:
    context = {"invitation": invitation, "title": title, "message": message}
    return render(request, "tenants/invitation_closed.html", context, status=status)


def _invitation_refusal(request: HttpRequest, invitation: Invitation) -> HttpResponse | None:
    """The page for an invitation that cannot be accepted any more, or None if it still can."""
    org: Organization = invitation.organization
    state = invitation.state
    if state == "accepted":
        return _invitation_closed(
            request,
            invitation,
            title="Invitation already used",
            message="This invitation has already been used. Each link works once.",
            status=409,
        )
    if state == "revoked":
        return _invitation_closed(
            request,
            invitation,
            title="Invitation withdrawn",
            message=f"This invitation was withdrawn by {org.name}.",
            status=410,
        )
    if state == "expired":
        return _invitation_closed(
            request,
            invitation,
            title="Invitation expired",
            message=f"This invitation has expired; ask an administrator of {org.name} for a new one.",
            status=410,
        )
    if not org.is_active:
        return _invitation_closed(
            request,
            invitation,
            title="Organization unavailable",
            message=f"{org.name} is {org.get_status_display().lower()}; invitations cannot be accepted.",
            status=403,
        )
    return None


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, secret: str) -> HttpResponse:
    """Show an invitation; accept it only on POST.

    GET never changes anything: mail scanners and link previews open invitation links.
    """
    try:
        invitation = services.invitation_get_by_secret(secret=secret)
    except NotFound as exc:
        return _invitation_closed(
            request, None, title="Invitation not valid", message=exc.message, status=404
        )
    refusal = _invitation_refusal(request, invitation)
    if refusal is not None:
        return refusal
    org = invitation.organization
    context: dict[str, Any] = {"invitation": invitation, "org": org}
    user: Any = request.user

    if user.is_authenticated:
        if (user.email or "").lower() != invitation.email:
            context["mode"] = "wrong_user"
            return render(request, "tenants/invitation.html", context, status=403)
        context["mode"] = "accept"
        if request.method == "POST":
            try:
                services.invitation_accept(
                    secret=secret, user=user, actor=Actor.from_request(request)
                )
            except ServiceError as exc:
                messages.error(request, exc.message)
                return render(request, "tenants/invitation.html", context, status=exc.status)
            messages.success(request, f"Welcome to {org.name}.")
            return redirect("portal-dashboard", org.slug)
        return render(request, "tenants/invitation.html", context)

    if _account_exists(invitation.email):
        context["mode"] = "login"
        context["login_url"] = f"{reverse('login')}?{urlencode({'next': request.path})}"
        status = 409 if request.method == "POST" else 200
        return render(request, "tenants/invitation.html", context, status=status)

    context["mode"] = "signup"
    form = InvitationSignupForm(request.POST or None, email=invitation.email)
    context["form"] = form
    if request.method != "POST":
        return render(request, "tenants/invitation.html", context)
    if not form.is_valid():
        return render(request, "tenants/invitation.html", context, status=400)
    try:
        membership = services.invitation_signup(
            secret=secret,
            name=form.cleaned_data["name"],
            password=form.cleaned_data["password1"],
            actor=Actor.from_request(request),
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return render(request, "tenants/invitation.html", context, status=exc.status)
    except IntegrityError:
        form.add_error(
            None, "An account with this email address already exists; sign in to accept."
        )
        return render(request, "tenants/invitation.html", context, status=409)
    messages.success(request, f"Your account is ready. Welcome to {org.name}.")
    # Through the one sign-in seam: an organization that requires a second factor sends the new
    # member to enrolment before anything else.
    return sign_in(
        request,
        membership.user,
        method="password",
        next_url=reverse("portal-dashboard", args=[org.slug]),
    )


# --- password reset ------------------------------------------------------------------------------


class PasswordResetView(auth_views.PasswordResetView):
    """Django's password reset, limited per email address and per client address
    (``PASSWORD_RESET_LIMIT`` and ``PASSWORD_RESET_LIMIT_PER_ADDRESS`` per
    ``PASSWORD_RESET_WINDOW_MINUTES``): a 429 with the form and how long to wait."""

    template_name = "registration/password_reset_form.html"

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        wait = lockout.password_reset_wait(
            email=form.cleaned_data["email"], address=client_ip(self.request)
        )
        if wait:
            minutes = max(1, math.ceil(wait / 60))
            form.add_error(
                None,
                "Too many password reset requests for this email address or from your network. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}; "
                "a link already sent stays valid.",
            )
            response = self.form_invalid(form)
            response.status_code = 429
            return response
        return super().form_valid(form)


# --- the member's own account: signed-in sessions ----------------------------------------------


def _session_rows(request: HttpRequest) -> list[dict[str, Any]]:
    current = request.session.session_key
    rows: list[dict[str, Any]] = [
        {
            "session": record,
            "is_current": bool(current) and record.session_key == current,
            "browser": browser_label(record.user_agent),
        }
        for record in selectors.user_session_list(user=request.user)
    ]
    # This device first, then the most recently used.
    rows.sort(key=lambda r: (not r["is_current"], -r["session"].last_seen_at.timestamp()))
    return rows


@login_required
@require_safe
def account(request: HttpRequest) -> HttpResponse:
    rows = _session_rows(request)
    context = {
        "rows": rows,
        "others": sum(1 for r in rows if not r["is_current"]),
        "idle_minutes": settings.SESSION_IDLE_TIMEOUT_SECONDS // 60,
    }
    return _no_store(render(request, "tenants/account.html", context))


@login_required
@require_POST
def account_session_end(request: HttpRequest, session_id: int) -> HttpResponse:
    record = get_or_404(selectors.user_session_get, user=request.user, session_id=session_id)
    if record.session_key == request.session.session_key:
        messages.error(request, "This is the session you are using: sign out to end it.")
        return redirect(reverse("portal-account") + "#main")
    services.user_session_end(
        user_session=record, actor=Actor.from_request(request), reason="ended by its owner"
    )
    messages.success(request, f"The session from {browser_label(record.user_agent)} ended.")
    return redirect(reverse("portal-account") + "#main")


@login_required
@require_POST
def account_sessions_end_others(request: HttpRequest) -> HttpResponse:
    count = services.sessions_end_for_user(
        user=request.user,
        actor=Actor.from_request(request),
        reason="ended by its owner (all other sessions)",
        keep_session_key=request.session.session_key,
    )
    noun = "session" if count == 1 else "sessions"
    messages.success(request, f"{count} other {noun} ended.")
    return redirect(reverse("portal-account") + "#main")
