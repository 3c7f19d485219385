"""The SAML 2.0 service provider: the identity provider's metadata, the authentication request
(HTTP-Redirect binding) and the validation of the IdP's answer at the Assertion Consumer Service
(HTTP-POST binding).

The SAML work itself (XML signatures with ``xmlsec1``, conditions, subject confirmation) is
pysaml2's; this module configures it strictly and adds what it leaves to its caller:

- the IdP's metadata is fetched through ``tenants.netguard`` (like OpenID Connect discovery) or
  pasted, size-limited and parsed with defusedxml (no DTD, no entities, no network);
- a Response is accepted only when the Response or its Assertion is signed by a certificate of the
  IdP's metadata, it is addressed to our ACS (Destination, Recipient), its Audience is this
  organization's SP entity id, it answers the request this browser started (InResponseTo), and it
  is within its NotBefore/NotOnOrAfter window give or take ``CLOCK_SKEW_SECONDS``;
- an assertion ID is accepted once (``SamlAssertionUse``), kept until the assertion expires.
"""

from __future__ import annotations

import base64
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as _escape

import requests
from defusedxml import ElementTree as SafeET
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import netguard
from tenants.sso import oidc

logger = logging.getLogger(__name__)

# Pasted or fetched IdP metadata larger than this is refused (Entra ID's is about 5 KB; federation
# aggregates of thousands of IdPs are not what an organization registers here).
MAX_METADATA_BYTES = 256 * 1024
# A SAMLResponse form field larger than this is refused before any XML is parsed.
MAX_RESPONSE_BYTES = 512 * 1024
# How far our clock and the IdP's may disagree when judging NotBefore and NotOnOrAfter.
CLOCK_SKEW_SECONDS = 60
# How long an assertion ID is remembered when its assertion names no NotOnOrAfter.
DEFAULT_ASSERTION_LIFETIME = timedelta(hours=1)

NS_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
# Attribute names that carry an email address at common IdPs (Entra ID / ADFS claim URIs,
# LDAP's mail, and the plain names Okta and Keycloak default to).
EMAIL_ATTRIBUTES = (
    "email",
    "mail",
    "emailaddress",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "urn:oid:0.9.2342.19200300.100.1.3",
)


class SamlError(oidc.OidcError):
    """The sign-in cannot go on; ``message`` is written for the person signing in."""


class MetadataError(ValueError):
    """The IdP's metadata cannot be used; the message says why (for the Security form)."""


@dataclass(frozen=True)
class IdpMetadata:
    entity_id: str
    sso_url: str
    certificates: tuple[str, ...]
    xml: str


@dataclass(frozen=True)
class Assertion:
    """What a validated Response says about the person."""

    assertion_id: str
    subject: str
    email: str
    groups: list[str]
    not_on_or_after: datetime | None
    attributes: dict[str, list[str]]


def xmlsec_binary() -> str:
    path = shutil.which("xmlsec1")
    if path is None:
        raise SamlError(
            "SAML sign-in is not available on this server (xmlsec1 is not installed).",
            reason="xmlsec_missing",
        )
    return path


# --- the IdP's metadata -----------------------------------------------------------------------


