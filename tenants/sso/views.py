"""Single sign-on pages: sign-in by email (discovery, the redirect to the organization's
identity provider and the callback), and the portal's Security page for owners.

The sign-in keeps, in the browser's session, one pending request per ``state``: the provider,
the nonce and the PKCE verifier. The callback pops it, so a state (and the code that came with it)
is answered once; a second use of the same callback URL is refused.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.cache import caches
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from tenants import crypto
from tenants.context import Actor, client_ip
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error
from tenants.models import EmailDomain, IdentityProvider, Organization
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm, Role
from tenants.signin import sign_in
from tenants.sso import oidc, saml, selectors, services
from tenants.sso.forms import DomainForm, ProviderForm, SsoEmailForm
from tenants.views import get_or_404

logger = logging.getLogger(__name__)

PENDING_SESSION_KEY = "sso.pending"
# SAML sign-ins in progress, by RelayState: the provider, the AuthnRequest's id, where to go next.
SAML_PENDING_SESSION_KEY = "sso.saml.pending"
# A sign-in started more than this many seconds ago is not finished any more.
PENDING_TTL_SECONDS = 600
# Sign-ins a browser may have open at once (several tabs); the oldest is dropped beyond.
PENDING_MAX = 5
# Sign-ins one address may start per minute: each one makes Strata fetch the IdP's discovery
# document, and Strata must not become a way to flood a hospital's IdP.
STARTS_PER_MINUTE = 20


def callback_url(request: HttpRequest) -> str:
    """The redirect URI to register at the identity provider (the same for every organization)."""
    return request.build_absolute_uri(reverse("sso-callback"))


def saml_acs_url(request: HttpRequest) -> str:
    """The Assertion Consumer Service URL to register at a SAML IdP (the same for every
    organization)."""
    return request.build_absolute_uri(reverse("sso-saml-acs"))


def saml_sp_entity_id(request: HttpRequest, org: Organization) -> str:
    """Strata's SAML entity id for ``org``: the URL of its service provider metadata. One per
    organization, so that an assertion meant for one hospital's Strata is refused by another's."""
    return request.build_absolute_uri(reverse("sso-saml-metadata", args=[org.slug]))


def _safe_next(request: HttpRequest, candidate: str) -> str:
    """``candidate`` if it points into this site, else the portal's landing page."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("portal-home")


