"""Fixtures of the single sign-on tests: an organization with a verified domain and an OpenID
Connect provider pointing at a real provider on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import timezone

from tenants import crypto
from tenants.models import EmailDomain, IdentityProvider, Organization
from tenants.roles import Role
from tests.tenants.sso.idp import CLIENT_ID, CLIENT_SECRET, Idp, account, start_idp

CALLBACK = "http://testserver/accounts/sso/callback/"
MAPPING = {"radiology": Role.MEMBER, "pacs-admins": Role.ADMIN, "strata-owners": Role.OWNER}


def verified_domain(org: Organization, domain: str) -> EmailDomain:
    return EmailDomain.objects.create(
        organization=org,
        domain=domain,
        verification_token="t" * 40,
        verified_at=timezone.now(),
        verified_by=EmailDomain.VerifiedBy.STAFF,
    )


def configure_provider(org: Organization, issuer: str, **extra: Any) -> IdentityProvider:
    values: dict[str, Any] = {
        "name": "St. Mary Entra ID",
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret_encrypted": crypto.encrypt(CLIENT_SECRET),
        "scopes": "openid email profile groups",
        "groups_claim": "groups",
        "role_mapping": dict(MAPPING),
        **extra,
    }
    return IdentityProvider.objects.create(organization=org, **values)


IDP_ACCOUNTS = [
    account("sub-ana", "ana@stmary.example", ["radiology"], name="Ana Radiologist"),
    account("sub-ben", "ben@stmary.example", ["pacs-admins", "radiology"]),
    account("sub-cid", "cid@stmary.example", ["cafeteria"]),
    account("sub-dee", "dee@stmary.example", ["radiology"], email_verified=False),
    account("sub-eve", "eve@elsewhere.example", ["radiology"]),
    account("sub-own", "owner@stmary.example", ["strata-owners"]),
    # The IdP says how it authenticated these two: with a second factor, and with a password only.
    account("sub-fay", "fay@stmary.example", ["radiology"], amr=["pwd", "otp"], acr="phr"),
    account("sub-gus", "gus@stmary.example", ["radiology"], amr=["pwd"]),
]


@pytest.fixture(autouse=True)
def unlimited_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests start many sign-ins from one address within a minute."""
    from tenants.sso import views

    monkeypatch.setattr(views, "STARTS_PER_MINUTE", 1_000_000)


@pytest.fixture(scope="session")
def idp() -> Iterator[Idp]:
    server = start_idp(redirect_uri=CALLBACK, accounts=IDP_ACCOUNTS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sso_org(org: Organization, idp: Idp) -> Organization:
    verified_domain(org, "stmary.example")
    configure_provider(org, idp.issuer)
    return org


@pytest.fixture
def make_provider() -> Callable[..., IdentityProvider]:
    return configure_provider