def metadata_parse(xml: str) -> IdpMetadata:
    """The IdP's entity id, HTTP-Redirect SSO URL and signing certificates from its metadata.

    Parsed with defusedxml: a DTD, an entity declaration or an external reference is refused."""
    if not xml.strip():
        raise MetadataError("The metadata is empty.")
    if len(xml.encode("utf-8")) > MAX_METADATA_BYTES:
        raise MetadataError(f"The metadata is larger than {MAX_METADATA_BYTES // 1024} KB.")
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except Exception as exc:  # defusedxml raises ParseError or its own DefusedXmlException
        raise MetadataError(f"The metadata is not valid XML ({type(exc).__name__}).") from None
    if root.tag != f"{{{NS_MD}}}EntityDescriptor":
        raise MetadataError("The metadata must be one SAML 2.0 EntityDescriptor.")
    entity_id = (root.get("entityID") or "").strip()
    if not entity_id:
        raise MetadataError("The metadata's EntityDescriptor has no entityID.")
    idp = root.find(f"{{{NS_MD}}}IDPSSODescriptor")
    if idp is None:
        raise MetadataError("The metadata describes no identity provider (IDPSSODescriptor).")
    sso_url = ""
    for service in idp.findall(f"{{{NS_MD}}}SingleSignOnService"):
        if service.get("Binding") == BINDING_REDIRECT and service.get("Location"):
            sso_url = str(service.get("Location")).strip()
            break
    if not sso_url:
        raise MetadataError(
            "The metadata names no SingleSignOnService with the HTTP-Redirect binding."
        )
    problem = oidc.endpoint_problem(sso_url)
    if problem:
        raise MetadataError(f"The single sign-on URL {sso_url} {problem}.")
    certificates = []
    for descriptor in idp.findall(f"{{{NS_MD}}}KeyDescriptor"):
        if descriptor.get("use") not in (None, "", "signing"):
            continue
        for cert in descriptor.iter(f"{{{NS_DS}}}X509Certificate"):
            value = "".join((cert.text or "").split())
            if value:
                certificates.append(value)
    if not certificates:
        raise MetadataError("The metadata has no signing certificate (KeyDescriptor).")
    for value in certificates:
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            raise MetadataError("A certificate in the metadata is not base64.") from None
    return IdpMetadata(
        entity_id=entity_id, sso_url=sso_url, certificates=tuple(certificates), xml=xml
    )


def metadata_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and oidc.allow_private()):
        return "The metadata URL must be an https:// URL."
    try:
        netguard.url_check(url, allow_private=oidc.allow_private(), lookup=False)
    except netguard.AddressRefused as exc:
        return str(exc)
    return None


def metadata_fetch(url: str) -> str:
    """The metadata document at ``url``, through the guarded session (checked address only, no
    redirects, timeouts, size limit). Raises ``oidc.IdpUnavailable``."""
    problem = metadata_url_problem(url)
    if problem:
        raise oidc.IdpUnavailable(problem)
    with netguard.guarded_session(allow_private_setting=oidc.ALLOW_PRIVATE_SETTING) as session:
        try:
            response = session.get(
                url,
                timeout=(oidc.CONNECT_TIMEOUT_SECONDS, oidc.READ_TIMEOUT_SECONDS),
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/samlmetadata+xml, application/xml, text/xml"},
            )
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(16384):
                size += len(chunk)
                if size > MAX_METADATA_BYTES:
                    response.close()
                    raise oidc.IdpUnavailable("The identity provider's metadata is too large.")
                chunks.append(chunk)
        except netguard.AddressRefused as exc:
            raise oidc.IdpUnavailable(f"The metadata may not be fetched: {exc}") from None
        except requests.RequestException as exc:
            logger.warning("SAML: fetching metadata from %s failed: %s", url, type(exc).__name__)
            raise oidc.IdpUnavailable("The identity provider did not answer (metadata).") from None
    if response.status_code != 200:
        raise oidc.IdpUnavailable(
            f"The identity provider answered HTTP {response.status_code} for its metadata."
        )
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise oidc.IdpUnavailable("The identity provider's metadata is not UTF-8 text.") from None


# --- pysaml2 ----------------------------------------------------------------------------------


def _client(*, idp: IdpMetadata, sp_entity_id: str, acs_url: str) -> Any:
    from saml2.client import Saml2Client
    from saml2.config import SPConfig

    config = SPConfig()
    config.load(
        {
            "entityid": sp_entity_id,
            "xmlsec_binary": xmlsec_binary(),
            "accepted_time_diff": CLOCK_SKEW_SECONDS,
            "allow_unknown_attributes": True,
            "metadata": {"inline": [idp.xml]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(acs_url, BINDING_POST)]},
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "logout_requests_signed": False,
                    # Either the Response or the Assertion must carry a valid signature.
                    "want_response_signed": False,
                    "want_assertions_signed": False,
                    "want_assertions_or_response_signed": True,
                    "name_id_format_allow_create": True,
                }
            },
        }
    )
    return Saml2Client(config=config)