def _page(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    response = render(request, template, context, status=status)
    add_never_cache_headers(response)
    return response


def _refused(
    request: HttpRequest,
    message: str,
    *,
    status: int = 403,
    provider: IdentityProvider | None = None,
) -> HttpResponse:
    return _page(
        request, "tenants/sso/refused.html", {"message": message, "provider": provider}, status
    )


def _unavailable(request: HttpRequest, provider: IdentityProvider, message: str) -> HttpResponse:
    return _page(
        request,
        "tenants/sso/unavailable.html",
        {"provider": provider, "message": message, "org": provider.organization},
        status=502,
    )


# --- sign-in ----------------------------------------------------------------------------------


def _too_many_starts(request: HttpRequest) -> bool:
    """Count this sign-in start against its address's limit for the current minute (the shared
    ``throttle`` cache, so that every web process counts against one limit)."""
    key = f"sso-start:{client_ip(request) or 'unknown'}:{int(time.time() // 60)}"
    cache = caches["throttle"]
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        count = 1
    return count > STARTS_PER_MINUTE


@require_http_methods(["GET", "POST"])
def sso_start(request: HttpRequest) -> HttpResponse:
    """Ask for the work email, find the organization that holds its domain, go to its IdP."""
    form = SsoEmailForm(request.POST or None, initial={"email": request.GET.get("email", "")})
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if request.method != "POST":
        return _page(request, "tenants/sso/start.html", {"form": form, "next": next_url})
    if not form.is_valid():
        return _page(request, "tenants/sso/start.html", {"form": form, "next": next_url}, 400)
    if _too_many_starts(request):
        form.add_error(None, "Too many sign-in attempts from your address; wait a minute.")
        return _page(request, "tenants/sso/start.html", {"form": form, "next": next_url}, 429)
    email = form.cleaned_data["email"].strip().lower()
    provider = selectors.provider_for_email(email=email)
    if provider is None:
        form.add_error(
            "email",
            f"Single sign-on is not set up for {selectors.email_domain_of(email)}. Sign in with "
            "your password, or ask your hospital's Strata owner.",
        )
        return _page(request, "tenants/sso/start.html", {"form": form, "next": next_url}, 400)
    if provider.protocol == IdentityProvider.Protocol.SAML:
        return _saml_start(request, provider, next_url)
    try:
        metadata = oidc.discover(provider.issuer)
    except oidc.IdpUnavailable as exc:
        return _unavailable(request, provider, exc.message)
    except oidc.OidcError as exc:
        return _refused(request, exc.message, status=502, provider=provider)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = oidc.new_pkce()
    pending: dict[str, Any] = dict(request.session.get(PENDING_SESSION_KEY) or {})
    now = time.time()
    pending = {
        k: v
        for k, v in pending.items()
        if isinstance(v, dict) and now - float(v.get("at", 0)) < PENDING_TTL_SECONDS
    }
    while len(pending) >= PENDING_MAX:
        pending.pop(min(pending, key=lambda k: float(pending[k]["at"])))
    pending[state] = {
        "provider": provider.pk,
        "org": provider.organization_id,
        "nonce": nonce,
        "verifier": verifier,
        "next": _safe_next(request, next_url),
        "at": now,
    }
    request.session[PENDING_SESSION_KEY] = pending
    url = oidc.authorization_url(
        metadata,
        client_id=provider.client_id,
        redirect_uri=callback_url(request),
        scopes=provider.scopes,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        login_hint=email,
    )
    return redirect(url)


def _pop_pending(request: HttpRequest, state: str) -> dict[str, Any] | None:
    pending: dict[str, Any] = dict(request.session.get(PENDING_SESSION_KEY) or {})
    entry = pending.pop(state, None) if state else None
    request.session[PENDING_SESSION_KEY] = pending
    if not isinstance(entry, dict):
        return None
    if time.time() - float(entry.get("at", 0)) >= PENDING_TTL_SECONDS:
        return None
    return entry


@require_safe
def sso_callback(request: HttpRequest) -> HttpResponse:
    actor = Actor.from_request(request)
    state = request.GET.get("state", "")
    entry = _pop_pending(request, state)
    if entry is None:
        services.sign_in_refused(
            provider=None,
            org=None,
            actor=actor,
            reason="bad_state",
            message="Unknown, used or expired state.",
        )
        return _refused(
            request,
            "This sign-in answer does not belong to a sign-in started in this browser, or it was "
            "used already or is too old. Start the sign-in again.",
            status=400,
        )
    provider = (
        IdentityProvider.objects.filter(
            pk=entry["provider"], organization_id=entry["org"], enabled=True
        )
        .select_related("organization")
        .first()
    )
    if provider is None or not provider.organization.is_active:
        return _refused(request, "Single sign-on is no longer set up for this organization.")

    def refuse(reason: str, message: str, status: int = 403) -> HttpResponse:
        services.sign_in_refused(
            provider=provider,
            org=provider.organization,
            actor=actor,
            reason=reason,
            message=message,
        )
        return _refused(request, message, status=status, provider=provider)

    if request.GET.get("error"):
        error = request.GET.get("error", "")[:64]
        description = request.GET.get("error_description", "")[:300]
        return refuse(
            f"idp_error:{error}",
            f"{provider.name} did not sign you in ({error}{': ' + description if description else ''}).",
        )
    code = request.GET.get("code", "")
    if not code:
        return refuse("no_code", "The identity provider sent no sign-in code.", 400)
    try:
        metadata = oidc.discover(provider.issuer)
        # RFC 9207: an IdP that names itself in the answer must name the one this sign-in went
        # to (a mix-up attack sends another IdP's code here).
        answered_by = request.GET.get("iss")
        if answered_by is not None and answered_by != metadata.issuer:
            raise oidc.OidcError(
                "The sign-in answer comes from another identity provider.", reason="wrong_issuer"
            )
        tokens = oidc.exchange_code(
            metadata,
            client_id=provider.client_id,
            client_secret=crypto.decrypt(provider.client_secret_encrypted),
            code=code,
            redirect_uri=callback_url(request),
            code_verifier=str(entry["verifier"]),
        )
        keys = oidc.fetch_jwks(metadata)
        claims = oidc.verify_id_token(
            tokens["id_token"],
            keys=keys,
            issuer=metadata.issuer,
            client_id=provider.client_id,
            nonce=str(entry["nonce"]),
        )
    except oidc.IdpUnavailable as exc:
        return _unavailable(request, provider, exc.message)
    except oidc.OidcError as exc:
        return refuse(exc.reason, exc.message, 400)
    except ValueError:
        logger.error("SSO: client secret of org %s cannot be decrypted", provider.organization_id)
        return _unavailable(
            request, provider, "The identity provider's client secret cannot be read; ask an owner."
        )
    try:
        result = services.sso_sign_in_complete(provider=provider, claims=claims, actor=actor)
    except services.SsoRefused as exc:
        return _refused(request, exc.message, provider=provider)
    amr = claims.get("amr")
    idp_amr = [str(v) for v in amr] if isinstance(amr, list) else []
    acr = claims.get("acr")
    return sign_in(
        request,
        result.user,
        method=f"sso:{provider.name}",
        next_url=_safe_next(request, str(entry.get("next") or "")),
        idp_amr=idp_amr,
        idp_acr=acr if isinstance(acr, str) else "",
    )


# --- SAML 2.0 ---------------------------------------------------------------------------------


def _pending_prune(pending: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    pending = {
        k: v
        for k, v in pending.items()
        if isinstance(v, dict) and now - float(v.get("at", 0)) < PENDING_TTL_SECONDS
    }
    while len(pending) >= PENDING_MAX:
        pending.pop(min(pending, key=lambda k: float(pending[k]["at"])))
    return pending


def _saml_start(request: HttpRequest, provider: IdentityProvider, next_url: str) -> HttpResponse:
    """Send the browser to the IdP with an AuthnRequest (HTTP-Redirect binding); its id is kept
    in this browser's session under a fresh RelayState, answered once at the ACS."""
    try:
        idp = saml.metadata_parse(provider.saml_metadata_xml)
        relay_state = secrets.token_urlsafe(32)
        request_id, url = saml.authn_request(
            idp=idp,
            sp_entity_id=saml_sp_entity_id(request, provider.organization),
            acs_url=saml_acs_url(request),
            relay_state=relay_state,
        )
    except saml.MetadataError as exc:
        logger.warning("SAML: metadata of org %s unusable: %s", provider.organization_id, exc)
        return _unavailable(
            request, provider, f"The identity provider's SAML metadata cannot be used: {exc}"
        )
    except saml.SamlError as exc:
        return _unavailable(request, provider, exc.message)
    pending = _pending_prune(dict(request.session.get(SAML_PENDING_SESSION_KEY) or {}))
    pending[relay_state] = {
        "provider": provider.pk,
        "org": provider.organization_id,
        "request_id": request_id,
        "next": _safe_next(request, next_url),
        "at": time.time(),
    }
    request.session[SAML_PENDING_SESSION_KEY] = pending
    return redirect(url)


def _saml_pop_pending(request: HttpRequest, relay_state: str) -> dict[str, Any] | None:
    pending: dict[str, Any] = dict(request.session.get(SAML_PENDING_SESSION_KEY) or {})
    if not relay_state or relay_state not in pending:
        return None
    entry = pending.pop(relay_state)
    request.session[SAML_PENDING_SESSION_KEY] = pending
    if (
        not isinstance(entry, dict)
        or time.time() - float(entry.get("at", 0)) >= PENDING_TTL_SECONDS
    ):
        return None
    return entry


@csrf_exempt  # the IdP's page posts here; the answer is bound to this browser by RelayState
@require_POST
def saml_acs(request: HttpRequest) -> HttpResponse:
    """The Assertion Consumer Service (HTTP-POST binding)."""
    actor = Actor.from_request(request)
    relay_state = request.POST.get("RelayState", "")[:200]
    saml_response = request.POST.get("SAMLResponse", "")
    entry = _saml_pop_pending(request, relay_state)
    if entry is None and not request.POST.get("same_site") and saml_response:
        # A browser does not send the session cookie (SameSite=Lax) with a POST from the IdP's
        # site: post the same fields once more, now from this site, where it does.
        return _page(
            request,
            "tenants/sso/saml_post.html",
            {
                "action": reverse("sso-saml-acs"),
                "saml_response": saml_response,
                "relay_state": relay_state,
            },
        )
    if entry is None:
        services.sign_in_refused(
            provider=None,
            org=None,
            actor=actor,
            reason="bad_state",
            message="Unknown, used or expired SAML RelayState.",
        )
        return _refused(
            request,
            "This sign-in answer does not belong to a sign-in started in this browser, or it was "
            "used already or is too old. Start the sign-in again.",
            status=400,
        )
    provider = (
        IdentityProvider.objects.filter(
            pk=entry["provider"],
            organization_id=entry["org"],
            enabled=True,
            protocol=IdentityProvider.Protocol.SAML,
        )
        .select_related("organization")
        .first()
    )
    if provider is None or not provider.organization.is_active:
        return _refused(request, "Single sign-on is no longer set up for this organization.")

    def refuse(reason: str, message: str, status: int = 403, subject: str = "") -> HttpResponse:
        services.sign_in_refused(
            provider=provider,
            org=provider.organization,
            actor=actor,
            reason=reason,
            message=message,
            subject=subject,
        )
        return _refused(request, message, status=status, provider=provider)

    try:
        idp = saml.metadata_parse(provider.saml_metadata_xml)
        assertion = saml.response_validate(
            saml_response=saml_response,
            idp=idp,
            sp_entity_id=saml_sp_entity_id(request, provider.organization),
            acs_url=saml_acs_url(request),
            request_id=str(entry["request_id"]),
            groups_attribute=provider.groups_claim,
        )
    except saml.MetadataError as exc:
        return _unavailable(
            request, provider, f"The identity provider's SAML metadata cannot be used: {exc}"
        )
    except saml.SamlError as exc:
        return refuse(exc.reason, exc.message, 400)
    if not saml.assertion_use(
        provider_id=provider.pk, organization_id=provider.organization_id, assertion=assertion
    ):
        return refuse(
            "replayed",
            "This sign-in answer was used already. Start the sign-in again.",
            400,
            subject=assertion.subject,
        )
    claims = {
        "sub": assertion.subject,
        "email": assertion.email,
        provider.groups_claim: assertion.groups,
    }
    try:
        result = services.sso_sign_in_complete(provider=provider, claims=claims, actor=actor)
    except services.SsoRefused as exc:
        return _refused(request, exc.message, provider=provider)
    return sign_in(
        request,
        result.user,
        method=f"sso:{provider.name}",
        next_url=_safe_next(request, str(entry.get("next") or "")),
    )


@require_safe
def saml_metadata(request: HttpRequest, org_slug: str) -> HttpResponse:
    """Strata's service provider metadata for one organization whose provider speaks SAML."""
    provider = (
        IdentityProvider.objects.filter(
            organization__slug=org_slug, protocol=IdentityProvider.Protocol.SAML
        )
        .select_related("organization")
        .first()
    )
    if provider is None or not provider.organization.is_active:
        raise Http404("No SAML single sign-on is set up here.")
    xml = saml.sp_metadata(
        entity_id=saml_sp_entity_id(request, provider.organization),
        acs_url=saml_acs_url(request),
    )
    return HttpResponse(xml, content_type="application/samlmetadata+xml")


# --- the Security page ------------------------------------------------------------------------


def _provider_initial(provider: IdentityProvider | None) -> dict[str, Any]:
    if provider is None:
        return {
            "enabled": True,
            "protocol": "oidc",
            "scopes": "openid email profile",
            "groups_claim": "groups",
        }
    return {
        "protocol": provider.protocol,
        "saml_metadata_url": provider.saml_metadata_url,
        "name": provider.name,
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "scopes": provider.scopes,
        "groups_claim": provider.groups_claim,
        "enabled": provider.enabled,
        "sso_required": provider.sso_required,
    }


def _security_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    provider_form: ProviderForm | None = None,
    domain_form: DomainForm | None = None,
    status: int = 200,
) -> HttpResponse:
    provider = selectors.provider_get(org=ctx.org)
    if provider_form is None:
        provider_form = ProviderForm(
            initial=_provider_initial(provider),
            mapping=provider.role_mapping if provider else None,
        )
    domains = [
        {
            "row": d,
            "txt_name": services.domain_txt_name(d),
            "txt_value": services.domain_txt_value(d),
        }
        for d in selectors.domain_list(org=ctx.org)
    ]
    context = {
        "ctx": ctx,
        "active_section": "security",
        "provider": provider,
        "provider_form": provider_form,
        "domain_form": domain_form or DomainForm(),
        "domains": domains,
        "redirect_uri": callback_url(request),
        "saml_sp_entity_id": saml_sp_entity_id(request, ctx.org),
        "saml_acs_url": saml_acs_url(request),
        "roles": Role.choices,
    }
    return _page(request, "tenants/sso/security.html", context, status)


@org_view(Perm.SECURITY_MANAGE)
@require_safe
def security(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    return _security_page(request, ctx)


@org_view(Perm.SECURITY_MANAGE)
@require_POST
def provider_save(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    provider = selectors.provider_get(org=ctx.org)
    # The mapping editor posts as many rows as it showed: the saved ones plus the blank ones.
    form = ProviderForm(request.POST, mapping=provider.role_mapping if provider else None)
    if form.is_valid():
        try:
            services.provider_update(
                org=ctx.org,
                actor=ctx.actor,
                protocol=form.cleaned_data["protocol"] or IdentityProvider.Protocol.OIDC,
                saml_metadata_url=form.cleaned_data["saml_metadata_url"],
                saml_metadata_xml=form.cleaned_data["saml_metadata_xml"],
                name=form.cleaned_data["name"],
                issuer=form.cleaned_data["issuer"],
                client_id=form.cleaned_data["client_id"],
                client_secret=form.cleaned_data["client_secret"] or None,
                scopes=form.cleaned_data["scopes"],
                groups_claim=form.cleaned_data["groups_claim"],
                role_mapping=form.role_mapping(),
                sso_required=form.cleaned_data["sso_required"],
                enabled=form.cleaned_data["enabled"],
            )
        except ServiceError as exc:
            form_apply_service_error(form, exc)
            return _security_page(request, ctx, provider_form=form, status=exc.status)
        messages.success(request, "Single sign-on settings saved.")
        return redirect("portal-security", ctx.org.slug)
    return _security_page(request, ctx, provider_form=form, status=400)


@org_view(Perm.SECURITY_MANAGE)
@require_POST
def domain_add(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = DomainForm(request.POST)
    if form.is_valid():
        try:
            record = services.domain_add(
                org=ctx.org, actor=ctx.actor, domain=form.cleaned_data["domain"]
            )
        except ServiceError as exc:
            form_apply_service_error(form, exc)
            return _security_page(request, ctx, domain_form=form, status=exc.status)
        messages.success(
            request,
            f"{record.domain} added. Publish its TXT record, then press “Verify”.",
        )
        return redirect("portal-security", ctx.org.slug)
    return _security_page(request, ctx, domain_form=form, status=400)


@org_view(Perm.SECURITY_MANAGE)
@require_POST
def domain_verify(request: HttpRequest, ctx: PortalContext, domain_id: int) -> HttpResponse:
    record = get_or_404(selectors.domain_get, org=ctx.org, domain_id=domain_id)
    try:
        services.domain_verify_dns(org=ctx.org, actor=ctx.actor, domain=record)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{record.domain} is verified.")
    return redirect("portal-security", ctx.org.slug)


@org_view(Perm.SECURITY_MANAGE)
@require_POST
def domain_remove(request: HttpRequest, ctx: PortalContext, domain_id: int) -> HttpResponse:
    record = get_or_404(selectors.domain_get, org=ctx.org, domain_id=domain_id)
    name = record.domain
    try:
        services.domain_remove(org=ctx.org, actor=ctx.actor, domain=record)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{name} removed.")
    return redirect("portal-security", ctx.org.slug)


# --- platform staff: verify a domain without DNS ----------------------------------------------


@staff_member_required
@require_http_methods(["GET", "POST"])
def staff_domains(request: HttpRequest) -> HttpResponse:
    """Platform staff verify a hospital's email domain after checking, outside Strata, that the
    hospital owns it (when it cannot publish a DNS record)."""
    if request.method == "POST":
        record = EmailDomain.objects.filter(pk=request.POST.get("domain_id") or 0).first()
        if record is None:
            messages.error(request, "That email domain no longer exists.")
        else:
            try:
                services.domain_verify_staff(domain=record, actor=Actor.from_request(request))
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(
                    request, f"{record.domain} is verified for {record.organization.name}."
                )
        return redirect("sso-staff-domains")
    pending = (
        EmailDomain.objects.filter(verified_at__isnull=True)
        .select_related("organization")
        .order_by("domain", "id")
    )
    holders = dict(
        EmailDomain.objects.filter(verified_at__isnull=False).values_list(
            "domain", "organization__name"
        )
    )
    rows = [{"row": d, "held_by": holders.get(d.domain)} for d in pending]
    return _page(request, "tenants/sso/staff_domains.html", {"rows": rows})
