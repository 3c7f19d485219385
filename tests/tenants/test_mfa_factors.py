"""A person's own factors under /account/factors/: adding an authenticator app, removing a
factor (with the password, never the last one an organization requires), recovery codes (hashes
only, shown once, new ones replace the old), and nobody else's factors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from tenants.context import Actor
from tenants.mfa import services, totp
from tenants.mfa.models import RecoveryCode, TotpDevice, WebAuthnCredential
from tenants.models import AuditEvent, Membership, Organization, SecurityPolicy
from tenants.roles import Role
from tests.factories import PASSWORD
from tests.tenants.test_mfa_support import TotpDeviceFactory, wrong_code


@pytest.fixture(autouse=True)
def _fresh_failure_counters() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def member(org: Organization, make_member: Callable[..., Membership]) -> Membership:
    return make_member(org, Role.MEMBER, email="dana@stmary.example")


def client_of(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_the_factors_page_needs_a_signed_in_person(db: object) -> None:
    response = Client().get(reverse("mfa-factors"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_account_page_links_to_sign_in_factors(member: Membership) -> None:
    response = client_of(member).get(reverse("portal-account"))

    assert reverse("mfa-factors").encode() in response.content


def test_adding_an_authenticator_app_shows_a_qr_code_drawn_on_the_server(
    member: Membership,
) -> None:
    client = client_of(member)

    page = client.get(reverse("mfa-totp-add"))

    assert page.status_code == 200
    assert b"<svg" in page.content and b"<script" not in page.content.split(b"<main")[1]
    assert "no-store" in page["Cache-Control"]
    secret = client.session["mfa_totp_setup"]
    response = client.post(
        reverse("mfa-totp-add"),
        {"code": totp.code_at(secret, totp.current_step()), "name": "Work phone"},
    )
    assert response.status_code == 302
    device = TotpDevice.objects.get(user=member.user)
    assert device.name == "Work phone"
    assert secret not in device.secret  # sealed, not plain text
    assert totp.unseal(device.secret) == secret
    event = AuditEvent.objects.get(action="mfa.enrolled")
    assert event.details == {"factor": "totp", "name": "Work phone"}


def test_a_wrong_code_when_adding_an_app_adds_nothing(member: Membership) -> None:
    client = client_of(member)
    client.get(reverse("mfa-totp-add"))

    response = client.post(reverse("mfa-totp-add"), {"code": "12345", "name": ""})

    assert response.status_code == 400
    assert b"does not match" in response.content
    assert not TotpDevice.objects.exists()


def test_the_code_that_confirmed_the_app_cannot_then_sign_in(member: Membership) -> None:
    client = client_of(member)
    client.get(reverse("mfa-totp-add"))
    secret = client.session["mfa_totp_setup"]
    code = totp.code_at(secret, totp.current_step())
    client.post(reverse("mfa-totp-add"), {"code": code, "name": ""})

    with pytest.raises(services.ValidationFailed) as refused:
        services.totp_check(user=member.user, actor=Actor(user=member.user), code=code)

    assert refused.value.code == "mfa_code_reused"


def test_removing_a_factor_asks_for_the_password(member: Membership) -> None:
    device = TotpDeviceFactory.create(user=member.user)
    client = client_of(member)
    url = reverse("mfa-factor-remove", args=["totp", device.pk])

    wrong = client.post(url, {"password": "not it"})
    assert wrong.status_code == 400
    assert b"Not your password" in wrong.content
    assert TotpDevice.objects.filter(pk=device.pk).exists()

    right = client.post(url, {"password": PASSWORD})
    assert right.status_code == 302
    assert not TotpDevice.objects.filter(pk=device.pk).exists()
    event = AuditEvent.objects.get(action="mfa.removed")
    assert event.details == {"factor": "totp", "name": "Phone"}


def test_an_account_without_a_password_removes_with_a_current_code(member: Membership) -> None:
    member.user.set_unusable_password()
    member.user.save()
    first = TotpDeviceFactory.create(user=member.user, name="Old phone")
    TotpDeviceFactory.create(user=member.user, name="New phone")
    client = client_of(member)
    url = reverse("mfa-factor-remove", args=["totp", first.pk])

    assert client.post(url, {"code": wrong_code()}).status_code == 400
    from tests.tenants.test_mfa_support import now_code

    assert client.post(url, {"code": now_code()}).status_code == 302
    assert list(TotpDevice.objects.values_list("name", flat=True)) == ["New phone"]


def test_the_last_factor_an_organization_requires_cannot_be_removed(
    org: Organization, member: Membership
) -> None:
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    device = TotpDeviceFactory.create(user=member.user)

    response = client_of(member).post(
        reverse("mfa-factor-remove", args=["totp", device.pk]), {"password": PASSWORD}
    )

    assert response.status_code == 409
    assert b"St. Mary Hospital requires a second factor of you" in response.content
    assert TotpDevice.objects.filter(pk=device.pk).exists()
    assert not AuditEvent.objects.filter(action="mfa.removed").exists()


@pytest.mark.parametrize("kind", ["totp", "webauthn"])
def test_someone_elses_factor_answers_404(
    org: Organization, member: Membership, make_member: Callable[..., Membership], kind: str
) -> None:
    other = make_member(org, Role.OWNER)
    if kind == "totp":
        factor_id = TotpDeviceFactory.create(user=other.user).pk
    else:
        factor_id = WebAuthnCredential.objects.create(
            user=other.user, name="Key", credential_id="abc", public_key=b"k"
        ).pk
    url = reverse("mfa-factor-remove", args=[kind, factor_id])
    client = client_of(member)

    assert client.get(url).status_code == 404
    assert client.post(url, {"password": PASSWORD}).status_code == 404
    assert TotpDevice.objects.count() + WebAuthnCredential.objects.count() == 1


def test_an_unknown_kind_of_factor_answers_404(member: Membership) -> None:
    device = TotpDeviceFactory.create(user=member.user)

    response = client_of(member).get(f"/account/factors/sms/{device.pk}/remove/")

    assert response.status_code == 404


# --- recovery codes --------------------------------------------------------------------------


def test_recovery_codes_are_shown_once_and_kept_only_as_hashes(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = client_of(member)

    response = client.post(reverse("mfa-recovery-codes"))

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    codes = response.context["codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    stored = list(RecoveryCode.objects.filter(user=member.user).values_list("code_hash", flat=True))
    assert len(stored) == 10
    assert not any(code in h or code.replace("-", "") in h for code in codes for h in stored)
    page = client.get(reverse("mfa-factors"))
    assert not any(code.encode() in page.content for code in codes)
    assert b"<strong>10</strong> unused recovery codes" in page.content
    event = AuditEvent.objects.get(organization=org, action="mfa.recovery_regenerated")
    assert event.details == {"count": 10, "replaced": 0}


def test_new_recovery_codes_make_the_old_ones_stop_working(member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    actor = Actor(user=member.user)
    old = services.recovery_codes_generate(user=member.user, actor=actor)
    new = services.recovery_codes_generate(user=member.user, actor=actor)

    with pytest.raises(services.ValidationFailed):
        services.recovery_code_use(user=member.user, actor=actor, code=old[0])
    assert services.recovery_code_use(user=member.user, actor=actor, code=new[0]) == 9
    assert AuditEvent.objects.filter(action="mfa.recovery_regenerated").order_by(
        "id"
    ).last().details == {  # type: ignore[union-attr]
        "count": 10,
        "replaced": 10,
    }


def test_recovery_codes_need_a_factor_first(member: Membership) -> None:
    client = client_of(member)

    response = client.post(reverse("mfa-recovery-codes"))

    assert response.status_code == 302
    assert not RecoveryCode.objects.exists()


def test_a_name_longer_than_64_characters_is_refused(member: Membership) -> None:
    client = client_of(member)
    client.get(reverse("mfa-totp-add"))
    secret = client.session["mfa_totp_setup"]

    response = client.post(
        reverse("mfa-totp-add"),
        {"code": totp.code_at(secret, totp.current_step()), "name": "x" * 65},
    )

    assert response.status_code == 400
    assert not TotpDevice.objects.exists()


# --- security key registration: bad input ----------------------------------------------------


def test_registering_a_key_without_asking_for_options_first_is_refused(member: Membership) -> None:
    response = client_of(member).post(
        reverse("mfa-webauthn-register"),
        data={"name": "Key", "credential": {"id": "x"}},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webauthn_expired"
    assert not WebAuthnCredential.objects.exists()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"credential": "nope"}'])
def test_a_malformed_key_answer_is_refused_without_a_500(member: Membership, body: bytes) -> None:
    client = client_of(member)
    options = client.post(reverse("mfa-webauthn-register-options"))
    assert options.status_code == 200
    assert options.json()["rp"]["id"] == "testserver"

    response = client.post(
        reverse("mfa-webauthn-register"), data=body, content_type="application/json"
    )

    assert response.status_code == 400
    assert "error" in response.json()
    assert not WebAuthnCredential.objects.exists()
