"""Rows of single sign-on that live beside the identity provider: the SAML assertion IDs already
used, so that a captured assertion cannot be posted a second time.

Imported by ``tenants.models`` so that they are part of the ``tenants`` app.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class SamlAssertionUse(models.Model):
    """A SAML assertion ID that signed somebody in. Kept until the assertion expires (its
    NotOnOrAfter plus the allowed clock skew); a second use of the same ID is refused."""

    organization = models.ForeignKey(
        "tenants.Organization", on_delete=models.CASCADE, related_name="saml_assertion_uses"
    )
    provider = models.ForeignKey(
        "tenants.IdentityProvider", on_delete=models.CASCADE, related_name="saml_assertion_uses"
    )
    assertion_id = models.CharField(max_length=255)
    used_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "used SAML assertion"
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "assertion_id"], name="saml_assertion_used_once"
            )
        ]

    def __str__(self) -> str:
        return self.assertion_id