def authn_request(
    *, idp: IdpMetadata, sp_entity_id: str, acs_url: str, relay_state: str
) -> tuple[str, str]:
    """The request id and the URL that sends the browser, with the AuthnRequest, to the IdP."""
    client = _client(idp=idp, sp_entity_id=sp_entity_id, acs_url=acs_url)
    request_id, info = client.prepare_for_authenticate(
        entityid=idp.entity_id, relay_state=relay_state, binding=BINDING_REDIRECT
    )
    location = dict(info["headers"])["Location"]
    return str(request_id), str(location)


def _texts(attribute: Any) -> list[str]:
    values = []
    for value in attribute.attribute_value or []:
        text = (value.text or "").strip()
        if text:
            values.append(text)
    return values


def response_validate(
    *,
    saml_response: str,
    idp: IdpMetadata,
    sp_entity_id: str,
    acs_url: str,
    request_id: str,
    groups_attribute: str,
) -> Assertion:
    """Validate the base64 ``saml_response`` posted to the ACS and return what it asserts.

    Raises ``SamlError`` with a reason (``bad_signature``, ``wrong_audience``, ``expired``,
    ``wrong_in_response_to``, ``wrong_destination``, ``invalid``) and nothing else."""
    from saml2 import BINDING_HTTP_POST
    from saml2.response import (
        IncorrectlySigned,
        SignatureError,
        StatusError,
        UnsolicitedResponse,
        VerificationError,
    )
    from saml2.validate import NotValid, ResponseLifetimeExceed, ToEarly

    if not saml_response or len(saml_response) > MAX_RESPONSE_BYTES:
        raise SamlError("The identity provider's answer is missing or too large.", reason="invalid")
    _destination_check(saml_response, acs_url)
    client = _client(idp=idp, sp_entity_id=sp_entity_id, acs_url=acs_url)
    try:
        response = client.parse_authn_request_response(
            saml_response, BINDING_HTTP_POST, outstanding={request_id: acs_url}
        )
    except (IncorrectlySigned, SignatureError) as exc:
        logger.info("SAML: signature refused: %s", type(exc).__name__)
        raise SamlError(
            "The identity provider's answer is not signed by the certificate in its metadata.",
            reason="bad_signature",
        ) from None
    except UnsolicitedResponse:
        raise SamlError(
            "This answer does not belong to the sign-in this browser started.",
            reason="wrong_in_response_to",
        ) from None
    except (ResponseLifetimeExceed, ToEarly):
        raise SamlError(
            "The identity provider's answer is expired or not yet valid; check the clocks.",
            reason="expired",
        ) from None
    except StatusError as exc:
        raise SamlError(
            f"The identity provider did not sign you in ({type(exc).__name__}).",
            reason="idp_error",
        ) from None
    except (NotValid, VerificationError, Exception) as exc:  # pysaml2 raises many bare kinds
        message = str(exc)
        logger.info("SAML: answer refused: %s %s", type(exc).__name__, message[:200])
        lowered = message.lower()
        if "audience" in lowered or "not for me" in lowered:
            raise SamlError(
                "The identity provider's answer is meant for another service.",
                reason="wrong_audience",
            ) from None
        if "condition not ok" in lowered:
            raise SamlError(
                "The identity provider's answer is expired or not yet valid; check the clocks.",
                reason="expired",
            ) from None
        if "destination" in lowered or "recipient" in lowered:
            raise SamlError(
                "The identity provider's answer is addressed elsewhere.",
                reason="wrong_destination",
            ) from None
        if "signature" in lowered or "signed" in lowered:
            raise SamlError(
                "The identity provider's answer is not signed by the certificate in its metadata.",
                reason="bad_signature",
            ) from None
        raise SamlError("The identity provider's answer is not valid.", reason="invalid") from None
    if response is None or response.assertion is None:
        # pysaml2 answers None for a wrong Destination (checked above) or an IssueInstant a day
        # or more away from now.
        raise SamlError("The identity provider's answer is not valid.", reason="invalid")
    if response.in_response_to != request_id:
        raise SamlError(
            "This answer does not belong to the sign-in this browser started.",
            reason="wrong_in_response_to",
        )
    # pysaml2 lets an assertion without conditions through; ours must name its audience.
    conditions = response.assertion.conditions
    audiences = [
        (audience.text or "").strip()
        for restriction in (conditions.audience_restriction if conditions else []) or []
        for audience in restriction.audience or []
    ]
    if sp_entity_id not in audiences:
        raise SamlError(
            "The identity provider's answer is meant for another service.", reason="wrong_audience"
        )
    assertion = response.assertion
    name_id = response.name_id
    subject = (name_id.text or "").strip() if name_id is not None else ""
    if not subject:
        raise SamlError(
            "The identity provider's answer names nobody (no NameID).", reason="invalid"
        )
    attributes: dict[str, list[str]] = {}
    for statement in assertion.attribute_statement or []:
        for attribute in statement.attribute or []:
            values = _texts(attribute)
            for key in {attribute.name, attribute.friendly_name} - {None, ""}:
                attributes.setdefault(str(key), []).extend(values)
    email = subject if name_id.format == NAMEID_EMAIL else ""
    if not email:
        lowered_attributes = {k.lower(): v for k, v in attributes.items()}
        for name in EMAIL_ATTRIBUTES:
            if lowered_attributes.get(name):
                email = lowered_attributes[name][0]
                break
    not_on_or_after = None
    if conditions is not None and conditions.not_on_or_after:
        not_on_or_after = _parse_instant(conditions.not_on_or_after)
    return Assertion(
        assertion_id=str(assertion.id),
        subject=subject[:255],
        email=email.strip().lower(),
        groups=list(dict.fromkeys(attributes.get(groups_attribute, []))),
        not_on_or_after=not_on_or_after,
        attributes=attributes,
    )


