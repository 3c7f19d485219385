"""Writes of single sign-on: the organization's identity provider, its email domains, and the
end of a sign-in (finding or creating the person, their membership and role).

Every change is audited in its own transaction: ``sso.provider_update``, ``sso.domain_add``,
``sso.domain_verify``, ``sso.domain_remove``; a refused sign-in is ``auth.sso_refused``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import crypto
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import EmailDomain, IdentityProvider, Membership, Organization, SsoIdentity
from tenants.roles import Role
from tenants.services import audit_record, member_role_write
from tenants.sso import oidc
from tenants.sso.selectors import email_domain_of

logger = logging.getLogger(__name__)

# The DNS name that carries an email domain's proof of control, and the TXT value it must hold.
TXT_RECORD_PREFIX = "_strata-verification"
TXT_VALUE_PREFIX = "strata-domain-verification="
MAX_MAPPING_ROWS = 200
DNS_TIMEOUT_SECONDS = 5.0
# Strongest first: when a person's groups map to several roles they get the first one here.
ROLE_PRECEDENCE = [Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER]
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


# --- the identity provider --------------------------------------------------------------------


def _mapping_errors(mapping: Any) -> list[str]:
    if not isinstance(mapping, dict):
        return ["Map each group to a role."]
    if len(mapping) > MAX_MAPPING_ROWS:
        return [f"At most {MAX_MAPPING_ROWS} groups can be mapped."]
    errors = []
    for group, role in mapping.items():
        if not isinstance(group, str) or not group.strip() or len(group) > 255:
            errors.append("Each group is a non-empty value of at most 255 characters.")
        elif role not in Role.values:
            errors.append(f"Group {group!r}: choose one of the roles {', '.join(Role.values)}.")
    return errors


def provider_update(
    *,
    org: Organization,
    actor: Actor,
    name: str,
    issuer: str = "",
    client_id: str = "",
    client_secret: str | None = None,
    scopes: str = "openid email profile",
    groups_claim: str = "groups",
    role_mapping: dict[str, str] | None = None,
    sso_required: bool = False,
    enabled: bool = True,
    protocol: str = IdentityProvider.Protocol.OIDC,
    saml_metadata_url: str = "",
    saml_metadata_xml: str = "",
) -> IdentityProvider:
    """Create or change the organization's identity provider.

    OpenID Connect: ``client_secret`` None or empty keeps the stored secret (it is write-only);
    the first save needs one. SAML 2.0: the IdP's metadata from ``saml_metadata_url`` (fetched
    now, through ``tenants.netguard``) or pasted as ``saml_metadata_xml``; the document is kept,
    and saving again with the URL refreshes it (e.g. after the IdP rolls its certificate)."""
    provider = IdentityProvider.objects.for_org(org).first()
    if protocol == IdentityProvider.Protocol.SAML:
        return _saml_provider_update(
            org=org,
            actor=actor,
            provider=provider,
            name=name,
            groups_claim=groups_claim,
            role_mapping=role_mapping,
            sso_required=sso_required,
            enabled=enabled,
            saml_metadata_url=saml_metadata_url,
            saml_metadata_xml=saml_metadata_xml,
        )
    if protocol != IdentityProvider.Protocol.OIDC:
        raise ValidationFailed(
            "The identity provider could not be saved.",
            fields={"protocol": ["Choose OpenID Connect (oidc) or SAML 2.0 (saml)."]},
        )
    name, issuer, client_id = name.strip(), issuer.strip(), client_id.strip()
    scope_list = scopes.split()
    mapping = (
        {str(k).strip(): v for k, v in (role_mapping or {}).items()}
        if isinstance(role_mapping, dict)
        else role_mapping
    )
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Enter a name, shown on the sign-in button."]
    problem = oidc.issuer_problem(issuer) if issuer else "Enter the issuer URL."
    if problem:
        errors["issuer"] = [problem]
    if not client_id:
        errors["client_id"] = ["Enter the client id registered at the identity provider."]
    if not client_secret and (provider is None or not provider.client_secret_encrypted):
        errors["client_secret"] = ["Enter the client secret."]
    if "openid" not in scope_list:
        errors["scopes"] = ["The scopes must include openid."]
    if not groups_claim.strip():
        errors["groups_claim"] = ["Name the ID token claim that carries the groups or roles."]
    mapping_errors = _mapping_errors(mapping)
    if mapping_errors:
        errors["role_mapping"] = mapping_errors
    elif not mapping:
        errors["role_mapping"] = ["Map at least one group to a role: unmapped people are refused."]
    if sso_required and not EmailDomain.objects.for_org(org).filter(verified_at__isnull=False):
        errors["sso_required"] = [
            "Verify an email domain first: without one nobody can sign in with single sign-on."
        ]
    if sso_required and not enabled:
        errors["sso_required"] = ["Single sign-on cannot be required while it is turned off."]
    if errors:
        raise ValidationFailed("The identity provider could not be saved.", fields=errors)
    assert isinstance(mapping, dict)
    values: dict[str, Any] = {
        "protocol": IdentityProvider.Protocol.OIDC,
        "name": name[:100],
        "issuer": issuer,
        "client_id": client_id[:255],
        "scopes": " ".join(dict.fromkeys(scope_list))[:255],
        "groups_claim": groups_claim.strip()[:100],
        "role_mapping": dict(sorted(mapping.items())),
        "sso_required": sso_required,
        "enabled": enabled,
    }
    return _provider_save(
        org=org, actor=actor, provider=provider, values=values, client_secret=client_secret
    )


def _common_errors(
    *,
    org: Organization,
    name: str,
    groups_claim: str,
    mapping: Any,
    sso_required: bool,
    enabled: bool,
    groups_label: str,
) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Enter a name, shown on the sign-in button."]
    if not groups_claim.strip():
        errors["groups_claim"] = [groups_label]
    mapping_errors = _mapping_errors(mapping)
    if mapping_errors:
        errors["role_mapping"] = mapping_errors
    elif not mapping:
        errors["role_mapping"] = ["Map at least one group to a role: unmapped people are refused."]
    if sso_required and not EmailDomain.objects.for_org(org).filter(verified_at__isnull=False):
        errors["sso_required"] = [
            "Verify an email domain first: without one nobody can sign in with single sign-on."
        ]
    if sso_required and not enabled:
        errors["sso_required"] = ["Single sign-on cannot be required while it is turned off."]
    return errors


def _saml_provider_update(
    *,
    org: Organization,
    actor: Actor,
    provider: IdentityProvider | None,
    name: str,
    groups_claim: str,
    role_mapping: dict[str, str] | None,
    sso_required: bool,
    enabled: bool,
    saml_metadata_url: str,
    saml_metadata_xml: str,
) -> IdentityProvider:
    from tenants.sso import saml

    name, url, xml = name.strip(), saml_metadata_url.strip(), saml_metadata_xml.strip()
    mapping = (
        {str(k).strip(): v for k, v in (role_mapping or {}).items()}
        if isinstance(role_mapping, dict)
        else role_mapping
    )
    errors = _common_errors(
        org=org,
        name=name,
        groups_claim=groups_claim,
        mapping=mapping,
        sso_required=sso_required,
        enabled=enabled,
        groups_label="Name the SAML attribute that carries the groups or roles.",
    )
    if url:
        problem = saml.metadata_url_problem(url)
        if problem:
            errors["saml_metadata_url"] = [problem]
        elif not xml:
            try:
                xml = saml.metadata_fetch(url)
            except oidc.OidcError as exc:
                errors["saml_metadata_url"] = [exc.message]
    elif not xml and provider is not None and provider.protocol == IdentityProvider.Protocol.SAML:
        xml = provider.saml_metadata_xml  # keep what was pasted before
    if not url and not xml:
        errors["saml_metadata_xml"] = ["Enter the IdP's metadata URL, or paste its metadata XML."]
    elif xml and "saml_metadata_url" not in errors:
        try:
            saml.metadata_parse(xml)
        except saml.MetadataError as exc:
            errors["saml_metadata_url" if url else "saml_metadata_xml"] = [str(exc)]
    if errors:
        raise ValidationFailed("The identity provider could not be saved.", fields=errors)
    assert isinstance(mapping, dict)
    values: dict[str, Any] = {
        "protocol": IdentityProvider.Protocol.SAML,
        "name": name[:100],
        "saml_metadata_url": url[:500],
        "saml_metadata_xml": xml,
        "groups_claim": groups_claim.strip()[:100],
        "role_mapping": dict(sorted(mapping.items())),
        "sso_required": sso_required,
        "enabled": enabled,
    }
    return _provider_save(org=org, actor=actor, provider=provider, values=values)


def _provider_save(
    *,
    org: Organization,
    actor: Actor,
    provider: IdentityProvider | None,
    values: dict[str, Any],
    client_secret: str | None = None,
) -> IdentityProvider:
    with transaction.atomic():
        created = provider is None
        if provider is None:
            provider = IdentityProvider(organization=org)
        changes: dict[str, Any] = {}
        for field, value in values.items():
            old = getattr(provider, field)
            if not created and old == value:
                continue
            # The metadata is a document, not a value for the audit log.
            changes[field] = (
                "changed"
                if field == "saml_metadata_xml"
                else {"from": None if created else old, "to": value}
            )
            setattr(provider, field, value)
        if client_secret:
            provider.client_secret_encrypted = crypto.encrypt(client_secret)
            changes["client_secret"] = "changed"  # never the value
        provider.updated_at = timezone.now()
        provider.save()
        audit_record(
            org=org,
            actor=actor,
            action="sso.provider_update",
            target=provider,
            target_label=provider.name,
            details={"created": created, "changes": changes},
        )
        if "role_mapping" in changes:
            # Members provisioned by SCIM hold the role their groups map to: a new mapping
            # applies to them now, not at their next sign-in. (Imported here: tenants.scim
            # builds on this module's role ranking.)
            from tenants.scim.services import scim_roles_recompute

            scim_roles_recompute(org=org, actor=actor)
    return provider


# --- email domains ----------------------------------------------------------------------------


def domain_normalize(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if domain.startswith("@"):
        domain = domain[1:]
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    return domain if _DOMAIN.match(domain) else ""


def domain_txt_name(domain: EmailDomain) -> str:
    return f"{TXT_RECORD_PREFIX}.{domain.domain}"


def domain_txt_value(domain: EmailDomain) -> str:
    return f"{TXT_VALUE_PREFIX}{domain.verification_token}"


def domain_add(*, org: Organization, actor: Actor, domain: str) -> EmailDomain:
    """Claim an email domain. Any organization may claim one; it counts only once verified, and
    a domain another organization holds verified cannot be claimed."""
    normalized = domain_normalize(domain)
    if not normalized:
        raise ValidationFailed(
            "Enter an email domain such as hospital.org.",
            fields={"domain": ["Enter an email domain such as hospital.org."]},
        )
    holder = EmailDomain.objects.filter(domain=normalized, verified_at__isnull=False).first()
    if holder is not None and holder.organization_id != org.pk:
        raise Conflict(
            f"{normalized} is verified by another organization. If your hospital owns it, "
            "contact the platform staff.",
            code="domain_taken",
            fields={"domain": [f"{normalized} is verified by another organization."]},
        )
    try:
        with transaction.atomic():
            record = EmailDomain.objects.create(
                organization=org, domain=normalized, verification_token=secrets.token_hex(20)
            )
            audit_record(org=org, actor=actor, action="sso.domain_add", target=record)
    except IntegrityError:
        raise Conflict(
            f"{normalized} is already claimed by this organization.",
            code="domain_exists",
            fields={"domain": [f"{normalized} is already listed."]},
        ) from None
    return record


def _txt_records(name: str) -> list[str]:
    """The TXT strings at ``name`` (a seam for tests, which have no DNS)."""
    import dns.exception
    import dns.resolver

    servers: list[tuple[str, int]] = list(getattr(settings, "SSO_DNS_NAMESERVERS", []))
    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [host for host, _ in servers]
        resolver.nameserver_ports = dict(servers)
    resolver.lifetime = DNS_TIMEOUT_SECONDS
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError) as exc:
        raise ValidationFailed(
            f"The DNS lookup of {name} failed ({type(exc).__name__}); try again later.",
            code="dns_unavailable",
        ) from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def _mark_verified(*, org: Organization, actor: Actor, record: EmailDomain, by: str) -> EmailDomain:
    if record.verified_at is not None:
        return record
    try:
        with transaction.atomic():
            record.verified_at = timezone.now()
            record.verified_by = by
            record.save(update_fields=["verified_at", "verified_by"])
            audit_record(
                org=org,
                actor=actor,
                action="sso.domain_verify",
                target=record,
                details={"verified_by": by},
            )
    except IntegrityError:
        record.verified_at, record.verified_by = None, ""
        raise Conflict(
            f"{record.domain} is already verified by another organization; only one may hold it.",
            code="domain_taken",
        ) from None
    return record


def domain_verify_dns(
    *,
    org: Organization,
    actor: Actor,
    domain: EmailDomain,
    lookup: Callable[[str], Iterable[str]] | None = None,
) -> EmailDomain:
    """Verify by the TXT record ``_strata-verification.<domain>`` holding the domain's token."""
    if domain.organization_id != org.pk:
        raise NotFound("Email domain not found.")
    if domain.verified_at is not None:
        return domain
    name = domain_txt_name(domain)
    found = list((lookup or _txt_records)(name))
    if domain_txt_value(domain) not in [value.strip() for value in found]:
        raise ValidationFailed(
            f"No TXT record {name} with the value {domain_txt_value(domain)} was found. DNS "
            "changes can take a while to be seen; try again later.",
            code="txt_not_found",
        )
    return _mark_verified(org=org, actor=actor, record=domain, by=EmailDomain.VerifiedBy.DNS)


