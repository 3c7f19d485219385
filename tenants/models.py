"""Organizations (hospitals), their members, invitations, API tokens, audit log, the browser origins
allowed to call their APIs (CORS) and webhooks."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.roles import Role, role_permissions, scopes_permissions


class Organization(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=63, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class OrgQuerySet(models.QuerySet):
    """Every tenant-owned model's manager: the way in is ``for_org(org)``."""

    def for_org(self, org: Organization | int) -> OrgQuerySet:
        org_id = org if isinstance(org, int) else org.pk
        return self.filter(organization_id=org_id)


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)
    # Set by SCIM (``active: false``) or an owner: the person keeps their history but cannot
    # sign in to, or act in, this organization; their sessions and API tokens stop at once.
    deactivated_at = models.DateTimeField(null=True, blank=True)
    # The SCIM resource id the identity provider knows this person by, and its externalId.
    scim_id = models.UUIDField(null=True, blank=True, unique=True)
    scim_external_id = models.CharField(max_length=255, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "user"], name="membership_unique_user_org"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} as {self.role}"

    @property
    def permissions(self) -> frozenset[str]:
        return role_permissions(self.role)


class Invitation(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization}"

    @property
    def state(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class ApiToken(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        verbose_name_plural = "API tokens"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @property
    def permissions(self) -> frozenset[str]:
        return scopes_permissions(list(self.scopes))


class AuditQuerySet(OrgQuerySet):
    """Append-only: bulk update and delete are refused at the ORM level."""

    def update(self, **kwargs: Any) -> int:
        raise PermissionError("Audit events are append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("Audit events are append-only.")


class AuditEvent(models.Model):
    # Null organization: platform-level events (e.g. a failed login for an unknown email).
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A snapshot of who acted, kept readable after the user or token is gone.
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="audit_org_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise PermissionError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("Audit events are append-only.")


class CorsOrigin(models.Model):
    """A browser origin allowed to call the organization's APIs (DICOMweb and REST) with a bearer
    token: a viewer served from another site. Stored normalized (``tenants.cors.origin_normalize``:
    lower-case ``scheme://host[:port]``, the scheme's default port dropped), as browsers send it in
    the ``Origin`` header."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="cors_origins"
    )
    # Indexed alone too: a preflight names no organization and asks whether any allows the origin.
    origin = models.CharField(max_length=300, db_index=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "CORS origin"
        verbose_name_plural = "CORS origins"
        ordering = ["origin", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "origin"], name="cors_origin_unique_per_org"
            )
        ]

    def __str__(self) -> str:
        return self.origin


class WebhookEndpoint(models.Model):
    class State(models.TextChoices):
        HEALTHY = "healthy", "Healthy"
        FAILING = "failing", "Failing"
        DISABLED = "disabled", "Disabled"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=1000)
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=128)
    # Empty list: every event type.
    event_types = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.HEALTHY)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return self.state != self.State.DISABLED and (
            not self.event_types or event_type in self.event_types
        )


class WebhookEvent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class WebhookDelivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event.type} -> {self.endpoint.url} ({self.state})"


class WebhookAttempt(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    attempted_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-attempted_at", "-id"]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class UserSession(models.Model):
    """One signed-in browser session of a person, kept after it ends.

    ``session_key`` names the row of Django's session store (the database backend) so that the
    session can be ended; it is never shown, never written to the audit log, and is cleared when
    the session ends. What a person sees of a session is its id, address, browser and times.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="user_sessions"
    )
    session_key = models.CharField(max_length=40, blank=True, db_index=True)
    # "password" or "sso:<provider name>".
    method = models.CharField(max_length=64, default="password")
    # The second factor of the sign-in: "" (none), "totp", "webauthn", "recovery-code", or
    # "idp:<amr values>" when the identity provider says it did multi-factor authentication.
    factor = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Who or what ended it: "sign-out", a person's email, "system: <reason>".
    ended_by = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "ended_at"], name="user_session_open")]

    def __str__(self) -> str:
        return f"session {self.pk} of user {self.user_id}"


