"""Shared helpers of the second-factor tests (no tests here)."""

from __future__ import annotations

import factory

from tenants.mfa import totp
from tenants.mfa.models import TotpDevice
from tests.factories import UserFactory

TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


class TotpDeviceFactory(factory.django.DjangoModelFactory[TotpDevice]):
    """An authenticator app on ``TOTP_SECRET``, never used (any current code is accepted once)."""

    class Meta:
        model = TotpDevice

    user = factory.SubFactory(UserFactory)
    name = "Phone"
    secret = factory.LazyFunction(lambda: totp.seal(TOTP_SECRET))


def now_code() -> str:
    return totp.code_at(TOTP_SECRET, totp.current_step())


def wrong_code() -> str:
    """Six digits that are not the current code (nor the steps either side)."""
    near = {totp.code_at(TOTP_SECRET, totp.current_step() + d) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)
