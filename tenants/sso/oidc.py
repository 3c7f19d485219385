"""The OpenID Connect relying party: discovery, the authorization request (code flow with PKCE),
the code exchange and the ID token's verification.

Every connection goes to a host the organization named (its issuer, and the endpoints the
issuer's discovery document names), so it follows ``tenants.netguard``: only globally routable
addresses unless ``SSO_ALLOW_PRIVATE_ISSUERS`` is on (development and tests, whose IdP listens on
loopback, and on-premises installations whose IdP has a private address), always to the
address that was checked, never through a proxy, never following redirects, with timeouts and a
size limit on every answer.

The ID token is trusted only after: its signature verifies with a key of the issuer's JWKS (an
asymmetric algorithm; ``none`` and HMAC are refused), ``iss`` is the configured issuer, ``aud``
contains our client id (and ``azp`` names it when there are several audiences), ``exp`` is in
the future and ``iat`` not in the future, both within ``CLOCK_SKEW_SECONDS``, and ``nonce`` is the
one this browser's session sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from django.conf import settings
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tenants import netguard

logger = logging.getLogger(__name__)

ALLOW_PRIVATE_SETTING = "SSO_ALLOW_PRIVATE_ISSUERS"
# Seconds: connecting, then waiting for each read. An IdP slower than this is "unavailable".
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10
# Discovery documents, JWKS and token responses are small; a larger answer is refused.
MAX_RESPONSE_BYTES = 512 * 1024
# How far our clock and the IdP's may disagree when judging ``exp`` and ``iat``.
CLOCK_SKEW_SECONDS = 60
SIGNING_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
]


class OidcError(Exception):
    """The sign-in cannot go on; ``message`` is written for the person signing in."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class IdpUnavailable(OidcError):
    """The identity provider did not answer, or answered nonsense (down, timeout, refused)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="idp_unavailable")


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def allow_private() -> bool:
    return bool(getattr(settings, ALLOW_PRIVATE_SETTING, False))


def issuer_problem(issuer: str) -> str | None:
    """Why ``issuer`` cannot be an identity provider's issuer URL, or None (form check only)."""
    parts = urlsplit(issuer)
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_private()):
        return "The issuer must be an https:// URL."
    if parts.query or parts.fragment:
        return "The issuer URL has no query string or fragment."
    try:
        netguard.url_check(issuer, allow_private=allow_private(), lookup=False)
    except netguard.AddressRefused as exc:
        return str(exc)
    return None


def endpoint_problem(url: str) -> str | None:
    """Why an endpoint named by discovery cannot be used, or None. Unlike the issuer, an endpoint
    may carry a query string (Azure AD B2C names its policy there)."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_private()):
        return "must be an https:// URL"
    try:
        netguard.url_check(url, allow_private=allow_private(), lookup=False)
    except netguard.AddressRefused as exc:
        return str(exc)
    return None


def _get_json(session: requests.Session, url: str, what: str) -> dict[str, Any]:
    try:
        response = session.get(
            url,
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/json"},
        )
        body = _read_limited(response)
    except netguard.AddressRefused as exc:
        raise IdpUnavailable(f"The identity provider's {what} may not be fetched: {exc}") from None
    except requests.RequestException as exc:
        logger.warning("SSO: fetching %s from %s failed: %s", what, url, type(exc).__name__)
        raise IdpUnavailable(f"The identity provider did not answer ({what}).") from None
    if response.status_code != 200:
        raise IdpUnavailable(
            f"The identity provider answered HTTP {response.status_code} for its {what}."
        )
    return _parse_json(body, what)


def _read_limited(response: requests.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(16384):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            raise IdpUnavailable("The identity provider's answer is too large.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise IdpUnavailable(f"The identity provider's {what} is not JSON.") from None
    if not isinstance(data, dict):
        raise IdpUnavailable(f"The identity provider's {what} is not a JSON object.")
    return data


def _session() -> requests.Session:
    return netguard.guarded_session(allow_private_setting=ALLOW_PRIVATE_SETTING)


def discover(issuer: str) -> Metadata:
    """Fetch ``<issuer>/.well-known/openid-configuration``; its ``issuer`` must be ours exactly."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with _session() as session:
        doc = _get_json(session, url, "discovery document")
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(name)
        if not isinstance(value, str) or endpoint_problem(value):
            raise IdpUnavailable(f"The identity provider's discovery document has no valid {name}.")
        endpoints[name] = value
    if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise OidcError(
            "The identity provider's discovery document names another issuer "
            f"({doc.get('issuer')!r}); check the issuer URL in the Security settings.",
            reason="issuer_mismatch",
        )
    return Metadata(issuer=str(doc["issuer"]), **endpoints)


