"""The portal shell: sign-in, the list of a user's organizations, the dashboard, error pages."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import redirect, render
from django.template import loader
from django.utils import timezone

from tenants import selectors
from tenants.forms import EmailAuthenticationForm
from tenants.labels import bytes_label
from tenants.models import WebhookEndpoint
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm, Role
from tenants.signin import sign_in

DASHBOARD_AUDIT_EVENTS = 10
DASHBOARD_INVITATIONS = 10


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True
    form_class = EmailAuthenticationForm

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        # The organization's second-factor policy applies here (tenants.signin), not in Django's
        # own form_valid, which would log the person in at once.
        return sign_in(
            self.request, form.get_user(), method="password", next_url=self.get_success_url()
        )

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        response.status_code = 400
        return response


@login_required
def home(request: HttpRequest) -> HttpResponse:
    memberships = list(selectors.memberships_for_user(user=request.user))
    if len(memberships) == 1:
        return redirect("portal-dashboard", memberships[0].organization.slug)
    return render(request, "saas/home.html", {"memberships": memberships})


@org_view()
def dashboard(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    org = ctx.org
    by_role = dict(
        selectors.member_list(org=org)
        .order_by()
        .values_list("role")
        .annotate(count=Count("id"))
        .values_list("role", "count")
    )
    roles = [{"value": v, "label": label, "count": by_role.get(v, 0)} for v, label in Role.choices]
    endpoints = list(selectors.webhook_list(org=org))
    pending = selectors.invitation_list(org=org, state="pending")
    # "Active" is the model's own definition (not revoked, not expired); an organization has few
    # tokens, so they are counted here rather than re-stating the rule as a query.
    active_tokens = sum(
        1 for t in selectors.token_list(org=org, include_revoked=False) if t.state == "active"
    )
    context: dict[str, Any] = {
        "ctx": ctx,
        "active_section": "dashboard",
        "roles": roles,
        "member_total": sum(r["count"] for r in roles),
        "active_tokens": active_tokens,
        "endpoints": endpoints,
        "endpoint_states": {
            state: sum(1 for e in endpoints if e.state == state)
            for state in WebhookEndpoint.State.values
        },
        "pending_count": pending.count(),
        "pending_invitations": list(pending[:DASHBOARD_INVITATIONS]),
        "audit_events": (
            list(selectors.audit_list(org=org)[:DASHBOARD_AUDIT_EVENTS])
            if ctx.can(Perm.AUDIT_READ)
            else None
        ),
    }
    context["archive"] = archive_overview(ctx) if ctx.can(Perm.IMAGES_READ) else None
    return render(request, "saas/dashboard.html", context)


def archive_overview(ctx: PortalContext) -> dict[str, Any]:
    """The dashboard's archive panel: bytes per tier (now, from the index, and over the last days
    from the storage ledger's rollups), tier moves and restores in progress."""
    from archive.index.selectors import bytes_by_tier
    from archive.models import RestoreRequest, TierMove
    from billing.views import STORAGE_DAYS, storage_chart
    from tenants.charts import TIER_COLORS

    org = ctx.org
    tiers = bytes_by_tier(org=org)
    moves = (
        TierMove.objects.for_org(org)
        .filter(state__in=TierMove.OPEN_STATES)
        .aggregate(count=Count("id"), bytes=Sum("size_bytes"))
    )
    restores = (
        RestoreRequest.objects.for_org(org)
        .filter(state=RestoreRequest.State.IN_PROGRESS)
        .aggregate(count=Count("id"), bytes=Sum("bytes_total"))
    )
    return {
        "tiers": [
            {"tier": t, "bytes": bytes_label(b), "color": TIER_COLORS[t]} for t, b in tiers.items()
        ],
        "total": bytes_label(sum(tiers.values())),
        "chart": storage_chart(org=org, now=timezone.now()),
        "chart_days": STORAGE_DAYS,
        "moves_count": moves["count"] or 0,
        "moves_bytes": bytes_label(moves["bytes"] or 0),
        "restores_count": restores["count"] or 0,
        "restores_bytes": bytes_label(restores["bytes"] or 0),
        "can_analytics": ctx.can(Perm.IMAGES_READ) or ctx.can(Perm.POLICIES_MANAGE),
    }


def not_found(request: HttpRequest, exception: Any = None) -> HttpResponse:
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse(
            {"error": {"code": "not_found", "message": "Not found.", "fields": {}}}, status=404
        )
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Internal error.", "fields": {}}},
            status=500,
        )
    # No request context: the context processors query the database, which may be what failed.
    return HttpResponseServerError(loader.get_template("500.html").render())
