"""Login audit and the record of signed-in sessions. Django's auth signals are the one place
every login path (portal, admin, password reset) passes through, so they are used here for the
audit trail and ``UserSession`` only (tenants.services writes both).

A sign-in path other than the password form (single sign-on) sets ``request.login_method``
("sso:<provider>") before calling ``login()``; without it the method is "password"."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from tenants.context import Actor
from tenants.models import Membership


def _orgs_of(user: Any) -> list[Any]:
    return [
        m.organization for m in Membership.objects.filter(user=user).select_related("organization")
    ]


@receiver(user_logged_in)
def audit_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from tenants.services import audit_record, user_session_start

    actor = Actor.from_request(request) if request is not None else Actor(user=user)
    actor = Actor(user=user, ip=actor.ip, user_agent=actor.user_agent)
    method = str(getattr(request, "login_method", "") or "password")[:64]
    # The second factor tenants.signin checked: "", "totp", "webauthn", "recovery-code", "idp:...".
    factor = str(getattr(request, "login_factor", "") or "")[:64]
    record = user_session_start(request=request, user=user, method=method, factor=factor)
    details: dict[str, Any] = {"method": method, "factor": factor}
    if record is not None:
        details["session_id"] = record.pk
    for org in _orgs_of(user):
        audit_record(
            org=org,
            actor=actor,
            action="auth.login",
            target=user,
            target_label=user.email,
            details=details,
        )


@receiver(user_logged_out)
def session_signed_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from tenants.services import user_session_signed_out

    if request is not None:
        user_session_signed_out(request=request, user=user)


@receiver(user_login_failed)
def audit_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    from tenants.services import audit_record

    username = str(credentials.get("username", ""))[:150]
    base = Actor.from_request(request) if request is not None else Actor()
    actor = Actor(ip=base.ip, user_agent=base.user_agent, label_override=f"anonymous ({username})")
    user = get_user_model().objects.filter(username__iexact=username).first()
    orgs = _orgs_of(user) if user is not None else []
    for org in orgs or [None]:
        audit_record(org=org, actor=actor, action="auth.login_failed", target_label=username)
