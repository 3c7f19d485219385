"""Every write of second factors: enrol, check, remove, recovery codes, and the organization's
policy. Events about a person's factors are written to the audit log of every organization the
person is a member of (as ``auth.login`` is), so each organization sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from tenants.context import Actor
from tenants.errors import Conflict, ServiceError, ValidationFailed
from tenants.mfa import selectors, totp
from tenants.mfa.models import RecoveryCode, TotpDevice, WebAuthnCredential
from tenants.models import Membership, Organization, SecurityPolicy
from tenants.services import audit_record

RECOVERY_CODE_COUNT = 10
# Alphabet without look-alikes (0/o, 1/l/i): 10 characters of 31 are about 50 bits each.
_RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_RECOVERY_LENGTH = 10
# Wrong or replayed codes of one person, across sign-ins: after this many within the window
# every code is refused until the window ends (a 6-digit code cannot be guessed in 10 tries).
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 15 * 60
NAME_MAX = 64


class TooManyAttempts(ServiceError):
    status = 429
    code = "mfa_throttled"


def _audit_for_person(
    *, user: Any, actor: Actor, action: str, target: Any = None, details: dict[str, Any]
) -> None:
    orgs: list[Organization | None] = [
        m.organization for m in Membership.objects.filter(user=user).select_related("organization")
    ]
    for org in orgs or [None]:
        audit_record(
            org=org,
            actor=actor,
            action=action,
            target=target,
            target_type="" if target is not None else "user",
            target_id="" if target is not None else str(user.pk),
            target_label=(user.email or user.get_username()) if target is None else "",
            details=details,
        )


def _failure_key(user: Any) -> str:
    return f"mfa-failures:{user.pk}"


def check_throttle(user: Any) -> None:
    """Refuse (429) every code of a person who gave too many wrong ones lately."""
    if int(cache.get(_failure_key(user), 0)) >= MAX_FAILURES:
        raise TooManyAttempts(
            f"Too many wrong codes. Wait {FAILURE_WINDOW_SECONDS // 60} minutes and try again.",
        )


def _fail(*, user: Any, actor: Actor, factor: str, reason: str, message: str, code: str) -> None:
    key = _failure_key(user)
    if not cache.add(key, 1, FAILURE_WINDOW_SECONDS):
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, FAILURE_WINDOW_SECONDS)
    _audit_for_person(
        user=user,
        actor=actor,
        action="mfa.failed",
        details={"factor": factor, "reason": reason},
    )
    raise ValidationFailed(message, code=code, fields={"code": [message]})


def _clean_name(name: str, default: str) -> str:
    name = " ".join(name.split())
    if len(name) > NAME_MAX:
        raise ValidationFailed(
            f"A name is at most {NAME_MAX} characters.",
            fields={"name": [f"At most {NAME_MAX} characters."]},
        )
    return name or default


# --- authenticator apps (TOTP) ---------------------------------------------------------------


def totp_enrol(*, user: Any, actor: Actor, secret: str, code: str, name: str = "") -> TotpDevice:
    """Add an authenticator app once the person typed a code it shows for ``secret``; the step of
    that code is spent, so the same code cannot then sign in."""
    name = _clean_name(name, "Authenticator app")
    step = totp.matching_step(secret, code)
    if step is None:
        message = "That code does not match: type the 6 digits your app shows now."
        raise ValidationFailed(message, code="mfa_code_wrong", fields={"code": [message]})
    with transaction.atomic():
        device = TotpDevice.objects.create(
            user=user, name=name, secret=totp.seal(secret), last_t=step
        )
        _audit_for_person(
            user=user,
            actor=actor,
            action="mfa.enrolled",
            target=device,
            details={"factor": "totp", "name": name},
        )
    return device


def totp_check(*, user: Any, actor: Actor, code: str) -> TotpDevice:
    """The person's authenticator app that shows ``code`` now. A code of a step already used
    (``last_t``) is refused as reused; the step is claimed with a conditional UPDATE, so two
    requests racing with the same code cannot both pass."""
    check_throttle(user)
    now = timezone.now()
    for device in selectors.totp_list(user=user):
        try:
            secret = totp.unseal(device.secret)
        except ValueError:
            continue
        step = totp.matching_step(secret, code)
        if step is None:
            continue
        claimed = TotpDevice.objects.filter(pk=device.pk, last_t__lt=step).update(
            last_t=step, last_used_at=now
        )
        if claimed:
            cache.delete(_failure_key(user))
            return device
        _fail(
            user=user,
            actor=actor,
            factor="totp",
            reason="reused",
            code="mfa_code_reused",
            message="That code was already used. Wait for your app to show the next one.",
        )
    _fail(
        user=user,
        actor=actor,
        factor="totp",
        reason="wrong",
        code="mfa_code_wrong",
        message="That code is not right. Check your authenticator app's clock and try again.",
    )
    raise AssertionError("unreachable")  # _fail raises


# --- security keys and passkeys (WebAuthn) ---------------------------------------------------


def webauthn_register(
    *,
    user: Any,
    actor: Actor,
    name: str,
    credential_id: str,
    public_key: bytes,
    sign_count: int,
    transports: list[str],
) -> WebAuthnCredential:
    """Keep a credential that ``tenants.mfa.passkeys.registration_verify`` verified."""
    name = _clean_name(name, "Security key")
    if WebAuthnCredential.objects.filter(credential_id=credential_id).exists():
        raise Conflict("This security key is already registered.", code="webauthn_duplicate")
    with transaction.atomic():
        row = WebAuthnCredential.objects.create(
            user=user,
            name=name,
            credential_id=credential_id,
            public_key=public_key,
            sign_count=sign_count,
            transports=transports,
        )
        _audit_for_person(
            user=user,
            actor=actor,
            action="mfa.enrolled",
            target=row,
            details={"factor": "webauthn", "name": name},
        )
    return row


def webauthn_used(
    *, user: Any, actor: Actor, credential: WebAuthnCredential, sign_count: int
) -> None:
    """Record a verified signature. A counter that did not grow (for authenticators that keep one)
    means a cloned key: py_webauthn already refuses it; the UPDATE is conditional as well."""
    updated = WebAuthnCredential.objects.filter(
        pk=credential.pk, user=user, sign_count__lte=sign_count
    ).update(sign_count=sign_count, last_used_at=timezone.now())
    if not updated:
        _fail(
            user=user,
            actor=actor,
            factor="webauthn",
            reason="counter",
            code="webauthn_invalid",
            message="This security key's answer is older than one already seen; try again.",
        )
    cache.delete(_failure_key(user))


def webauthn_failed(*, user: Any, actor: Actor, exc: ServiceError) -> None:
    _fail(
        user=user,
        actor=actor,
        factor="webauthn",
        reason=exc.code,
        code=exc.code,
        message=exc.message,
    )


# --- removing a factor -----------------------------------------------------------------------


def factor_remove(*, user: Any, actor: Actor, factor: TotpDevice | WebAuthnCredential) -> None:
    """Remove one of the person's factors. Refused for the last one while an organization they
    belong to requires a second factor of them: they would be taken to enrolment at once."""
    kind = "totp" if isinstance(factor, TotpDevice) else "webauthn"
    with transaction.atomic():
        # The person's row is the lock: two removals at once cannot both see another factor left.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        others = (
            TotpDevice.objects.filter(user=user).count()
            + WebAuthnCredential.objects.filter(user=user).count()
            - 1
        )
        requiring = selectors.organizations_requiring_mfa(user=user)
        if others == 0 and requiring:
            names = ", ".join(o.name for o in requiring)
            raise Conflict(
                f"{names} requires a second factor of you: add another one before removing "
                f"'{factor.name}'.",
                code="mfa_required",
            )
        _audit_for_person(
            user=user,
            actor=actor,
            action="mfa.removed",
            target=factor,
            details={"factor": kind, "name": factor.name},
        )
        factor.delete()


# --- recovery codes --------------------------------------------------------------------------


def _recovery_hash(code: str) -> str:
    key = hashlib.sha256(b"strata-mfa-recovery:" + settings.SECRET_KEY.encode()).digest()
    normalized = "".join(ch for ch in code.lower() if ch.isalnum())
    return hmac.new(key, normalized.encode(), hashlib.sha256).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def recovery_codes_generate(*, user: Any, actor: Actor) -> list[str]:
    """Ten new single-use codes, returned once in plain text; only their keyed hashes are kept.
    Every earlier code stops working."""
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    with transaction.atomic():
        replaced = RecoveryCode.objects.filter(user=user).delete()[0]
        RecoveryCode.objects.bulk_create(
            RecoveryCode(user=user, code_hash=_recovery_hash(c)) for c in codes
        )
        _audit_for_person(
            user=user,
            actor=actor,
            action="mfa.recovery_regenerated",
            details={"count": len(codes), "replaced": replaced},
        )
    return codes


def recovery_code_use(*, user: Any, actor: Actor, code: str) -> int:
    """Spend one recovery code (claimed with a conditional UPDATE: used once, even by two
    requests at the same moment). Returns how many codes are left."""
    check_throttle(user)
    digest = _recovery_hash(code)
    with transaction.atomic():
        spent = RecoveryCode.objects.filter(
            user=user, code_hash=digest, used_at__isnull=True
        ).update(used_at=timezone.now())
        if spent:
            left = selectors.recovery_codes_left(user=user)
            _audit_for_person(
                user=user, actor=actor, action="mfa.recovery_used", details={"remaining": left}
            )
    if spent:
        cache.delete(_failure_key(user))
        return left
    used = RecoveryCode.objects.filter(user=user, code_hash=digest).exists()
    _fail(
        user=user,
        actor=actor,
        factor="recovery-code",
        reason="reused" if used else "wrong",
        code="mfa_code_reused" if used else "mfa_code_wrong",
        message=(
            "That recovery code was already used; each code works once."
            if used
            else "That is not one of your recovery codes."
        ),
    )
    raise AssertionError("unreachable")  # _fail raises


# --- organization policy ---------------------------------------------------------------------


def mfa_policy_update(*, org: Organization, actor: Actor, mfa_required: str) -> SecurityPolicy:
    """Set who in ``org`` must use a second factor. The owner who requires it must have one
    (otherwise their own next sign-in would send them to enrolment before anyone else)."""
    if mfa_required not in SecurityPolicy.Mfa.values:
        allowed = ", ".join(SecurityPolicy.Mfa.values)
        raise ValidationFailed(
            f"'{mfa_required}' is not a policy; use one of: {allowed}.",
            fields={"mfa_required": [f"One of: {allowed}."]},
        )
    if (
        mfa_required != SecurityPolicy.Mfa.OFF
        and actor.user is not None
        and not selectors.has_factor(user=actor.user)
    ):
        raise Conflict(
            "Add an authenticator app or a security key to your own account first "
            "(Your account → Sign-in factors), then require one of others.",
            code="mfa_enrol_first",
            fields={"mfa_required": ["Add a second factor to your own account first."]},
        )
    with transaction.atomic():
        policy, _created = SecurityPolicy.objects.select_for_update().get_or_create(
            organization=org
        )
        before = policy.mfa_required
        if before == mfa_required:
            return policy
        policy.mfa_required = mfa_required
        policy.updated_at = timezone.now()
        policy.save(update_fields=["mfa_required", "updated_at"])
        audit_record(
            org=org,
            actor=actor,
            action="mfa.policy_update",
            target=policy,
            target_label="second-factor policy",
            details={"from": before, "to": mfa_required},
        )
    return policy
