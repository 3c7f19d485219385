"""The one way a person becomes signed in, whatever proved who they are.

The password form (``saas.views.LoginView``) and single sign-on (``tenants.sso``) both end in
``sign_in``: it records how the person signed in (``request.login_method`` /
``request.login_factor``, read by ``tenants.signals`` into the audit log and ``UserSession``),
applies the second-factor rules, then logs the person in:

- the identity provider says it did multi-factor authentication (``idp_did_mfa``): signed in,
  factor ``idp:<amr values>``;
- the person has an authenticator app or a security key: not signed in yet. A pending sign-in
  (who, how, where to go next) is kept in the session for ``PENDING_SECONDS`` and the browser
  goes to the second step (``/accounts/mfa/``), which ends in ``complete_sign_in``;
- an organization of theirs requires a second factor and they have none: signed in, but the
  session is marked so that ``tenants.mfa.middleware`` takes every page to enrolment until they
  add one;
- otherwise: signed in with no second factor (factor "").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from tenants.mfa import selectors as mfa_selectors

BACKEND = "django.contrib.auth.backends.ModelBackend"

# The second step must follow the first within this time; then the password is asked again.
PENDING_SECONDS = 5 * 60
# Wrong codes within one pending sign-in before it is dropped (the per-person limit across
# sign-ins is tenants.mfa.services.MAX_FAILURES).
PENDING_MAX_ATTEMPTS = 5
PENDING_KEY = "mfa_pending"
ENROL_KEY = "mfa_enrol_required"

# RFC 8176 authentication method references, by kind of factor. The identity provider's sign-in
# counts as multi-factor when its ``amr`` says "mfa" (or "mca", several channels) or names methods
# of two different kinds, e.g. ["pwd", "otp"] or ["hwk", "pin"] (a passkey with its PIN).
AMR_MULTI = frozenset({"mfa", "mca"})
AMR_KNOWLEDGE = frozenset({"pwd", "pin", "kba"})
AMR_POSSESSION = frozenset({"hwk", "swk", "otp", "sms", "tel", "sc", "pop"})
AMR_INHERENCE = frozenset({"fpt", "face", "iris", "retina", "vbm"})
# ``acr`` values that promise multi-factor authentication (OpenID PAPE, Microsoft's phishing-
# resistant levels, Okta's 2FA level). Any other acr says nothing about factors.
ACR_MULTI = frozenset(
    {
        "http://schemas.openid.net/pape/policies/2007/06/multi-factor",
        "http://schemas.openid.net/pape/policies/2007/06/multi-factor-physical",
        "phr",
        "phrh",
        "urn:okta:loa:2fa:any",
    }
)


def safe_next(request: HttpRequest, candidate: str | None) -> str:
    """``candidate`` if it points into this site, else the landing page."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return str(resolve_url(settings.LOGIN_REDIRECT_URL))


def idp_did_mfa(amr: Sequence[str], acr: str = "") -> bool:
    """Whether the identity provider's ``amr`` / ``acr`` claims say it used more than one factor."""
    values = {str(v).strip().lower() for v in amr if isinstance(v, str)}
    if values & AMR_MULTI:
        return True
    kinds = sum(1 for kind in (AMR_KNOWLEDGE, AMR_POSSESSION, AMR_INHERENCE) if values & kind)
    return kinds >= 2 or acr.strip() in ACR_MULTI


def _idp_factor(amr: Sequence[str], acr: str) -> str:
    values = sorted({str(v).strip().lower() for v in amr if isinstance(v, str) and v.strip()})
    return ("idp:" + (",".join(values) if values else f"acr={acr.strip()}"))[:64]


def complete_sign_in(
    request: HttpRequest, user: Any, *, method: str, factor: str, next_url: str | None
) -> HttpResponse:
    """Log ``user`` in; ``factor`` is the second factor that was checked ("" for none)."""
    request.session.pop(PENDING_KEY, None)
    request.login_method = method[:64]  # type: ignore[attr-defined]
    request.login_factor = factor[:64]  # type: ignore[attr-defined]
    login(request, user, backend=BACKEND)
    if not factor and mfa_selectors.organizations_requiring_mfa(user=user):
        # After login(): it may flush the session of a previous person. The value is where to
        # go once a factor is added.
        request.session[ENROL_KEY] = safe_next(request, next_url)
        return HttpResponseRedirect(reverse("mfa-factors"))
    return HttpResponseRedirect(safe_next(request, next_url))


def sign_in(
    request: HttpRequest,
    user: Any,
    *,
    method: str,
    next_url: str | None = None,
    idp_amr: Sequence[str] = (),
    idp_acr: str = "",
) -> HttpResponse:
    """Sign ``user`` in after their first factor was checked by ``method`` ("password" or
    "sso:<provider name>"). ``idp_amr`` / ``idp_acr``: the ID token's ``amr`` values and ``acr``,
    when the identity provider says how it authenticated the person.

    Precondition: the caller has checked the person's credentials (password, ID token) and that
    they may use this method (an organization requiring SSO refuses its members' passwords).
    """
    if idp_did_mfa(idp_amr, idp_acr):
        return complete_sign_in(
            request, user, method=method, factor=_idp_factor(idp_amr, idp_acr), next_url=next_url
        )
    if mfa_selectors.has_factor(user=user):
        now = time.time()
        request.session[PENDING_KEY] = {
            "user": user.pk,
            "method": method[:64],
            "next": safe_next(request, next_url),
            "started": now,
            "expires": now + PENDING_SECONDS,
            "attempts": 0,
        }
        return HttpResponseRedirect(reverse("mfa-verify"))
    return complete_sign_in(request, user, method=method, factor="", next_url=next_url)


def pending_sign_in(request: HttpRequest) -> tuple[Any, dict[str, Any]] | None:
    """The person whose second step this browser owes, and the pending state; None when there is
    none or it expired (then it is dropped)."""
    state = request.session.get(PENDING_KEY)
    if not isinstance(state, dict):
        return None
    expires = state.get("expires")
    if not isinstance(expires, (int, float)) or expires < time.time():
        request.session.pop(PENDING_KEY, None)
        return None
    user_id = state.get("user")
    user = (
        get_user_model().objects.filter(pk=user_id, is_active=True).first()
        if isinstance(user_id, int)
        else None
    )
    if user is None:
        request.session.pop(PENDING_KEY, None)
        return None
    return user, state


def pending_failed(request: HttpRequest) -> bool:
    """Count a wrong code against the pending sign-in; True when it was the last one allowed
    (the pending sign-in is then dropped and the password is asked again)."""
    state = request.session.get(PENDING_KEY)
    if not isinstance(state, dict):
        return True
    attempts = int(state.get("attempts", 0)) + 1
    if attempts >= PENDING_MAX_ATTEMPTS:
        request.session.pop(PENDING_KEY, None)
        return True
    request.session[PENDING_KEY] = {**state, "attempts": attempts}
    return False
