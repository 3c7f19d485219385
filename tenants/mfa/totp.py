"""Time-based one-time codes (RFC 6238) of authenticator apps: 30-second steps, 6 digits, SHA-1,
the parameters every authenticator app supports.

A code is accepted for its own step and one step either side (clock drift of up to 30 seconds in
either direction). A step accepted once is never accepted again for that device
(``TotpDevice.last_t``), so a code seen over someone's shoulder cannot be replayed.
"""

from __future__ import annotations

import base64
import hashlib
import time

import pyotp
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
ISSUER = "Strata"


def _fernet() -> Fernet:
    # Its own key, derived from SECRET_KEY: a token of another purpose never decrypts here.
    material = hashlib.sha256(b"strata-mfa-totp-secret:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(material))


def seal(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def unseal(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "The authenticator app's secret cannot be decrypted with SECRET_KEY."
        ) from None


def new_secret() -> str:
    """160 random bits in base32, as RFC 4226 recommends."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, account: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=ISSUER
    )


def qr_svg(uri: str) -> str:
    """The ``otpauth://`` URI as an inline SVG QR code, drawn on the server (no script, no CDN)."""
    # segno (some 9 MB) loads when a person first adds an authenticator app, not in every web
    # worker.
    import segno

    qr = segno.make(uri, error="m")
    return str(qr.svg_inline(scale=4, dark="#111827", light="#ffffff", title="QR code"))


def normalize(code: str) -> str:
    """The digits of what was typed: authenticator apps show "123 456"."""
    return "".join(ch for ch in code if not ch.isspace() and ch != "-")


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_SECONDS)


def matching_step(secret: str, code: str, *, now: float | None = None) -> int | None:
    """The time step within the drift window whose code is ``code``, or None."""
    code = normalize(code)
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    step = current_step(now)
    for t in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        if pyotp.utils.strings_equal(totp.generate_otp(t), code):
            return t
    return None


def code_at(secret: str, step: int) -> str:
    """The code of one time step (tests and the enrolment page's check)."""
    return str(pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step))
