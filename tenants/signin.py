"""The one way a person becomes signed in, whatever proved who they are.

The password form (``saas.views.LoginView``) and single sign-on (``tenants.sso``) both end in
``sign_in``: it records how the person signed in (``request.login_method`` /
``request.login_factor``, read by ``tenants.signals`` into the audit log and ``UserSession``),
applies the organization's second-factor policy, then logs the person in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.utils.http import url_has_allowed_host_and_scheme

BACKEND = "django.contrib.auth.backends.ModelBackend"


def safe_next(request: HttpRequest, candidate: str | None) -> str:
    """``candidate`` if it points into this site, else the landing page."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return str(resolve_url("home"))


def sign_in(
    request: HttpRequest,
    user: Any,
    *,
    method: str,
    next_url: str | None = None,
    idp_amr: Sequence[str] = (),
) -> HttpResponse:
    """Sign ``user`` in after their first factor was checked by ``method`` ("password" or
    "sso:<provider name>"). ``idp_amr``: the ID token's ``amr`` values, when the identity provider
    says how it authenticated the person.

    Precondition: the caller has checked the person's credentials (password, ID token) and that
    they may use this method (an organization requiring SSO refuses its members' passwords).
    """
    request.login_method = method[:64]  # type: ignore[attr-defined]
    login(request, user, backend=BACKEND)
    return HttpResponseRedirect(safe_next(request, next_url))
