"""Per-token throttling (per user for session requests), backed by the cache (Redis in production)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from tenants.models import ApiToken

if TYPE_CHECKING:  # importing rest_framework.views here would be circular at settings load
    from rest_framework.views import APIView


class TokenRateThrottle(SimpleRateThrottle):
    scope = "token"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if isinstance(request.auth, ApiToken):
            ident = f"t{request.auth.pk}"
        elif request.user is not None and getattr(request.user, "is_authenticated", False):
            ident = f"u{request.user.pk}"
        else:
            ident = f"ip{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
