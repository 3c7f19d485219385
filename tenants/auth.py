"""Bearer-token authentication for the REST API and DICOMweb.

``Authorization: Bearer strata_<prefix>_<secret>``. A rejected token answers 401 (unknown,
malformed, expired, revoked) or 403 (the organization is suspended or closed), each with a JSON
error and an audit event for the failed attempt.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from tenants.context import Actor
from tenants.models import ApiToken


class TokenPrincipal:
    """``request.user`` for a token request: authenticated, never staff, carries the token."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True
    email = ""

    def __init__(self, token: ApiToken):
        self.token = token
        self.pk = None
        self.id = None

    def __str__(self) -> str:
        return f"token:{self.token.name}"

    def get_username(self) -> str:
        return str(self)


class OrganizationInactive(exceptions.PermissionDenied):
    default_code = "organization_inactive"


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        from tenants.services import TokenRejected, token_authenticate

        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            self._audit_failure(request, None, "token_malformed")
            raise exceptions.AuthenticationFailed(
                "The Authorization header must be 'Bearer <token>'.", code="token_malformed"
            )
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            self._audit_failure(request, None, "token_malformed")
            raise exceptions.AuthenticationFailed(
                "The bearer token is malformed.", code="token_malformed"
            ) from None
        try:
            token = token_authenticate(raw=raw)
        except TokenRejected as rejected:
            self._audit_failure(request, rejected.token, rejected.code)
            if rejected.code == "organization_inactive":
                raise OrganizationInactive(rejected.message, code=rejected.code) from None
            raise exceptions.AuthenticationFailed(rejected.message, code=rejected.code) from None
        return TokenPrincipal(token), token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="strata"'

    @staticmethod
    def _audit_failure(request: Request, token: ApiToken | None, code: str) -> None:
        from tenants.services import audit_record

        base = Actor.from_request(request._request)
        actor = Actor(
            ip=base.ip,
            user_agent=base.user_agent,
            label_override=f"token:{token.name} ({token.prefix})" if token else "anonymous token",
        )
        audit_record(
            org=token.organization if token else None,
            actor=actor,
            action="auth.token_rejected",
            target=token,
            details={"reason": code, "path": request._request.path[:200]},
        )
