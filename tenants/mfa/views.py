"""Pages of second factors: the second step of sign-in (``/accounts/mfa/``), the person's own
factors (``/account/factors/``) and the organization's policy (``/o/<slug>/security/mfa/``)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from tenants import signin
from tenants.context import Actor
from tenants.errors import NotFound, ServiceError
from tenants.forms import form_apply_service_error
from tenants.mfa import selectors, services, totp
from tenants.mfa.forms import (
    CodeForm,
    MfaPolicyForm,
    RecoveryCodeForm,
    RemoveFactorForm,
    TotpAddForm,
    WebAuthnAddForm,
)
from tenants.models import SecurityPolicy
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

# tenants.mfa.passkeys is imported in the security-key views themselves (below): py_webauthn
# (some 23 MB with its ASN.1 and CBOR parsers) loads with the first ceremony, not in every web
# worker.

_TOTP_SETUP_KEY = "mfa_totp_setup"
# A WebAuthn answer is a few kilobytes; anything much larger is not one.
_MAX_JSON_BYTES = 64 * 1024


def _no_store(response: HttpResponse) -> HttpResponse:
    # Secrets (QR codes, recovery codes) must not come back from the browser cache.
    add_never_cache_headers(response)
    return response


def _json_error(exc: ServiceError) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}},
        status=exc.status,
    )


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > _MAX_JSON_BYTES:
        raise ServiceError("The request body is too large.", code="body_too_large")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ServiceError("The request body is not JSON.", code="invalid") from None
    if not isinstance(data, dict):
        raise ServiceError("The request body is not a JSON object.", code="invalid")
    return data


# --- second step of sign-in ------------------------------------------------------------------


def _pending_actor(request: HttpRequest, user: Any) -> Actor:
    # Not signed in yet: the audit log names the person the pending sign-in is for.
    base = Actor.from_request(request)
    return Actor(user=user, ip=base.ip, user_agent=base.user_agent)


def _pending_or_login(request: HttpRequest) -> tuple[Any, dict[str, Any]] | HttpResponse:
    pending = signin.pending_sign_in(request)
    if pending is None:
        messages.error(request, "Your sign-in expired or was not started here: sign in again.")
        return redirect("login")
    return pending


def _step_context(user: Any, **extra: Any) -> dict[str, Any]:
    return {
        "has_totp": selectors.totp_list(user=user).exists(),
        "has_webauthn": selectors.webauthn_list(user=user).exists(),
        **extra,
    }


def _refused(request: HttpRequest, exc: ServiceError) -> HttpResponse | None:
    """Count a refused code against the pending sign-in; a redirect to the password when the
    pending sign-in is over (too many tries), else None (show the form again)."""
    if isinstance(exc, services.TooManyAttempts) or signin.pending_failed(request):
        request.session.pop(signin.PENDING_KEY, None)
        messages.error(request, f"{exc.message} Sign in again.")
        return redirect("login")
    return None


@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest) -> HttpResponse:
    pending = _pending_or_login(request)
    if isinstance(pending, HttpResponse):
        return pending
    user, state = pending
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            services.totp_check(
                user=user, actor=_pending_actor(request, user), code=form.cleaned_data["code"]
            )
        except ServiceError as exc:
            gone = _refused(request, exc)
            if gone is not None:
                return gone
            form_apply_service_error(form, exc)
            status = exc.status
        else:
            return signin.complete_sign_in(
                request, user, method=state["method"], factor="totp", next_url=state["next"]
            )
    elif request.method == "POST":
        status = 400
    context = _step_context(user, form=form, email=user.email)
    return _no_store(render(request, "tenants/mfa/verify.html", context, status=status))


@require_http_methods(["GET", "POST"])
def recovery(request: HttpRequest) -> HttpResponse:
    pending = _pending_or_login(request)
    if isinstance(pending, HttpResponse):
        return pending
    user, state = pending
    form = RecoveryCodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            left = services.recovery_code_use(
                user=user, actor=_pending_actor(request, user), code=form.cleaned_data["code"]
            )
        except ServiceError as exc:
            gone = _refused(request, exc)
            if gone is not None:
                return gone
            form_apply_service_error(form, exc)
            status = exc.status
        else:
            response = signin.complete_sign_in(
                request,
                user,
                method=state["method"],
                factor="recovery-code",
                next_url=state["next"],
            )
            noun = "code" if left == 1 else "codes"
            level = messages.WARNING if left <= 3 else messages.INFO
            messages.add_message(
                request,
                level,
                f"You signed in with a recovery code; {left} {noun} left. If you lost your "
                "authenticator app or security key, add a new one under Sign-in factors.",
            )
            return response
    elif request.method == "POST":
        status = 400
    context = _step_context(user, form=form, email=user.email)
    return _no_store(render(request, "tenants/mfa/recovery.html", context, status=status))


@require_POST
def cancel(request: HttpRequest) -> HttpResponse:
    request.session.pop(signin.PENDING_KEY, None)
    return redirect("login")


@require_POST
def webauthn_options(request: HttpRequest) -> JsonResponse:
    from tenants.mfa import passkeys  # py_webauthn: see the imports above

    pending = signin.pending_sign_in(request)
    if pending is None:
        return _json_error(
            ServiceError("Your sign-in expired: sign in again.", code="mfa_pending_expired")
        )
    user, _state = pending
    credentials = list(selectors.webauthn_list(user=user))
    if not credentials:
        return _json_error(
            ServiceError("No security key is registered to this account.", code="webauthn_none")
        )
    options = passkeys.authentication_options(request, user=user, credentials=credentials)
    return JsonResponse(json.loads(options))


@require_POST
def webauthn_verify(request: HttpRequest) -> JsonResponse:
    from tenants.mfa import passkeys  # py_webauthn: see the imports above

    pending = signin.pending_sign_in(request)
    if pending is None:
        return _json_error(
            ServiceError("Your sign-in expired: sign in again.", code="mfa_pending_expired")
        )
    user, state = pending
    actor = _pending_actor(request, user)
    try:
        services.check_throttle(user)
        body = _json_body(request)
        try:
            row, sign_count = passkeys.authentication_verify(
                request, user=user, credential=body.get("credential")
            )
        except ServiceError as exc:
            services.webauthn_failed(user=user, actor=actor, exc=exc)
            raise
        services.webauthn_used(user=user, actor=actor, credential=row, sign_count=sign_count)
    except (ServiceError, RequestDataTooBig) as exc:
        err = (
            exc if isinstance(exc, ServiceError) else ServiceError("The request body is too large.")
        )
        gone = _refused(request, err)
        response = _json_error(err)
        if gone is not None:
            response = JsonResponse(
                {
                    "error": {"code": err.code, "message": err.message, "fields": {}},
                    "redirect": reverse("login"),
                },
                status=err.status,
            )
        return response
    done = signin.complete_sign_in(
        request, user, method=state["method"], factor="webauthn", next_url=state["next"]
    )
    return JsonResponse({"redirect": done["Location"]})


# --- the person's own factors ----------------------------------------------------------------


def _after_enrol(request: HttpRequest, what: str) -> str:
    """Where to go once a factor was added; lifts the enrolment requirement of the session."""
    messages.success(request, f"{what} added. It will be asked for at your next sign-in.")
    after = request.session.pop(signin.ENROL_KEY, None)
    if not selectors.recovery_codes_left(user=request.user):
        return reverse("mfa-factors") + "#recovery"
    return signin.safe_next(request, after) if after else reverse("mfa-factors")


@login_required
@require_safe
def factors(request: HttpRequest) -> HttpResponse:
    user = request.user
    totp_devices = list(selectors.totp_list(user=user))
    keys = list(selectors.webauthn_list(user=user))
    context = {
        "totp_devices": totp_devices,
        "keys": keys,
        "factor_count": len(totp_devices) + len(keys),
        "recovery_left": selectors.recovery_codes_left(user=user),
        "has_factor": selectors.has_factor(user=user),
        "enrol_required": bool(request.session.get(signin.ENROL_KEY)),
        "requiring": selectors.organizations_requiring_mfa(user=user),
    }
    return _no_store(render(request, "tenants/mfa/factors.html", context))


@login_required
@require_http_methods(["GET", "POST"])
def totp_add(request: HttpRequest) -> HttpResponse:
    secret = request.session.get(_TOTP_SETUP_KEY)
    if not isinstance(secret, str) or request.method == "GET" and "new" in request.GET:
        secret = totp.new_secret()
        request.session[_TOTP_SETUP_KEY] = secret
    form = TotpAddForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                services.totp_enrol(
                    user=request.user,
                    actor=Actor.from_request(request),
                    secret=secret,
                    code=form.cleaned_data["code"],
                    name=form.cleaned_data["name"],
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                request.session.pop(_TOTP_SETUP_KEY, None)
                return redirect(_after_enrol(request, "Authenticator app"))
    user: Any = request.user
    account = user.email or user.get_username()
    uri = totp.provisioning_uri(secret, account=account)
    context = {
        "form": form,
        "qr_svg": totp.qr_svg(uri),
        "secret_groups": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        "account": account,
    }
    return _no_store(render(request, "tenants/mfa/totp_add.html", context, status=status))


@login_required
@require_safe
def webauthn_add(request: HttpRequest) -> HttpResponse:
    return _no_store(render(request, "tenants/mfa/webauthn_add.html", {"form": WebAuthnAddForm()}))


@login_required
@require_POST
def webauthn_register_options(request: HttpRequest) -> JsonResponse:
    from tenants.mfa import passkeys  # py_webauthn: see the imports above

    existing = list(selectors.webauthn_list(user=request.user))
    options = passkeys.registration_options(request, user=request.user, existing=existing)
    return JsonResponse(json.loads(options))


@login_required
@require_POST
def webauthn_register(request: HttpRequest) -> JsonResponse:
    from tenants.mfa import passkeys  # py_webauthn: see the imports above

    try:
        body = _json_body(request)
        form = WebAuthnAddForm({"name": body.get("name") or ""})
        if not form.is_valid():
            raise ServiceError(
                "A name is at most 64 characters.", fields={"name": ["At most 64 characters."]}
            )
        verified = passkeys.registration_verify(
            request, user=request.user, credential=body.get("credential")
        )
        services.webauthn_register(
            user=request.user,
            actor=Actor.from_request(request),
            name=form.cleaned_data["name"],
            **verified,
        )
    except ServiceError as exc:
        return _json_error(exc)
    except RequestDataTooBig:
        return _json_error(ServiceError("The request body is too large.", code="body_too_large"))
    return JsonResponse({"redirect": _after_enrol(request, "Security key")})


def _factor_or_404(request: HttpRequest, kind: str, factor_id: int) -> Any:
    try:
        return selectors.factor_get(user=request.user, kind=kind, factor_id=factor_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


@login_required
@require_http_methods(["GET", "POST"])
def factor_remove(request: HttpRequest, kind: str, factor_id: int) -> HttpResponse:
    factor = _factor_or_404(request, kind, factor_id)
    user: Any = request.user
    has_password = user.has_usable_password()
    has_totp = selectors.totp_list(user=user).exists()
    form = RemoveFactorForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            actor = Actor.from_request(request)
            try:
                if has_password:
                    if not user.check_password(form.cleaned_data["password"]):
                        raise ServiceError(
                            "That is not your password.",
                            fields={"password": ["Not your password."]},
                        )
                elif has_totp:
                    services.totp_check(user=user, actor=actor, code=form.cleaned_data["code"])
                services.factor_remove(user=user, actor=actor, factor=factor)
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(request, f"'{factor.name}' was removed from your account.")
                return redirect("mfa-factors")
    context = {
        "factor": factor,
        "kind": kind,
        "form": form,
        "ask_password": has_password,
        "ask_code": not has_password and has_totp,
    }
    return _no_store(render(request, "tenants/mfa/remove.html", context, status=status))


@login_required
@require_http_methods(["GET", "POST"])
def recovery_codes(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return redirect(reverse("mfa-factors") + "#recovery")
    if not selectors.has_factor(user=request.user):
        messages.error(
            request,
            "Add an authenticator app or a security key first: recovery codes stand in for one.",
        )
        return redirect("mfa-factors")
    codes = services.recovery_codes_generate(user=request.user, actor=Actor.from_request(request))
    return _no_store(render(request, "tenants/mfa/recovery_codes.html", {"codes": codes}))


# --- organization policy ---------------------------------------------------------------------


def _policy_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    form: MfaPolicyForm | None = None,
    status: int = 200,
) -> HttpResponse:
    policy = selectors.policy_get(org=ctx.org)
    without = list(selectors.members_without_factor(org=ctx.org))
    covered = [
        m for m in without if selectors.policy_applies(level=SecurityPolicy.Mfa.ADMINS, role=m.role)
    ]
    context = {
        "ctx": ctx,
        "active_section": "security",
        "policy": policy,
        "form": form or MfaPolicyForm(initial={"mfa_required": policy.mfa_required}),
        "without": without,
        "without_admins": covered,
        "affected": list(selectors.members_without_factor(org=ctx.org, level=policy.mfa_required)),
        "self_has_factor": selectors.has_factor(user=request.user),
    }
    return render(request, "tenants/mfa/policy.html", context, status=status)


@org_view(Perm.SECURITY_MANAGE)
@require_http_methods(["GET", "POST"])
def policy(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if request.method != "POST":
        return _policy_page(request, ctx)
    form = MfaPolicyForm(request.POST)
    if not form.is_valid():
        return _policy_page(request, ctx, form=form, status=400)
    try:
        updated = services.mfa_policy_update(
            org=ctx.org, actor=ctx.actor, mfa_required=form.cleaned_data["mfa_required"]
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return _policy_page(request, ctx, form=form, status=exc.status)
    messages.success(request, f"Second factor: {updated.get_mfa_required_display().lower()}.")
    return redirect(reverse("portal-security-mfa", args=[ctx.org.slug]) + "#main")
