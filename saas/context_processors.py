from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from saas.portal import NAV_SECTIONS


def portal(request: HttpRequest) -> dict[str, Any]:
    """Navigation and the organization switcher for every portal page."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from tenants.selectors import memberships_for_user

    ctx = getattr(request, "portal", None)
    nav: list[dict[str, Any]] = []
    if ctx is not None:
        for section in NAV_SECTIONS:
            if section["perm"] not in ctx.permissions:
                continue
            url = reverse(section["url_name"], args=[ctx.org.slug]) if section["url_name"] else None
            nav.append({**section, "url": url})
    return {
        "portal": ctx,
        "current_org": ctx.org if ctx else None,
        "nav_sections": nav,
        "user_memberships": list(memberships_for_user(user=user)),
    }
