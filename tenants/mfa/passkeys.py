"""WebAuthn ceremonies for security keys and passkeys (py_webauthn does the verification).

The relying party is the host the browser is on (``request.get_host()``, already checked against
ALLOWED_HOSTS), so a passkey registered at https://strata.example.org works there and nowhere else;
the origin the browser reports must be this request's scheme and host. Browsers refuse an IP
address as relying party: sign in with a host name (``localhost`` in development).

Each ceremony's challenge is kept in the session for ``CHALLENGE_SECONDS`` and used once.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.http import HttpRequest
from django.http.request import split_domain_port
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from tenants.errors import ValidationFailed
from tenants.mfa.models import WebAuthnCredential

RP_NAME = "Strata"
CHALLENGE_SECONDS = 300
_REGISTER_KEY = "mfa_webauthn_register"
_AUTHENTICATE_KEY = "mfa_webauthn_authenticate"


def rp_id(request: HttpRequest) -> str:
    host, _port = split_domain_port(request.get_host())
    return host


def expected_origin(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def _descriptors(credentials: list[WebAuthnCredential]) -> list[PublicKeyCredentialDescriptor]:
    out = []
    for c in credentials:
        transports = []
        for t in c.transports or []:
            try:
                transports.append(AuthenticatorTransport(t))
            except ValueError:
                continue  # a transport newer than this library: the browser finds the key anyway
        out.append(
            PublicKeyCredentialDescriptor(
                id=base64url_to_bytes(c.credential_id), transports=transports or None
            )
        )
    return out


def _remember(request: HttpRequest, key: str, challenge: bytes, user_id: int) -> None:
    request.session[key] = {
        "challenge": bytes_to_base64url(challenge),
        "user": user_id,
        "expires": time.time() + CHALLENGE_SECONDS,
    }


def _take(request: HttpRequest, key: str, user_id: int) -> bytes:
    """The challenge of the ceremony in progress, removed from the session (used once)."""
    state = request.session.pop(key, None)
    if (
        not isinstance(state, dict)
        or state.get("user") != user_id
        or not isinstance(state.get("expires"), (int, float))
        or state["expires"] < time.time()
    ):
        raise ValidationFailed(
            "The security key request expired or was already used; try again.",
            code="webauthn_expired",
        )
    return base64url_to_bytes(str(state["challenge"]))


def registration_options(
    request: HttpRequest, *, user: Any, existing: list[WebAuthnCredential]
) -> str:
    """The options for ``navigator.credentials.create`` as JSON."""
    options = generate_registration_options(
        rp_id=rp_id(request),
        rp_name=RP_NAME,
        user_name=user.email or user.get_username(),
        user_display_name=user.get_full_name() or user.email or user.get_username(),
        user_id=f"strata-user-{user.pk}".encode(),
        exclude_credentials=_descriptors(existing),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
    )
    _remember(request, _REGISTER_KEY, options.challenge, user.pk)
    return str(options_to_json(options))


def registration_verify(request: HttpRequest, *, user: Any, credential: Any) -> dict[str, Any]:
    """Check the browser's answer to ``registration_options``: the new credential's id, public key,
    counter and transports. Refuses (``ValidationFailed``) anything that does not verify."""
    challenge = _take(request, _REGISTER_KEY, user.pk)
    try:
        verified = verify_registration_response(
            credential=_as_json(credential),
            expected_challenge=challenge,
            expected_rp_id=rp_id(request),
            expected_origin=expected_origin(request),
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise ValidationFailed(
            f"The security key's answer did not verify: {exc}", code="webauthn_invalid"
        ) from None
    transports = []
    if isinstance(credential, dict):
        raw = credential.get("response", {}).get("transports", [])
        transports = (
            [str(t)[:32] for t in raw if isinstance(t, str)][:8] if isinstance(raw, list) else []
        )
    return {
        "credential_id": bytes_to_base64url(verified.credential_id),
        "public_key": verified.credential_public_key,
        "sign_count": verified.sign_count,
        "transports": transports,
    }


def authentication_options(
    request: HttpRequest, *, user: Any, credentials: list[WebAuthnCredential]
) -> str:
    """The options for ``navigator.credentials.get`` as JSON: only this person's credentials."""
    options = generate_authentication_options(
        rp_id=rp_id(request),
        allow_credentials=_descriptors(credentials),
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    _remember(request, _AUTHENTICATE_KEY, options.challenge, user.pk)
    return str(options_to_json(options))


def authentication_verify(
    request: HttpRequest, *, user: Any, credential: Any
) -> tuple[WebAuthnCredential, int]:
    """The person's credential that signed the challenge and its new counter; ``ValidationFailed``
    for a credential that is not theirs or a signature that does not verify."""
    challenge = _take(request, _AUTHENTICATE_KEY, user.pk)
    raw_id = (
        credential.get("rawId") or credential.get("id") if isinstance(credential, dict) else None
    )
    row = (
        WebAuthnCredential.objects.filter(user=user, credential_id=str(raw_id)).first()
        if isinstance(raw_id, str)
        else None
    )
    if row is None:
        raise ValidationFailed(
            "This security key is not registered to your account.", code="webauthn_unknown"
        )
    try:
        verified = verify_authentication_response(
            credential=_as_json(credential),
            expected_challenge=challenge,
            expected_rp_id=rp_id(request),
            expected_origin=expected_origin(request),
            credential_public_key=bytes(row.public_key),
            credential_current_sign_count=row.sign_count,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise ValidationFailed(
            f"The security key's answer did not verify: {exc}", code="webauthn_invalid"
        ) from None
    return row, verified.new_sign_count


def _as_json(credential: Any) -> str:
    if not isinstance(credential, dict):
        raise ValidationFailed("The security key's answer is missing.", code="webauthn_invalid")
    return json.dumps(credential)
