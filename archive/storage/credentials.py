"""Bucket credentials at rest: the platform's one secret box, ``tenants.crypto`` (Fernet with the
key from ``STORAGE_CREDENTIALS_KEY``)."""

from __future__ import annotations

from tenants.crypto import decrypt, encrypt

__all__ = ["decrypt", "encrypt"]