def domain_verify_staff(*, domain: EmailDomain, actor: Actor) -> EmailDomain:
    """Platform staff vouch for the domain (e.g. after checking the hospital's paperwork)."""
    return _mark_verified(
        org=domain.organization, actor=actor, record=domain, by=EmailDomain.VerifiedBy.STAFF
    )


def domain_remove(*, org: Organization, actor: Actor, domain: EmailDomain) -> None:
    if domain.organization_id != org.pk:
        raise NotFound("Email domain not found.")
    with transaction.atomic():
        provider = IdentityProvider.objects.for_org(org).select_for_update().first()
        others = (
            EmailDomain.objects.for_org(org).filter(verified_at__isnull=False).exclude(pk=domain.pk)
        )
        if (
            provider is not None
            and provider.sso_required
            and domain.verified_at is not None
            and not others.exists()
        ):
            raise Conflict(
                "This is the last verified domain while single sign-on is required; turn "
                "“SSO required” off first.",
                code="last_verified_domain",
            )
        audit_record(org=org, actor=actor, action="sso.domain_remove", target=domain)
        domain.delete()


# --- the end of a sign-in ---------------------------------------------------------------------


class SsoRefused(Exception):
    """The identity provider vouched for the person, but Strata does not let them in."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class SsoResult:
    user: Any
    membership: Membership
    created_user: bool


def mapped_role(provider: IdentityProvider, claims: dict[str, Any]) -> str | None:
    """The strongest role that the person's groups map to, or None. Owner only when a group is
    explicitly mapped to owner."""
    raw = claims.get(provider.groups_claim)
    groups = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    roles = {provider.role_mapping.get(str(g)) for g in groups if isinstance(g, str | int)}
    for role in ROLE_PRECEDENCE:
        if role in roles:
            return str(role)
    return None


def sign_in_refused(
    *,
    provider: IdentityProvider | None,
    org: Organization | None,
    actor: Actor,
    reason: str,
    message: str,
    subject: str = "",
    email: str = "",
) -> None:
    """Audit a refused single sign-on (``auth.sso_refused``) in its own transaction."""
    with transaction.atomic():
        audit_record(
            org=org,
            actor=Actor(
                ip=actor.ip,
                user_agent=actor.user_agent,
                label_override=f"anonymous ({email or subject or 'unknown'})"[:255],
            ),
            action="auth.sso_refused",
            target=provider,
            target_label=email or (provider.name if provider else ""),
            details={"reason": reason, "message": message, "subject": subject[:255]},
        )


def _refuse(
    provider: IdentityProvider, actor: Actor, reason: str, message: str, claims: dict[str, Any]
) -> SsoRefused:
    sign_in_refused(
        provider=provider,
        org=provider.organization,
        actor=actor,
        reason=reason,
        message=message,
        subject=str(claims.get("sub", "")),
        email=str(claims.get("email", ""))[:254],
    )
    return SsoRefused(message, reason=reason)


class _Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _sign_in_complete(
    *, provider: IdentityProvider, claims: dict[str, Any], actor: Actor
) -> SsoResult:
    """``sso_sign_in_complete`` without the audit of refusals: a refusal inside the transaction
    (``_Refusal``) rolls all of it back, then is audited in a transaction of its own."""
    org = provider.organization
    email = str(claims.get("email") or "").strip().lower()
    subject = str(claims["sub"])
    if not email or "@" not in email:
        raise _refuse(
            provider, actor, "no_email", "The identity provider sent no email address.", claims
        )
    if claims.get("email_verified") is False or claims.get("email_verified") == "false":
        raise _refuse(
            provider,
            actor,
            "email_unverified",
            f"The identity provider has not verified the address {email}.",
            claims,
        )
    domain = email_domain_of(email)
    if (
        not EmailDomain.objects.for_org(org)
        .filter(domain=domain, verified_at__isnull=False)
        .exists()
    ):
        raise _refuse(
            provider,
            actor,
            "domain_not_verified",
            f"The address {email} is not in an email domain that {org.name} has verified.",
            claims,
        )
    role = mapped_role(provider, claims)
    if role is None:
        raise _refuse(
            provider,
            actor,
            "no_role",
            f"Your account at {provider.name} is in no group that gives access to {org.name}. "
            "Ask your IT department to add you to one of the groups allowed to use Strata.",
            claims,
        )
    user_model = get_user_model()
    with transaction.atomic():
        identity = (
            SsoIdentity.objects.for_org(org)
            .select_for_update()
            .filter(provider=provider, subject=subject)
            .select_related("user")
            .first()
        )
        created_user = False
        if identity is not None:
            user = identity.user
        else:
            user = user_model.objects.filter(email__iexact=email).order_by("id").first()
            if (
                user is not None
                and SsoIdentity.objects.filter(provider=provider, user=user).exists()
            ):
                raise _Refusal(
                    "subject_changed",
                    f"The account {email} is already linked to another identity at "
                    f"{provider.name}. Ask an owner of {org.name} to check the account.",
                )
            if user is None:
                if user_model.objects.filter(username__iexact=email).exists():
                    raise _Refusal(
                        "username_taken",
                        f"An account named {email} already exists; ask the platform staff.",
                    )
                user = user_model.objects.create_user(username=email, email=email)
                user.set_unusable_password()
                user.save(update_fields=["password"])
                created_user = True
            identity = SsoIdentity.objects.create(
                organization=org, provider=provider, subject=subject, user=user
            )
        membership = Membership.objects.for_org(org).select_for_update().filter(user=user).first()
        person = Actor(user=user, ip=actor.ip, user_agent=actor.user_agent)
        if membership is not None and membership.deactivated_at is not None:
            raise _Refusal(
                "deactivated",
                f"Your membership of {org.name} has been deactivated. Ask an owner to "
                "reactivate it.",
            )
        if membership is None:
            membership = Membership.objects.create(organization=org, user=user, role=role)
            audit_record(
                org=org,
                actor=person,
                action="member.joined",
                target=membership,
                target_label=email,
                details={"role": role, "via": f"sso:{provider.name}", "created_user": created_user},
            )
        elif membership.role != role:
            owners = (
                Membership.objects.for_org(org)
                .select_for_update()
                .filter(role=Role.OWNER, deactivated_at__isnull=True)
                .exclude(pk=membership.pk)
            )
            if membership.role == Role.OWNER and not owners.exists():
                logger.info("SSO: last owner of org %s keeps the owner role", org.pk)
            else:
                member_role_write(
                    org=org,
                    actor=Actor.system(f"sso:{provider.name}"),
                    membership=membership,
                    role=role,
                    details={"via": "sso group mapping"},
                )
        identity.last_login_at = timezone.now()
        identity.save(update_fields=["last_login_at"])
    return SsoResult(user=user, membership=membership, created_user=created_user)


def sso_sign_in_complete(
    *, provider: IdentityProvider, claims: dict[str, Any], actor: Actor
) -> SsoResult:
    """Turn verified ID token ``claims`` into a person of ``provider``'s organization.

    Precondition: ``claims`` come from ``oidc.verify_id_token`` (signature, issuer, audience,
    expiry and nonce checked).

    - The email must be verified by the IdP (``email_verified`` true, or absent: Entra ID and
      others omit it for the organization's own accounts) and its domain a verified email domain
      of this organization.
    - The person's groups must map to a role; their role follows the mapping at every sign-in
      (the last owner is never demoted this way).
    - A returning person is found by subject. The first time, an existing account with that
      email is linked (the domain is the organization's, verified), else one is created with an
      unusable password. A deactivated membership is never reactivated.

    Raises ``SsoRefused`` (already audited; nothing else of the attempt is kept).
    """
    try:
        try:
            return _sign_in_complete(provider=provider, claims=claims, actor=actor)
        except IntegrityError:
            # A concurrent first sign-in of the same person (or address) won the race; this
            # one now finds what it created.
            return _sign_in_complete(provider=provider, claims=claims, actor=actor)
    except _Refusal as refusal:
        raise _refuse(provider, actor, refusal.reason, refusal.message, claims) from None
