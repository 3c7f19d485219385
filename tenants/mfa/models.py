"""A person's second factors. They belong to the person, not to an organization: one authenticator
app or security key serves every organization the person is a member of, and each organization's
policy (``SecurityPolicy``) says whether its members must have one.

Imported by ``tenants.models`` so that they are part of the ``tenants`` app.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class TotpDevice(models.Model):
    """An authenticator app (RFC 6238 time-based codes, 30-second steps, 6 digits)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp_devices"
    )
    name = models.CharField(max_length=64)
    # Fernet token of the base32 secret (tenants.mfa.totp); never the plain text.
    secret = models.TextField()
    # The last time step a code was accepted for: a code of that step or an earlier one is refused,
    # so an observed code cannot be replayed within its window.
    last_t = models.BigIntegerField(default=-1)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "tenants"
        verbose_name = "authenticator app"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


class WebAuthnCredential(models.Model):
    """A security key or passkey registered with WebAuthn for this site."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webauthn_credentials"
    )
    name = models.CharField(max_length=64)
    # base64url of the credential id the authenticator chose.
    credential_id = models.CharField(max_length=1400, unique=True)
    public_key = models.BinaryField()
    sign_count = models.PositiveBigIntegerField(default=0)
    transports = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "tenants"
        verbose_name = "security key or passkey"
        verbose_name_plural = "security keys and passkeys"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


class RecoveryCode(models.Model):
    """One single-use code for a lost factor; only a keyed hash of it is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recovery_codes"
    )
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "tenants"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "code_hash"], name="recovery_code_once")
        ]

    def __str__(self) -> str:
        return f"recovery code {self.pk} of {self.user_id}"
