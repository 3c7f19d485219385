"""Brute-force protection of sign-in (django-axes) and of the password-reset form.

Sign-in: every failed attempt is recorded in the database (axes' ``AccessAttempt``), so the count
is shared by every web process and works on SQLite and PostgreSQL alike. An account is locked
after ``LOGIN_FAILURE_LIMIT`` failures from anywhere, an address after
``LOGIN_FAILURE_LIMIT_PER_ADDRESS`` failures for any accounts (higher: a hospital's workstations
often share one address), each for ``LOGIN_LOCKOUT_MINUTES`` after the failure that counted last.
Attempts refused during a lockout are not counted, so a lockout ends on time even while someone
keeps trying. A successful sign-in clears the account's failures, never the address's.

Password reset: requests are counted per email address and per client address in the default
cache over a fixed window; a shared cache (Redis, ``REDIS_URL``) makes the count shared by all
processes, the embedded local-memory cache counts per process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off, get_lockout_parameters
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from tenants.context import Actor, client_ip
from tenants.models import Membership

logger = logging.getLogger(__name__)

ACCOUNT = "username"
ADDRESS = "ip_address"
SCOPE_LABELS = {ACCOUNT: "account", ADDRESS: "address"}


def failure_limit(parameter: str | list[str]) -> int:
    if parameter == ADDRESS:
        return int(settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS)
    return int(settings.LOGIN_FAILURE_LIMIT)


def client_address(request: HttpRequest) -> str | None:
    """axes' ``AXES_CLIENT_IP_CALLABLE``: the same address the audit log records."""
    return client_ip(request)


