"""Shared helpers of the REST API tests: the endpoint catalog, clients and sample objects.

Holds no tests itself; the ``test_api_*`` modules import from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tenants import services
from tenants.context import Actor
from tenants.models import (
    ApiToken,
    AuditEvent,
    CorsOrigin,
    Invitation,
    Membership,
    Organization,
    WebhookEndpoint,
)
from tenants.roles import Perm, Role, Scope

ALL_ROLES = [role.value for role in Role]
ALL_SCOPES = [scope.value for scope in Scope]
MANAGERS = {Role.OWNER.value, Role.ADMIN.value}

# The expected matrix, written out rather than derived from tenants.roles so that a change to the
# roles shows up here as a failing test.
ROLES_WITH: dict[str, set[str]] = {
    Perm.ORG_VIEW: set(ALL_ROLES),
    Perm.MEMBERS_VIEW: set(ALL_ROLES),
    Perm.MEMBERS_MANAGE: MANAGERS,
    Perm.TOKENS_MANAGE: MANAGERS,
    Perm.WEBHOOKS_MANAGE: MANAGERS,
    Perm.SETTINGS_MANAGE: MANAGERS,
    Perm.AUDIT_READ: MANAGERS | {Role.AUDITOR.value},
}
SCOPES_WITH: dict[str, set[str]] = {
    Perm.ORG_VIEW: set(ALL_SCOPES),
    Perm.MEMBERS_VIEW: {Scope.ADMIN.value},
    Perm.MEMBERS_MANAGE: {Scope.ADMIN.value},
    Perm.TOKENS_MANAGE: {Scope.ADMIN.value},
    Perm.WEBHOOKS_MANAGE: {Scope.ADMIN.value},
    Perm.SETTINGS_MANAGE: {Scope.ADMIN.value},
    Perm.AUDIT_READ: {Scope.ADMIN.value},
}


@dataclass(frozen=True)
class Endpoint:
    """One operation of the organization-scoped API; ``path`` names objects as {member} etc."""

    method: str
    path: str
    permission: str
    body: dict[str, Any] | None = None
    ok: int = 200
    ids: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _endpoint(
    method: str, path: str, permission: str, body: dict[str, Any] | None = None, ok: int = 200
) -> Endpoint:
    ids = tuple(part[1:-1] for part in path.split("/") if part.startswith("{"))
    return Endpoint(method=method, path=path, permission=permission, body=body, ok=ok, ids=ids)


ENDPOINTS: list[Endpoint] = [
    _endpoint("GET", "organization/", Perm.ORG_VIEW),
    _endpoint("PATCH", "organization/", Perm.SETTINGS_MANAGE, {"name": "St. Mary's Hospital"}),
    _endpoint("GET", "members/", Perm.MEMBERS_VIEW),
    _endpoint("GET", "members/{member}/", Perm.MEMBERS_VIEW),
    _endpoint("PATCH", "members/{member}/", Perm.MEMBERS_MANAGE, {"role": Role.MEMBER.value}),
    _endpoint("DELETE", "members/{member}/", Perm.MEMBERS_MANAGE, ok=204),
    _endpoint("GET", "invitations/", Perm.MEMBERS_MANAGE),
    _endpoint(
        "POST",
        "invitations/",
        Perm.MEMBERS_MANAGE,
        {"email": "new@stmary.example", "role": "member"},
        201,
    ),
    _endpoint("GET", "invitations/{invitation}/", Perm.MEMBERS_MANAGE),
    _endpoint("DELETE", "invitations/{invitation}/", Perm.MEMBERS_MANAGE, ok=204),
    _endpoint("GET", "tokens/", Perm.TOKENS_MANAGE),
    _endpoint(
        "POST", "tokens/", Perm.TOKENS_MANAGE, {"name": "pacs", "scopes": ["dicom:read"]}, 201
    ),
    _endpoint("GET", "tokens/{token}/", Perm.TOKENS_MANAGE),
    _endpoint("DELETE", "tokens/{token}/", Perm.TOKENS_MANAGE, ok=204),
    _endpoint("GET", "audit-events/", Perm.AUDIT_READ),
    _endpoint("GET", "audit-events/{event}/", Perm.AUDIT_READ),
    _endpoint("GET", "audit-events/export.csv", Perm.AUDIT_READ),
    _endpoint("GET", "cors-origins/", Perm.SETTINGS_MANAGE),
    _endpoint(
        "POST",
        "cors-origins/",
        Perm.SETTINGS_MANAGE,
        {"origin": "https://new-viewer.example.org"},
        201,
    ),
    _endpoint("GET", "cors-origins/{cors_origin}/", Perm.SETTINGS_MANAGE),
    _endpoint("DELETE", "cors-origins/{cors_origin}/", Perm.SETTINGS_MANAGE, ok=204),
    _endpoint("GET", "webhooks/", Perm.WEBHOOKS_MANAGE),
    _endpoint(
        "POST", "webhooks/", Perm.WEBHOOKS_MANAGE, {"url": "https://hooks.example.com/new"}, 201
    ),
    _endpoint("GET", "webhooks/{webhook}/", Perm.WEBHOOKS_MANAGE),
    _endpoint("PATCH", "webhooks/{webhook}/", Perm.WEBHOOKS_MANAGE, {"description": "PACS"}),
    _endpoint("DELETE", "webhooks/{webhook}/", Perm.WEBHOOKS_MANAGE, ok=204),
    _endpoint("POST", "webhooks/{webhook}/test/", Perm.WEBHOOKS_MANAGE, ok=202),
    _endpoint("POST", "webhooks/{webhook}/rotate-secret/", Perm.WEBHOOKS_MANAGE),
    _endpoint("GET", "webhooks/{webhook}/deliveries/", Perm.WEBHOOKS_MANAGE),
    _endpoint("GET", "webhook-event-types/", Perm.WEBHOOKS_MANAGE),
]
OBJECT_ENDPOINTS = [e for e in ENDPOINTS if e.ids]


@dataclass
class OrgObjects:
    """One object of each kind in an organization, for detail endpoints to address."""

    member: Membership
    invitation: Invitation
    token: ApiToken
    webhook: WebhookEndpoint
    event: AuditEvent
    cors_origin: CorsOrigin

    def ids(self) -> dict[str, int]:
        return {
            "member": self.member.pk,
            "invitation": self.invitation.pk,
            "token": self.token.pk,
            "webhook": self.webhook.pk,
            "event": self.event.pk,
            "cors_origin": self.cors_origin.pk,
        }


def create_org_objects(
    org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> OrgObjects:
    actor = Actor.system("tests")
    invitation, _ = services.invitation_create(
        org=org, email=f"invitee@{org.slug}.example", role=Role.MEMBER, actor=actor
    )
    token, _ = make_token(org, [Scope.DICOM_READ], name="viewer")
    webhook = services.webhook_endpoint_create(
        org=org, url=f"https://hooks.example.com/{org.slug}", actor=actor
    )
    return OrgObjects(
        member=make_member(org, Role.ADMIN),
        invitation=invitation,
        token=token,
        webhook=webhook,
        event=services.audit_record(org=org, actor=actor, action="test.sample"),
        cors_origin=services.cors_origin_add(
            org=org, actor=actor, origin=f"https://viewer.{org.slug}.example"
        ),
    )


def org_path(org: Organization, endpoint: Endpoint, objects: OrgObjects | None = None) -> str:
    """The session URL of ``endpoint``: /api/v1/o/<slug>/..."""
    return f"/api/v1/o/{org.slug}/" + endpoint.path.format(**(objects.ids() if objects else {}))


def token_path(endpoint: Endpoint, objects: OrgObjects | None = None) -> str:
    """The token URL of ``endpoint``: /api/v1/..."""
    return "/api/v1/" + endpoint.path.format(**(objects.ids() if objects else {}))


def call(client: APIClient, endpoint: Endpoint, url: str) -> Any:
    method = getattr(client, endpoint.method.lower())
    if endpoint.body is None:
        return method(url)
    return method(url, endpoint.body, format="json")


def session_client(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def bearer_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def error(response: Any) -> dict[str, Any]:
    """The ``error`` object of a JSON error response, checking its shape on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "fields"}, body
    return dict(body["error"])