class IdentityProvider(models.Model):
    """The hospital's own identity provider for single sign-on (one per organization).

    OpenID Connect: ``issuer`` is the discovery base (``<issuer>/.well-known/openid-configuration``)
    and the client secret is kept as a Fernet token (``tenants.crypto``), never in plain text.
    SAML 2.0: the IdP's metadata, from a URL or pasted XML.
    ``role_mapping`` maps a value of the IdP's groups claim (or SAML attribute) to a Strata role; a
    person whose groups map to no role is refused. ``sso_required`` turns password sign-in off for
    the organization's members except owners (the documented break-glass path).
    """

    class Protocol(models.TextChoices):
        OIDC = "oidc", "OpenID Connect"
        SAML = "saml", "SAML 2.0"

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="identity_provider"
    )
    protocol = models.CharField(max_length=8, choices=Protocol.choices, default=Protocol.OIDC)
    # Shown on the sign-in button and recorded as the sign-in method ("sso:<name>").
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    # OpenID Connect
    issuer = models.URLField(max_length=500, blank=True)
    client_id = models.CharField(max_length=255, blank=True)
    client_secret_encrypted = models.TextField(blank=True)
    scopes = models.CharField(max_length=255, default="openid email profile")
    groups_claim = models.CharField(max_length=100, default="groups")
    # SAML 2.0
    saml_metadata_url = models.URLField(max_length=500, blank=True)
    saml_metadata_xml = models.TextField(blank=True)
    # {"<group value>": "<role>"}; checked against Role on save by the service.
    role_mapping = models.JSONField(default=dict)
    sso_required = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.get_protocol_display()}) for {self.organization_id}"


class EmailDomain(models.Model):
    """An email domain an organization claims for single sign-on.

    Any organization may claim a domain; only one may hold it verified (by a DNS TXT record
    carrying ``verification_token``, or by the platform staff). Sign-in by email looks up the
    verified holder of the address's domain.
    """

    class VerifiedBy(models.TextChoices):
        DNS = "dns", "DNS TXT record"
        STAFF = "staff", "Platform staff"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="email_domains"
    )
    domain = models.CharField(max_length=253)
    verification_token = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_by = models.CharField(max_length=8, choices=VerifiedBy.choices, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["domain"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "domain"], name="email_domain_once_per_org"
            ),
            models.UniqueConstraint(
                fields=["domain"],
                condition=models.Q(verified_at__isnull=False),
                name="email_domain_verified_once",
            ),
        ]

    def __str__(self) -> str:
        return self.domain


class SsoIdentity(models.Model):
    """A person as the organization's identity provider names them (OIDC ``sub``, SAML NameID).

    A returning person is found by subject, never by email alone: an email can be reassigned at
    the IdP, a subject cannot.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="sso_identities"
    )
    provider = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="identities"
    )
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_login_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [
            models.UniqueConstraint(fields=["provider", "subject"], name="sso_identity_subject"),
            models.UniqueConstraint(fields=["provider", "user"], name="sso_identity_user"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} at provider {self.provider_id}"


class SecurityPolicy(models.Model):
    """An organization's sign-in policy: who must use a second factor."""

    class Mfa(models.TextChoices):
        OFF = "off", "Not required"
        ADMINS = "admins", "Required for owners and admins"
        ALL = "all", "Required for all members"

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="security_policy"
    )
    mfa_required = models.CharField(max_length=8, choices=Mfa.choices, default=Mfa.OFF)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "security policies"

    def __str__(self) -> str:
        return f"security policy of {self.organization_id}"


class ScimGroup(models.Model):
    """A group pushed by the identity provider over SCIM; its members get the role that the
    organization's ``IdentityProvider.role_mapping`` gives the group's display name."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="scim_groups"
    )
    scim_id = models.UUIDField(default=uuid.uuid4, unique=True)
    display_name = models.CharField(max_length=255)
    external_id = models.CharField(max_length=255, blank=True)
    members = models.ManyToManyField(Membership, related_name="scim_groups", blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "SCIM group"
        ordering = ["display_name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "display_name"], name="scim_group_name_once"
            )
        ]

    def __str__(self) -> str:
        return self.display_name


# A person's second factors live in their own module; imported here to be part of this app.
from tenants.mfa.models import RecoveryCode, TotpDevice, WebAuthnCredential  # noqa: E402,F401

# SAML assertion IDs already used live beside single sign-on; imported here to be part of this app.
from tenants.sso.models import SamlAssertionUse  # noqa: E402,F401