def _destination_check(saml_response: str, acs_url: str) -> None:
    """A Response that names a Destination must name our ACS (SAML core 3.2.2; pysaml2 only
    answers None for it, without saying why)."""
    try:
        xml = base64.b64decode(saml_response, validate=False)
        root = SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except Exception:  # not base64, not XML, or a DTD/entity: never a valid answer
        raise SamlError("The identity provider's answer is not valid.", reason="invalid") from None
    destination = root.get("Destination")
    if destination is not None and destination != acs_url:
        raise SamlError(
            "The identity provider's answer is addressed to another service.",
            reason="wrong_destination",
        )


def _parse_instant(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def assertion_use(*, provider_id: int, organization_id: int, assertion: Assertion) -> bool:
    """Record that ``assertion`` was used; False when its ID was used before (a replay).

    Expired records are removed on the way: an assertion past its NotOnOrAfter (plus skew) is
    refused by its lifetime, so its ID need not be remembered any longer."""
    from tenants.sso.models import SamlAssertionUse

    now = timezone.now()
    expires_at = (assertion.not_on_or_after or now + DEFAULT_ASSERTION_LIFETIME) + timedelta(
        seconds=CLOCK_SKEW_SECONDS
    )
    SamlAssertionUse.objects.filter(expires_at__lt=now).delete()
    try:
        with transaction.atomic():
            SamlAssertionUse.objects.create(
                organization_id=organization_id,
                provider_id=provider_id,
                assertion_id=assertion.assertion_id[:255],
                expires_at=expires_at,
            )
    except IntegrityError:
        return False
    return True


def escape(value: str) -> str:
    return _escape(value, {'"': "&quot;"})


def sp_metadata(*, entity_id: str, acs_url: str) -> str:
    """Strata's service provider metadata: the entity id and the ACS (HTTP-POST), asking for
    signed assertions and an email NameID."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<md:EntityDescriptor xmlns:md="{NS_MD}" entityID="{escape(entity_id)}">\n'
        '  <md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">\n'
        f"    <md:NameIDFormat>{NAMEID_EMAIL}</md:NameIDFormat>\n"
        f'    <md:AssertionConsumerService Binding="{BINDING_POST}" '
        f'Location="{escape(acs_url)}" index="0" isDefault="true"/>\n'
        "  </md:SPSSODescriptor>\n"
        "</md:EntityDescriptor>\n"
    )
