"""Who is acting, from where: passed to every service that writes, and into the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest

    from tenants.models import ApiToken


@dataclass(frozen=True)
class Actor:
    user: Any = None  # a User, or None for tokens and the system
    token: ApiToken | None = None
    ip: str | None = None
    user_agent: str = ""
    label_override: str = ""

    @property
    def label(self) -> str:
        if self.label_override:
            return self.label_override
        if self.token is not None:
            return f"token:{self.token.name} ({self.token.prefix})"
        if self.user is not None:
            return str(self.user.email or self.user.get_username())
        return "system"

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(label_override=label)

    @classmethod
    def from_request(cls, request: HttpRequest, *, token: ApiToken | None = None) -> Actor:
        user = getattr(request, "user", None)
        if user is not None and not getattr(user, "is_authenticated", False):
            user = None
        if token is not None:
            user = None
        return cls(
            user=user,
            token=token,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        )


def client_ip(request: HttpRequest) -> str | None:
    # REMOTE_ADDR only: a proxy's X-Forwarded-For is trusted when the deployment's proxy sets it,
    # which Django leaves to the proxy configuration (SECURE_PROXY_SSL_HEADER & co).
    value = request.META.get("REMOTE_ADDR") or None
    return value
