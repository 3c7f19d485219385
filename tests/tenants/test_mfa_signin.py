"""Sign-in with a second factor: the second step (authenticator app codes, recovery codes), the
pending sign-in's limits, the identity provider's own MFA, and enrolment required by an
organization's policy. Every sign-in records its factor in the session record and the audit log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.urls import reverse

from tenants import signin
from tenants.context import Actor
from tenants.mfa import services, totp
from tenants.models import AuditEvent, Membership, Organization, SecurityPolicy, UserSession
from tenants.roles import Role
from tests.factories import PASSWORD
from tests.tenants.test_mfa_support import TOTP_SECRET, TotpDeviceFactory, now_code, wrong_code


@pytest.fixture(autouse=True)
def _fresh_failure_counters() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def member(org: Organization, make_member: Callable[..., Membership]) -> Membership:
    return make_member(org, Role.MEMBER, email="dana@stmary.example")


def password_step(client: Client, membership: Membership, next_url: str = "") -> Any:
    data = {"username": membership.user.email, "password": PASSWORD}
    if next_url:
        data["next"] = next_url
    return client.post(reverse("login"), data)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def login_events(org: Organization) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(organization=org, action="auth.login"))


# --- no factor, no policy --------------------------------------------------------------------


def test_without_a_factor_the_password_signs_in_and_records_no_factor(
    org: Organization, member: Membership
) -> None:
    client = Client()
    response = password_step(client, member)

    assert response.status_code == 302
    assert signed_in(client)
    assert UserSession.objects.get(user=member.user).factor == ""
    assert login_events(org)[0].details["factor"] == ""


# --- authenticator app -----------------------------------------------------------------------


def test_a_person_with_an_authenticator_app_is_asked_for_a_code_before_being_signed_in(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()

    response = password_step(client, member, next_url=f"/o/{org.slug}/members/")

    assert response.status_code == 302
    assert response["Location"] == reverse("mfa-verify")
    assert not signed_in(client)
    assert login_events(org) == []
    page = client.get(reverse("mfa-verify"))
    assert page.status_code == 200
    assert b"Code from your authenticator app" in page.content


def test_the_computed_code_signs_in_to_the_next_page_and_records_totp(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member, next_url=f"/o/{org.slug}/members/")

    response = client.post(reverse("mfa-verify"), {"code": now_code()})

    assert response.status_code == 302
    assert response["Location"] == f"/o/{org.slug}/members/"
    assert signed_in(client)
    record = UserSession.objects.get(user=member.user)
    assert (record.method, record.factor) == ("password", "totp")
    assert login_events(org)[0].details["factor"] == "totp"


def test_a_code_with_spaces_as_apps_show_it_is_accepted(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)
    code = now_code()

    response = client.post(reverse("mfa-verify"), {"code": f"{code[:3]} {code[3:]}"})

    assert response.status_code == 302 and signed_in(client)


def test_a_wrong_code_is_refused_with_its_reason_and_audited(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)
    wrong = wrong_code()

    response = client.post(reverse("mfa-verify"), {"code": wrong})

    assert response.status_code == 400
    assert b"That code is not right" in response.content
    assert not signed_in(client)
    failed = AuditEvent.objects.get(organization=org, action="mfa.failed")
    assert failed.details == {"factor": "totp", "reason": "wrong"}


def test_a_code_reused_within_its_window_is_refused(org: Organization, member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    code = now_code()
    first = Client()
    password_step(first, member)
    assert first.post(reverse("mfa-verify"), {"code": code}).status_code == 302

    # Someone who saw the code types it within the same 30 seconds, after the password.
    second = Client()
    password_step(second, member)
    response = second.post(reverse("mfa-verify"), {"code": code})

    assert response.status_code == 400
    assert b"already used" in response.content
    assert not signed_in(second)
    reasons = [e.details["reason"] for e in AuditEvent.objects.filter(action="mfa.failed")]
    assert reasons == ["reused"]


def test_a_code_of_an_earlier_step_is_refused_once_a_later_one_was_used(member: Membership) -> None:
    device = TotpDeviceFactory.create(user=member.user)
    step = totp.current_step()
    actor = Actor(user=member.user)
    services.totp_check(user=member.user, actor=actor, code=totp.code_at(TOTP_SECRET, step))

    with pytest.raises(services.ValidationFailed) as refused:
        services.totp_check(user=member.user, actor=actor, code=totp.code_at(TOTP_SECRET, step - 1))

    assert refused.value.code == "mfa_code_reused"
    device.refresh_from_db()
    assert device.last_t == step


def test_a_code_from_a_clock_30_seconds_off_is_accepted(member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    late = totp.code_at(TOTP_SECRET, totp.current_step() - 1)

    services.totp_check(user=member.user, actor=Actor(user=member.user), code=late)


def test_five_wrong_codes_end_the_pending_sign_in(org: Organization, member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)
    wrong = wrong_code()

    for _ in range(signin.PENDING_MAX_ATTEMPTS - 1):
        assert client.post(reverse("mfa-verify"), {"code": wrong}).status_code == 400
    last = client.post(reverse("mfa-verify"), {"code": wrong})

    assert last.status_code == 302 and last["Location"] == reverse("login")
    # The right code no longer helps: the password must be given again.
    after = client.post(reverse("mfa-verify"), {"code": now_code()})
    assert after.status_code == 302 and after["Location"] == reverse("login")
    assert not signed_in(client)


def test_too_many_wrong_codes_across_sign_ins_block_every_code_for_a_while(
    member: Membership,
) -> None:
    TotpDeviceFactory.create(user=member.user)
    actor = Actor(user=member.user)
    wrong = wrong_code()
    for _ in range(services.MAX_FAILURES):
        with pytest.raises(services.ValidationFailed):
            services.totp_check(user=member.user, actor=actor, code=wrong)

    with pytest.raises(services.TooManyAttempts) as refused:
        services.totp_check(user=member.user, actor=actor, code=now_code())

    assert refused.value.status == 429
    assert "Wait 15 minutes" in refused.value.message


def test_the_second_step_expires_after_five_minutes(org: Organization, member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)

    with time_machine.travel(signin.time.time() + signin.PENDING_SECONDS + 1):
        response = client.post(reverse("mfa-verify"), {"code": now_code()})

    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert not signed_in(client)


def test_the_second_step_without_a_password_first_goes_to_sign_in(db: Any) -> None:
    response = Client().get(reverse("mfa-verify"))

    assert response.status_code == 302 and response["Location"] == reverse("login")


def test_cancel_drops_the_pending_sign_in(member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)

    client.post(reverse("mfa-cancel"))

    assert signin.PENDING_KEY not in client.session


# --- recovery codes --------------------------------------------------------------------------


def test_a_lost_factor_is_replaced_by_a_recovery_code_used_once_and_audited(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    codes = services.recovery_codes_generate(user=member.user, actor=Actor(user=member.user))
    client = Client()
    password_step(client, member)

    response = client.post(reverse("mfa-recovery"), {"code": codes[3].upper()})

    assert response.status_code == 302 and signed_in(client)
    assert UserSession.objects.get(user=member.user).factor == "recovery-code"
    used = AuditEvent.objects.get(organization=org, action="mfa.recovery_used")
    assert used.details == {"remaining": 9}
    assert login_events(org)[0].details["factor"] == "recovery-code"

    again = Client()
    password_step(again, member)
    reused = again.post(reverse("mfa-recovery"), {"code": codes[3]})
    assert reused.status_code == 400
    assert b"already used" in reused.content
    assert not signed_in(again)
    assert AuditEvent.objects.filter(action="mfa.failed").get().details == {
        "factor": "recovery-code",
        "reason": "reused",
    }


def test_a_wrong_recovery_code_is_refused(member: Membership) -> None:
    TotpDeviceFactory.create(user=member.user)
    services.recovery_codes_generate(user=member.user, actor=Actor(user=member.user))
    client = Client()
    password_step(client, member)

    response = client.post(reverse("mfa-recovery"), {"code": "aaaaa-bbbbb"})

    assert response.status_code == 400
    assert b"not one of your recovery codes" in response.content
    assert not signed_in(client)


# --- the identity provider's MFA ------------------------------------------------------------


@pytest.mark.parametrize(
    ("amr", "acr", "expected"),
    [
        (["pwd", "mfa"], "", True),
        (["pwd", "otp"], "", True),
        (["hwk", "pin"], "", True),
        (["face", "swk"], "", True),
        (["pwd"], "", False),
        (["otp"], "", False),
        (["pwd", "pin"], "", False),
        ([], "phr", True),
        ([], "http://schemas.openid.net/pape/policies/2007/06/multi-factor", True),
        ([], "urn:mace:incommon:iap:silver", False),
    ],
)
def test_which_identity_provider_claims_count_as_mfa(
    amr: list[str], acr: str, expected: bool
) -> None:
    assert signin.idp_did_mfa(amr, acr) is expected


def _sso_request(rf: RequestFactory, client: Client) -> Any:
    from importlib import import_module

    from django.conf import settings
    from django.contrib.messages.storage.fallback import FallbackStorage

    request = rf.get("/accounts/sso/callback/")
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore()
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    return request


def test_mfa_done_at_the_identity_provider_signs_in_without_a_second_step(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    request = _sso_request(RequestFactory(), Client())

    response = signin.sign_in(
        request, member.user, method="sso:Okta", next_url="/o/st-mary/", idp_amr=["pwd", "mfa"]
    )

    assert response["Location"] == "/o/st-mary/"
    record = UserSession.objects.get(user=member.user)
    assert (record.method, record.factor) == ("sso:Okta", "idp:mfa,pwd")
    assert login_events(org)[0].details["factor"] == "idp:mfa,pwd"
    assert signin.ENROL_KEY not in request.session


def test_single_factor_at_the_identity_provider_still_asks_for_the_second_step(
    member: Membership,
) -> None:
    TotpDeviceFactory.create(user=member.user)
    request = _sso_request(RequestFactory(), Client())

    response = signin.sign_in(request, member.user, method="sso:Okta", idp_amr=["pwd"])

    assert response["Location"] == reverse("mfa-verify")
    assert request.session[signin.PENDING_KEY]["method"] == "sso:Okta"
    assert not UserSession.objects.filter(user=member.user).exists()


# --- enrolment required by the organization --------------------------------------------------


@pytest.mark.parametrize(
    ("level", "role", "required"),
    [
        (SecurityPolicy.Mfa.ALL, Role.MEMBER, True),
        (SecurityPolicy.Mfa.ADMINS, Role.ADMIN, True),
        (SecurityPolicy.Mfa.ADMINS, Role.OWNER, True),
        (SecurityPolicy.Mfa.ADMINS, Role.MEMBER, False),
        (SecurityPolicy.Mfa.OFF, Role.OWNER, False),
    ],
)
def test_the_policy_covers_people_by_role(
    org: Organization,
    make_member: Callable[..., Membership],
    level: str,
    role: str,
    required: bool,
) -> None:
    SecurityPolicy.objects.create(organization=org, mfa_required=level)
    person = make_member(org, role)
    client = Client()

    response = password_step(client, person)

    assert signed_in(client)
    assert (response["Location"] == reverse("mfa-factors")) is required
    assert bool(client.session.get(signin.ENROL_KEY)) is required


def test_a_deactivated_membership_requires_nothing(org: Organization, member: Membership) -> None:
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    member.deactivated_at = member.created_at
    member.save(update_fields=["deactivated_at"])
    client = Client()

    password_step(client, member)

    assert signin.ENROL_KEY not in client.session


def test_a_member_without_a_factor_is_kept_on_enrolment_until_they_add_one(
    org: Organization, member: Membership
) -> None:
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    client = Client()
    password_step(client, member, next_url=f"/o/{org.slug}/members/")

    page = client.get(f"/o/{org.slug}/")
    assert page.status_code == 302
    assert page["Location"] == reverse("mfa-factors") + f"?next=%2Fo%2F{org.slug}%2F"
    api = client.get(f"/api/v1/o/{org.slug}/organization/")
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "mfa_enrolment_required"
    factors = client.get(reverse("mfa-factors"))
    assert factors.status_code == 200
    assert b"St. Mary Hospital</strong>" not in factors.content  # the name sits in the sentence
    assert b"requires a second factor" in factors.content
    assert client.get(reverse("mfa-totp-add")).status_code == 200

    secret = client.session["mfa_totp_setup"]
    added = client.post(
        reverse("mfa-totp-add"), {"code": totp.code_at(secret, totp.current_step()), "name": ""}
    )
    assert added.status_code == 302
    assert signin.ENROL_KEY not in client.session
    # No recovery codes yet: the factors page, at their section, comes first.
    assert added["Location"] == reverse("mfa-factors") + "#recovery"
    assert client.get(f"/o/{org.slug}/").status_code == 200


def test_signing_out_stays_open_while_enrolment_is_required(
    org: Organization, member: Membership
) -> None:
    SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    client = Client()
    password_step(client, member)

    response = client.post(reverse("logout"))

    assert response.status_code in (200, 302)
    assert not signed_in(client)


def test_the_account_page_names_the_factor_of_each_session(
    org: Organization, member: Membership
) -> None:
    TotpDeviceFactory.create(user=member.user)
    client = Client()
    password_step(client, member)
    client.post(reverse("mfa-verify"), {"code": now_code()})

    page = client.get(reverse("portal-account"))

    assert b"Password + authenticator app" in page.content


# --- security keys at sign-in: bad input -----------------------------------------------------


def test_key_options_without_a_pending_sign_in_are_refused(db: Any) -> None:
    response = Client().post(reverse("mfa-webauthn-options"))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "mfa_pending_expired"


@pytest.mark.parametrize("body", [b"{", b'{"credential": {"id": "AAAA", "response": {}}}'])
def test_a_forged_key_answer_is_refused_audited_and_signs_nobody_in(
    org: Organization, member: Membership, body: bytes
) -> None:
    from tenants.mfa.models import WebAuthnCredential

    WebAuthnCredential.objects.create(
        user=member.user, name="Key", credential_id="AAAA", public_key=b"\x00"
    )
    client = Client()
    password_step(client, member)
    options = client.post(reverse("mfa-webauthn-options"))
    assert options.status_code == 200
    assert options.json()["allowCredentials"][0]["id"] == "AAAA"

    response = client.post(reverse("mfa-webauthn-verify"), body, content_type="application/json")

    assert response.status_code == 400
    assert "error" in response.json()
    assert not signed_in(client)
    # A body that is not JSON is no answer of a key at all: refused, but not audited as one.
    assert AuditEvent.objects.filter(organization=org, action="mfa.failed").count() == (
        1 if body != b"{" else 0
    )


def test_a_lifted_policy_releases_a_session_waiting_to_enrol(
    org: Organization, member: Membership
) -> None:
    policy = SecurityPolicy.objects.create(organization=org, mfa_required=SecurityPolicy.Mfa.ALL)
    client = Client()
    password_step(client, member)
    assert client.get(f"/o/{org.slug}/").status_code == 302

    policy.mfa_required = SecurityPolicy.Mfa.OFF
    policy.save()

    assert client.get(f"/o/{org.slug}/").status_code == 200
    assert signin.ENROL_KEY not in client.session


# --- Django admin's own sign-in --------------------------------------------------------------


def test_the_admin_sign_in_page_sends_to_the_portals_sign_in(db: Any) -> None:
    response = Client().get("/admin/login/?next=/admin/tenants/")

    assert response.status_code == 302
    assert response["Location"] == reverse("login") + "?next=%2Fadmin%2Ftenants%2F"


def test_the_admin_form_does_not_skip_the_second_factor(member: Membership) -> None:
    member.user.is_staff = True
    member.user.save()
    TotpDeviceFactory.create(user=member.user)
    client = Client()

    response = client.post("/admin/login/", {"username": member.user.email, "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not signed_in(client)
    assert client.get("/admin/").status_code == 302


def test_staff_without_a_factor_still_use_the_admin_form(member: Membership) -> None:
    member.user.is_staff = True
    member.user.save()
    client = Client()

    response = client.post("/admin/login/", {"username": member.user.email, "password": PASSWORD})

    assert response.status_code == 302 and signed_in(client)
    assert client.get("/admin/").status_code == 200
