"""ID token verification: signature against the IdP's JWKS, issuer, audience, expiry, issue
time, nonce. Tokens are crafted with the real test provider's own signing key (and another key),
and sent through the callback in place of the token endpoint's answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from tenants.models import AuditEvent, Membership, Organization
from tenants.sso import oidc
from tests.tenants.sso.idp import CLIENT_ID, Idp, query_of

ISSUER = "https://idp.stmary.example"
NONCE = "n-0123456789"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "sub-ana",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "email": "ana@stmary.example",
        "groups": ["radiology"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def idp_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


@pytest.fixture(scope="module")
def other_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


def sign(key: Any, payload: dict[str, Any], alg: str = "RS256", kid: str = "k1") -> str:
    return jwt.encode({"alg": alg, "kid": kid}, payload, key, algorithms=[alg])


def verify(token: str, key: RSAKey, **kwargs: Any) -> dict[str, Any]:
    public = KeySet([RSAKey.import_key(key.as_dict(private=False))])
    return oidc.verify_id_token(
        token, keys=public, issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE, **kwargs
    )


def test_valid_token_gives_its_claims(idp_key: RSAKey) -> None:
    assert verify(sign(idp_key, claims()), idp_key)["sub"] == "sub-ana"


# Built when the test runs (a lambda of "now"), not when it is collected: a long suite would
# otherwise let the valid tokens expire and the future ones become past.
@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda now: claims(exp=now - 120, iat=now - 600), "expired"),
        (lambda now: claims(aud="another-app"), "wrong_audience"),
        (lambda now: claims(aud=[CLIENT_ID, "another-app"]), "wrong_audience"),  # no azp
        (lambda now: claims(nonce="n-replayed"), "wrong_nonce"),
        (lambda now: claims(nonce=None), "wrong_nonce"),
        (lambda now: claims(iss="https://evil.example"), "wrong_issuer"),
        (lambda now: claims(iat=now + 600, exp=now + 900), "issued_in_future"),
        (lambda now: claims(exp=None), "expired"),
    ],
    ids=[
        "expired",
        "wrong-audience",
        "several-audiences-no-azp",
        "wrong-nonce",
        "no-nonce",
        "wrong-issuer",
        "issued-in-future",
        "no-expiry",
    ],
)
def test_bad_claims_are_refused(idp_key: RSAKey, build: Any, reason: str) -> None:
    with pytest.raises(oidc.OidcError) as exc:
        verify(sign(idp_key, build(int(time.time()))), idp_key)
    assert exc.value.reason == reason


def test_token_signed_by_another_key_is_refused(idp_key: RSAKey, other_key: RSAKey) -> None:
    with pytest.raises(oidc.OidcError) as exc:
        verify(sign(other_key, claims()), idp_key)
    assert exc.value.reason == "bad_signature"


def test_hmac_signed_token_is_refused(idp_key: RSAKey) -> None:
    secret = OctKey.generate_key(256)
    token = jwt.encode({"alg": "HS256"}, claims(), secret, algorithms=["HS256"])
    with pytest.raises(oidc.OidcError):
        verify(token, idp_key)


def test_unsigned_token_is_refused(idp_key: RSAKey) -> None:
    import base64
    import json

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none'})}.{b64(claims())}."
    with pytest.raises(oidc.OidcError):
        verify(token, idp_key)


def test_clock_skew_within_the_leeway_is_accepted(idp_key: RSAKey) -> None:
    now = int(time.time())
    token = sign(idp_key, claims(iat=now + 30, exp=now - 30 + 60))
    assert verify(token, idp_key, now=now + 50)["sub"] == "sub-ana"


def test_clock_skew_beyond_the_leeway_is_refused(idp_key: RSAKey) -> None:
    now = int(time.time())
    token = sign(idp_key, claims(exp=now))
    with pytest.raises(oidc.OidcError):
        verify(token, idp_key, now=now + oidc.CLOCK_SKEW_SECONDS + 5)


# --- through the callback, with the real provider's discovery and JWKS -----------------------


def callback_with_token(
    monkeypatch: pytest.MonkeyPatch, idp: Idp, build: Any
) -> tuple[Client, Any]:
    """Start a sign-in, then answer the callback with the ID token ``build(nonce)`` makes as if
    the token endpoint had sent it."""
    client = Client()
    response = client.post("/accounts/sso/", {"email": "ana@stmary.example"})
    state = query_of(response["Location"])["state"]
    nonce = client.session["sso.pending"][state]["nonce"]
    token = build(nonce)
    monkeypatch.setattr(oidc, "exchange_code", lambda *a, **k: {"id_token": token})
    return client, client.get("/accounts/sso/callback/", {"state": state, "code": "c"})


def idp_claims(idp: Idp, nonce: str, **overrides: Any) -> dict[str, Any]:
    return claims(iss=idp.issuer, nonce=nonce, **overrides)


def test_callback_accepts_a_token_signed_with_the_idps_key(
    sso_org: Organization, idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, response = callback_with_token(
        monkeypatch, idp, lambda n: sign(idp.key, idp_claims(idp, n), kid="idp-key-1")
    )
    assert response.status_code == 302
    assert Membership.objects.filter(user__email="ana@stmary.example").exists()


@pytest.mark.parametrize(
    ("overrides", "use_other_key", "reason"),
    [
        ({}, True, "bad_signature"),
        ({"exp": -300, "iat": -900}, False, "expired"),  # seconds from now
        ({"aud": "another-app"}, False, "wrong_audience"),
        ({"nonce": "not-this-sign-in"}, False, "wrong_nonce"),
    ],
    ids=["signed-by-another-key", "expired", "wrong-audience", "wrong-nonce"],
)
def test_callback_refuses_bad_id_tokens(
    sso_org: Organization,
    idp: Idp,
    other_key: RSAKey,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
    use_other_key: bool,
    reason: str,
) -> None:
    key = other_key if use_other_key else idp.key

    def build(nonce: str) -> str:
        payload = idp_claims(idp, nonce)
        now = int(time.time())
        payload.update({k: now + v if k in ("exp", "iat") else v for k, v in overrides.items()})
        return jwt.encode({"alg": "RS256", "kid": "idp-key-1"}, payload, key, algorithms=["RS256"])

    client, response = callback_with_token(monkeypatch, idp, build)
    assert response.status_code == 400
    assert b"could not be signed in" in response.content
    assert "_auth_user_id" not in client.session
    assert not Membership.objects.filter(user__email="ana@stmary.example").exists()
    event = AuditEvent.objects.get(organization=sso_org, action="auth.sso_refused")
    assert event.details["reason"] == reason


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_of_the_real_provider_names_its_endpoints(idp: Idp) -> None:
    metadata = oidc.discover(idp.issuer)
    assert metadata.issuer == idp.issuer
    assert metadata.token_endpoint.startswith(idp.issuer)
    assert len(oidc.fetch_jwks(metadata).keys) >= 1


def test_discovery_naming_another_issuer_is_refused(idp: Idp) -> None:
    with pytest.raises(oidc.OidcError) as exc:
        oidc.discover(idp.issuer.replace("127.0.0.1", "localhost"))
    assert exc.value.reason == "issuer_mismatch"


def test_unreachable_issuer_is_unavailable() -> None:
    with pytest.raises(oidc.IdpUnavailable):
        oidc.discover("http://127.0.0.1:9")


def test_private_issuer_is_refused_at_connection_time(settings: Any) -> None:
    settings.SSO_ALLOW_PRIVATE_ISSUERS = False
    with pytest.raises(oidc.IdpUnavailable) as exc:
        oidc.discover("https://127.0.0.1:9")
    assert "private or internal" in exc.value.message


def test_endpoint_with_a_query_string_is_accepted_but_the_issuer_is_not() -> None:
    assert oidc.endpoint_problem("https://b2c.example/authorize?p=b2c_1_signin") is None
    assert oidc.issuer_problem("https://b2c.example/?p=x") is not None
