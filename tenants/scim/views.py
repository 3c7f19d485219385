"""The SCIM section of the Security page (/o/<org_slug>/security/scim/), for owners: the base
URL to paste into the identity provider, the SCIM token (created and shown once, revoked), the
latest provisioning activity, and the groups with the roles their names map to."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from tenants.models import ApiToken, Membership, ScimGroup
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm, Role
from tenants.scim import selectors, services
from tenants.scim.errors import ScimError

NEW_SCIM_TOKEN_SESSION_KEY = "portal.new_scim_token"


def _page_url(ctx: PortalContext) -> str:
    return reverse("portal-scim", args=[ctx.org.slug])


@org_view(Perm.SECURITY_MANAGE)
@require_http_methods(["GET", "POST"])
def scim_settings(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if request.method == "POST":
        token, secret = services.scim_token_create(org=ctx.org, actor=ctx.actor)
        # Shown once: the next GET pops it, so a reload no longer contains the secret.
        request.session[NEW_SCIM_TOKEN_SESSION_KEY] = {
            "org_id": ctx.org.pk,
            "token_id": token.pk,
            "secret": secret,
        }
        messages.success(request, "SCIM token created; copy it into your identity provider now.")
        return redirect(_page_url(ctx) + "#main")
    new_token = request.session.get(NEW_SCIM_TOKEN_SESSION_KEY)
    if new_token is not None and new_token.get("org_id") == ctx.org.pk:
        del request.session[NEW_SCIM_TOKEN_SESSION_KEY]
    else:
        new_token = None
    mapping = services.role_mapping(org=ctx.org)
    groups = selectors.scim_group_rows(org=ctx.org)
    counts = _member_counts(groups)
    role_labels = dict(Role.choices)
    tokens: list[ApiToken] = selectors.scim_token_list(org=ctx.org)
    context: dict[str, Any] = {
        "ctx": ctx,
        "active_section": "security",
        "base_url": request.build_absolute_uri("/scim/v2/"),
        "tokens": tokens,
        "active_tokens": [t for t in tokens if t.state == "active"],
        "new_token": new_token,
        "activity": list(selectors.scim_activity(org=ctx.org)),
        "has_mapping": bool(mapping),
        "groups": [
            {
                "group": g,
                "members": counts.get(g.pk, 0),
                "role": role_labels.get(mapping.get(g.display_name, ""), ""),
            }
            for g in groups
        ],
        "deactivated": Membership.objects.for_org(ctx.org)
        .filter(deactivated_at__isnull=False)
        .count(),
    }
    response = render(request, "tenants/scim/settings.html", context)
    add_never_cache_headers(response)
    return response


def _member_counts(groups: list[ScimGroup]) -> dict[int, int]:
    rows = (
        ScimGroup.objects.filter(pk__in=[g.pk for g in groups])
        .annotate(n=Count("members"))
        .values_list("id", "n")
    )
    return dict(rows)


@org_view(Perm.SECURITY_MANAGE)
@require_POST
def scim_token_revoke(request: HttpRequest, ctx: PortalContext, token_id: int) -> HttpResponse:
    token = next((t for t in selectors.scim_token_list(org=ctx.org) if t.pk == token_id), None)
    if token is None:
        raise Http404("Token not found.")
    try:
        services.scim_token_revoke(org=ctx.org, actor=ctx.actor, token=token)
    except ScimError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(
            request, "SCIM token revoked; the identity provider's requests are refused from now on."
        )
    return redirect(_page_url(ctx) + "#main")
