"""Per-token throttling (per user for session requests, per address without credentials).

Where the counts live: the ``throttle`` cache (settings.CACHES). Redis whenever REDIS_URL is set,
so that every web process (gunicorn worker) on every machine counts against one limit per token.
Without REDIS_URL (the embedded default) it is the process's own memory: each process counts
alone, and with N processes a token gets up to N times its rate. DRF's ``SimpleRateThrottle``
binds its ``cache`` to the ``default`` alias when DRF is imported; here the alias is resolved for
each request (so a settings override is what counts).

How it counts: a sliding-window counter, atomic in the cache. Each window of the rate's
duration has one counter, raised with the cache's atomic increment (Redis INCR); a request is
let through while ``previous window's count x the part of it still inside the sliding window +
this window's count`` stays within the rate. DRF's own throttle reads a list of timestamps and
writes it back: two workers answering at the same moment overwrite each other's entry and the
token gets more than its rate, and the list (up to the rate's number of floats) travels to and
from Redis on every request. A refused request is not counted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.core.cache import BaseCache, caches
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from tenants.models import ApiToken

if TYPE_CHECKING:  # importing rest_framework.views here would be circular at settings load
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

THROTTLE_CACHE_ALIAS = "throttle"


class TokenRateThrottle(SimpleRateThrottle):
    scope = "token"

    def __init__(self) -> None:
        # DRF makes a throttle per request: the alias is resolved at request time.
        self.cache: BaseCache = caches[THROTTLE_CACHE_ALIAS]
        self._wait: float | None = None
        super().__init__()

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if isinstance(request.auth, ApiToken):
            ident = f"t{request.auth.pk}"
        elif request.user is not None and getattr(request.user, "is_authenticated", False):
            ident = f"u{request.user.pk}"
        else:
            ident = f"ip{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        # An unreachable cache server must not take the API down with it: the request is let
        # through (unthrottled) and the outage logged, rather than every caller getting a 500.
        try:
            return self._count(key)
        except Exception as exc:  # noqa: BLE001 - any cache backend error
            logger.warning("API throttle cache unavailable, request allowed: %s", exc)
            return True

    def _count(self, key: str) -> bool:
        limit, duration = self.parse_rate(self.rate)
        assert limit is not None and duration is not None  # a rate is set (allow_request)
        now = self.timer()
        window = int(now // duration)
        current, previous = f"{key}:{window}", f"{key}:{window - 1}"
        # Kept through the next window, where it is the "previous" count.
        self.cache.add(current, 0, timeout=2 * duration + 1)
        count = self.cache.incr(current)
        before = self.cache.get(previous) or 0
        elapsed = now / duration - window  # 0..1 into the current window
        if before * (1 - elapsed) + count <= limit:
            return True
        self.cache.decr(current)
        # Once this window ends its count weighs less and less; ask to come back then.
        self._wait = max((window + 1) * duration - now, 1.0)
        return False

    def wait(self) -> float | None:
        return self._wait
