"""Secrets kept at rest (bucket credentials, identity providers' client secrets): Fernet
(AES-128-CBC + HMAC-SHA256) with the key from the setting ``STORAGE_CREDENTIALS_KEY``.

One key for every such secret, so that rotating it is one operation; ``archive.storage.credentials``
delegates here.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    key = settings.STORAGE_CREDENTIALS_KEY
    # Any passphrase works: it is stretched to the 32 bytes Fernet needs.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode() if secret else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "The stored credentials cannot be decrypted with STORAGE_CREDENTIALS_KEY."
        ) from None