def fetch_jwks(metadata: Metadata) -> KeySet:
    with _session() as session:
        doc = _get_json(session, metadata.jwks_uri, "signing keys (JWKS)")
    try:
        return KeySet.import_key_set(doc)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise IdpUnavailable(
            "The identity provider's signing keys (JWKS) cannot be read."
        ) from None


def new_pkce() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(
    metadata: Metadata,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: str,
    state: str,
    nonce: str,
    code_challenge: str,
    login_hint: str = "",
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scopes,
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    return f"{metadata.authorization_endpoint}{separator}{urlencode(params)}"


def exchange_code(
    metadata: Metadata,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
) -> dict[str, Any]:
    """Trade the authorization code for tokens (client_secret_basic). A code the IdP refuses
    (used before, expired, not ours) is an ``OidcError``; an IdP that does not answer is
    ``IdpUnavailable``."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    try:
        with _session() as session:
            response = session.post(
                metadata.token_endpoint,
                data=data,
                auth=(client_id, client_secret),
                timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json"},
            )
            body = _read_limited(response)
    except netguard.AddressRefused as exc:
        raise IdpUnavailable(
            f"The identity provider's token endpoint may not be used: {exc}"
        ) from None
    except requests.RequestException as exc:
        logger.warning("SSO: token request failed: %s", type(exc).__name__)
        raise IdpUnavailable("The identity provider did not answer (token request).") from None
    if response.status_code in (400, 401):
        try:
            error = str(json.loads(body).get("error", ""))[:64]
        except (ValueError, AttributeError):
            error = ""
        raise OidcError(
            "The identity provider refused the sign-in code "
            f"({error or response.status_code}): it may have been used already or have expired. "
            "Start the sign-in again.",
            reason="code_refused",
        )
    if response.status_code != 200:
        raise IdpUnavailable(
            f"The identity provider answered HTTP {response.status_code} to the token request."
        )
    tokens = _parse_json(body, "token response")
    if not isinstance(tokens.get("id_token"), str):
        raise OidcError("The identity provider sent no ID token.", reason="no_id_token")
    return tokens


def verify_id_token(
    id_token: str,
    *,
    keys: KeySet,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float | None = None,
    leeway: int = CLOCK_SKEW_SECONDS,
) -> dict[str, Any]:
    """The ID token's claims once every check in the module docstring passed; else ``OidcError``."""
    try:
        token = jwt.decode(id_token, keys, algorithms=SIGNING_ALGORITHMS)
    except JoseError as exc:
        logger.info("SSO: ID token refused: %s", type(exc).__name__)
        raise OidcError(
            "The ID token's signature does not verify with the identity provider's keys.",
            reason="bad_signature",
        ) from None
    except (ValueError, TypeError, KeyError):
        raise OidcError("The ID token is malformed.", reason="bad_signature") from None
    claims: dict[str, Any] = dict(token.claims)
    current = time.time() if now is None else now
    if claims.get("iss") != issuer:
        raise OidcError("The ID token was issued by another issuer.", reason="wrong_issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise OidcError("The ID token is meant for another application.", reason="wrong_audience")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise OidcError("The ID token is meant for another application.", reason="wrong_audience")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise OidcError("The ID token has no expiry or issue time.", reason="expired")
    if exp + leeway < current:
        raise OidcError("The ID token has expired; sign in again.", reason="expired")
    if iat - leeway > current:
        raise OidcError(
            "The ID token was issued in the future: the identity provider's clock or ours is wrong.",
            reason="issued_in_future",
        )
    if not nonce or not isinstance(claims.get("nonce"), str):
        raise OidcError("The ID token does not answer this sign-in (nonce).", reason="wrong_nonce")
    if not secrets.compare_digest(str(claims["nonce"]), nonce):
        raise OidcError("The ID token does not answer this sign-in (nonce).", reason="wrong_nonce")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise OidcError("The ID token names no subject.", reason="no_subject")
    return claims