def username_of(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """axes' ``AXES_USERNAME_CALLABLE``: one key per account however the address is typed."""
    source = credentials if credentials is not None else request.POST
    value = source.get("username")
    if value is None:
        return None
    return str(value).strip().lower()[:255] or None


@dataclass(frozen=True)
class Lockout:
    scopes: list[str]  # "account", "address"
    failures: int
    until: datetime

    def minutes_left(self, now: datetime | None = None) -> int:
        seconds = (self.until - (now or timezone.now())).total_seconds()
        return max(1, math.ceil(seconds / 60))


class LockoutHandler(AxesDatabaseHandler):
    """axes' database handler with a limit of its own for each lockout parameter.

    axes compares the largest count of any parameter with one limit (``AXES_FAILURE_LIMIT``, the
    account's). So each parameter's count is shifted by the difference of the two limits before
    the comparison: ``count >= own limit`` exactly when ``count - own + account >= account``.
    """

    def _counts(
        self, request: HttpRequest, credentials: dict[str, Any] | None
    ) -> list[tuple[str, Any]]:
        parameters = get_lockout_parameters(request, credentials)
        querysets = self.get_user_attempts(request, credentials)
        return [(str(p), qs) for p, qs in zip(parameters, querysets, strict=True)]

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        base = int(settings.AXES_FAILURE_LIMIT)
        worst = 0
        for parameter, attempts in self._counts(request, credentials):
            failures = attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            if failures:
                worst = max(worst, failures - failure_limit(parameter) + base)
        return worst

    def lockout(self, request: HttpRequest, credentials: dict[str, Any] | None) -> Lockout | None:
        """Which limits this request is over, and when the last of them lifts.

        axes keeps one row per (account, address, user agent) with its count and the time of its
        last failure; a row stops counting ``LOGIN_LOCKOUT_MINUTES`` after that time. A limit
        lifts once the newest rows that reach it together have expired.
        """
        cool_off = get_cool_off(request) or timedelta(0)
        scopes: list[str] = []
        failures = 0
        until: datetime | None = None
        for parameter, attempts in self._counts(request, credentials):
            limit = failure_limit(parameter)
            total = 0
            for count, at in attempts.order_by("-attempt_time").values_list(
                "failures_since_start", "attempt_time"
            ):
                total += count
                if total >= limit:
                    scopes.append(SCOPE_LABELS.get(parameter, parameter))
                    failures = max(
                        failures, int(attempts.aggregate(t=Sum("failures_since_start"))["t"] or 0)
                    )
                    until = max(until, at + cool_off) if until else at + cool_off
                    break
        if until is None:
            return None
        return Lockout(scopes=scopes, failures=failures, until=until)

    def reset_user_attempts(
        self, request: HttpRequest, credentials: dict[str, Any] | None = None
    ) -> int:
        # On a successful sign-in (AXES_RESET_ON_SUCCESS) only the account's failures are cleared:
        # clearing the address's would let anyone with one valid account spray passwords on.
        username = get_client_username(request, credentials)
        if not username:
            return 0
        from axes.models import AccessAttempt

        count, _ = AccessAttempt.objects.filter(username=username).delete()
        return int(count)

    def user_login_failed(
        self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
    ) -> None:
        super().user_login_failed(sender, credentials, request, **kwargs)
        # Locked by this very failure (a refused attempt during a lockout is not counted and
        # leaves axes_failures_since_start at None): record the lockout once.
        if (
            request is not None
            and getattr(request, "axes_locked_out", False)
            and getattr(request, "axes_failures_since_start", None) is not None
        ):
            lockout = self.lockout(request, credentials)
            if lockout is not None:
                lockout_audit(request, get_client_username(request, credentials), lockout)


def _handler() -> LockoutHandler:
    from axes.handlers.proxy import AxesProxyHandler

    implementation = AxesProxyHandler.get_implementation()
    assert isinstance(implementation, LockoutHandler), "AXES_HANDLER must be LockoutHandler"
    return implementation


def lockout_audit(request: HttpRequest, username: str | None, lockout: Lockout) -> None:
    """An audit event in every organization of the account (a platform event for an address or
    an unknown account), and a warning in the server log naming no person."""
    from tenants.services import audit_record

    user = get_user_model().objects.filter(username__iexact=username).first() if username else None
    minutes = int(settings.LOGIN_LOCKOUT_MINUTES)
    logger.warning(
        "Sign-in locked for %s minutes after %s failures (%s) for user id %s from %s",
        minutes,
        lockout.failures,
        "+".join(lockout.scopes),
        user.pk if user is not None else "-",
        client_ip(request) or "-",
    )
    base = Actor.from_request(request)
    actor = Actor(
        ip=base.ip, user_agent=base.user_agent, label_override=f"anonymous ({username or ''})"
    )
    orgs: list[Any] = []
    if user is not None:
        orgs = [
            m.organization
            for m in Membership.objects.filter(user=user).select_related("organization")
        ]
    details = {
        "scope": lockout.scopes,
        "failures": lockout.failures,
        "lockout_minutes": minutes,
        "until": lockout.until.isoformat(),
    }
    for org in orgs or [None]:
        audit_record(
            org=org,
            actor=actor,
            action="auth.locked_out",
            target=user,
            target_label=(username or "")[:255],
            details=details,
        )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None
) -> HttpResponse:
    """axes' ``AXES_LOCKOUT_CALLABLE``: the sign-in page saying what is locked and until when."""
    lockout = _handler().lockout(request, credentials)
    now = timezone.now()
    context = {
        "lockout": lockout,
        "minutes_left": lockout.minutes_left(now)
        if lockout
        else int(settings.LOGIN_LOCKOUT_MINUTES),
        "until": lockout.until
        if lockout
        else now + timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES),
        "lockout_minutes": int(settings.LOGIN_LOCKOUT_MINUTES),
        "failure_limit": int(settings.LOGIN_FAILURE_LIMIT),
        "account_locked": lockout is None or "account" in lockout.scopes,
        "address_locked": lockout is not None and "address" in lockout.scopes,
    }
    return render(request, "registration/login_locked.html", context, status=429)


# --- password reset ------------------------------------------------------------------------------


def _window_count(key: str, window: int) -> tuple[int, float]:
    """Count one request in the fixed window of ``key``; return the count and the window's end."""
    now = time.time()
    cache.add(f"{key}:start", now, timeout=window)
    started = cache.get(f"{key}:start")
    cache.add(key, 0, timeout=window)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        count = 1
    start = float(started) if isinstance(started, int | float) else now
    return int(count), start + window


def password_reset_wait(*, email: str, address: str | None) -> int:
    """Count a password-reset request; the seconds to wait if it is over a limit, else 0.

    Counted per email address (hashed: the cache holds no email in clear) and per client
    address, whether or not an account has that email: the answer must not tell them apart.
    """
    window = int(settings.PASSWORD_RESET_WINDOW_MINUTES) * 60
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    checks = [(f"strata:pwreset:email:{digest}", int(settings.PASSWORD_RESET_LIMIT))]
    if address:
        checks.append(
            (f"strata:pwreset:addr:{address}", int(settings.PASSWORD_RESET_LIMIT_PER_ADDRESS))
        )
    wait = 0.0
    for key, limit in checks:
        count, ends = _window_count(key, window)
        if count > limit:
            wait = max(wait, ends - time.time())
    if wait > 0:
        logger.warning(
            "Password reset refused: too many requests for one email or from %s",
            address or "-",
        )
    return max(0, math.ceil(wait))
