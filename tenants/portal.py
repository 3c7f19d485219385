"""The portal's tenant context: ``/o/<slug>/...`` pages resolve the organization and the member.

A slug the user is not a member of answers 404 (never 403, never data); a missing permission
answers 403 naming it; a suspended or closed organization is refused with a clear page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render

from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import PERMISSION_DESCRIPTIONS
from tenants.selectors import membership_for_user


class PortalContext:
    def __init__(self, org: Organization, membership: Membership, request: HttpRequest):
        self.org = org
        self.membership = membership
        self.permissions = membership.permissions
        self.actor = Actor.from_request(request)

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def org_view(
    permission: str = "org.view",
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Decorate a portal view ``view(request, ctx: PortalContext, ...)`` under ``/o/<slug>/``."""

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @login_required
        @wraps(view)
        def wrapper(
            request: HttpRequest, org_slug: str, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            org = Organization.objects.filter(slug=org_slug).first()
            membership = membership_for_user(org=org, user=request.user) if org else None
            # A deactivated membership (SCIM ``active: false``) is no membership: 404 like a
            # stranger's, until the identity provider reactivates it.
            if org is None or membership is None or membership.deactivated_at is not None:
                raise Http404("Organization not found.")
            if not org.is_active:
                return render(request, "saas/org_inactive.html", {"inactive_org": org}, status=403)
            ctx = PortalContext(org, membership, request)
            request.portal = ctx  # type: ignore[attr-defined]
            if permission not in ctx.permissions:
                return render(
                    request,
                    "saas/forbidden.html",
                    {
                        "ctx": ctx,
                        "permission": permission,
                        "permission_text": PERMISSION_DESCRIPTIONS.get(permission, permission),
                    },
                    status=403,
                )
            return view(request, ctx, *args, **kwargs)

        return wrapper

    return decorator
