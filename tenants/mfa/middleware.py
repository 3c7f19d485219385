"""Takes a person whose organization requires a second factor, and who has none, to enrolment.

``tenants.signin`` marks the session at sign-in (``ENROL_KEY``); until the person adds an
authenticator app or a security key, every page answers with a redirect to Sign-in factors, and
the REST API (for this session) with 403. Enrolment, signing out and static files stay open.

It also keeps Django admin's own sign-in form (Strata staff) from skipping the second step: its
page sends the browser to the portal's sign-in, and a password accepted there anyway for a
person who has a second factor is undone at once (signed out, sent to the portal's sign-in).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import get_urlconf, reverse
from django.utils.http import urlencode

from tenants.mfa import selectors as mfa_selectors
from tenants.signin import ENROL_KEY

_OPEN_PREFIXES = (
    "/account/factors/",
    "/accounts/logout/",
    "/accounts/mfa/",
    "/accounts/login/",
    "/static/",
    "/healthz",
    "/readyz",
    "/favicon",
)


@functools.lru_cache(maxsize=8)
def _admin_login_path(urlconf: Any) -> str:
    """The admin's login path, reversed once per URL configuration (not at every request)."""
    return reverse("admin:login", urlconf=urlconf)


class MfaEnrolmentMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == _admin_login_path(get_urlconf()):
            return self._admin_login(request)
        user = getattr(request, "user", None)
        session = getattr(request, "session", None)
        if (
            session is not None
            and user is not None
            and user.is_authenticated
            and session.get(ENROL_KEY)
            and not request.path.startswith(_OPEN_PREFIXES)
            and self._still_required(request, user)
        ):
            message = (
                "Your organization requires a second factor: add an authenticator app or a "
                "security key under Your account → Sign-in factors first."
            )
            if request.path.startswith(("/api/", "/dicomweb/")):
                return JsonResponse(
                    {"error": {"code": "mfa_enrolment_required", "message": message, "fields": {}}},
                    status=403,
                )
            target = reverse("mfa-factors")
            if request.method in ("GET", "HEAD"):
                target += "?" + urlencode({"next": request.get_full_path()})
            return HttpResponseRedirect(target)
        return self.get_response(request)

    def _admin_login(self, request: HttpRequest) -> HttpResponse:
        to_portal = (
            reverse("login") + "?" + urlencode({"next": request.GET.get("next") or "/admin/"})
        )
        if request.method in ("GET", "HEAD") and not request.user.is_authenticated:
            return HttpResponseRedirect(to_portal)
        # A POST still reaches the admin's form, so that wrong passwords count towards the lockout.
        response = self.get_response(request)
        user: Any = request.user
        if (
            user.is_authenticated
            and not getattr(request, "login_factor", "")
            and mfa_selectors.has_factor(user=user)
        ):
            logout(request)
            return HttpResponseRedirect(to_portal)
        return response

    @staticmethod
    def _still_required(request: HttpRequest, user: Any) -> bool:
        """Checked again on each request of a marked session only: a factor added in another
        browser, or a policy lifted meanwhile, releases the session."""
        if mfa_selectors.has_factor(user=user) or not mfa_selectors.organizations_requiring_mfa(
            user=user
        ):
            request.session.pop(ENROL_KEY, None)
            return False
        return True
