"""Sign-in by single sign-on against a real OpenID Connect provider on loopback, browserless:
the Django test client is Strata's browser, ``log_in_at_idp`` fills the IdP's form."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tenants.models import AuditEvent, Membership, Organization, SsoIdentity, UserSession
from tenants.roles import Role
from tests.tenants.sso.idp import Idp, log_in_at_idp, query_of


def start(client: Client, email: str) -> Any:
    response = client.post("/accounts/sso/", {"email": email})
    assert response.status_code == 302, response.content[:500]
    return response


def sign_in_via_idp(client: Client, email: str) -> Any:
    response = start(client, email)
    back = log_in_at_idp(response["Location"], email=email)
    assert back.startswith("http://testserver/accounts/sso/callback/"), back
    return client.get(back.replace("http://testserver", ""))


def test_first_sign_in_creates_the_member_with_the_mapped_role(
    sso_org: Organization, idp: Idp
) -> None:
    client = Client()
    response = sign_in_via_idp(client, "ana@stmary.example")
    assert response.status_code == 302
    membership = Membership.objects.get(organization=sso_org, user__email="ana@stmary.example")
    assert membership.role == Role.MEMBER
    assert not membership.user.has_usable_password()
    assert SsoIdentity.objects.get(user=membership.user).subject == "sub-ana"
    assert client.get(f"/o/{sso_org.slug}/").status_code == 200
    login = AuditEvent.objects.filter(organization=sso_org, action="auth.login").first()
    assert login is not None and login.details["method"] == "sso:St. Mary Entra ID"


def test_returning_person_is_found_by_subject_and_their_role_follows_the_claim(
    sso_org: Organization, idp: Idp, make_member: Any
) -> None:
    sign_in_via_idp(Client(), "ana@stmary.example")
    membership = Membership.objects.get(organization=sso_org, user__email="ana@stmary.example")
    membership.role = Role.ADMIN  # changed by hand; the IdP says radiology -> member
    membership.save()
    response = sign_in_via_idp(Client(), "ana@stmary.example")
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.MEMBER
    change = AuditEvent.objects.get(organization=sso_org, action="member.role_changed")
    assert change.details["role"] == {"from": "admin", "to": "member"}
    assert SsoIdentity.objects.filter(user=membership.user).count() == 1


def test_highest_mapped_role_wins_when_several_groups_map(sso_org: Organization, idp: Idp) -> None:
    sign_in_via_idp(Client(), "ben@stmary.example")
    assert Membership.objects.get(user__email="ben@stmary.example").role == Role.ADMIN


def test_existing_member_with_the_address_is_linked_on_first_sign_in(
    sso_org: Organization, idp: Idp, make_member: Any
) -> None:
    existing = make_member(sso_org, Role.MEMBER, email="ana@stmary.example")
    response = sign_in_via_idp(Client(), "ana@stmary.example")
    assert response.status_code == 302
    assert SsoIdentity.objects.get(subject="sub-ana").user_id == existing.user_id
    assert Membership.objects.filter(organization=sso_org).count() == 1


def test_group_mapping_to_no_role_is_refused_with_a_clear_page_and_audited(
    sso_org: Organization, idp: Idp
) -> None:
    client = Client()
    response = sign_in_via_idp(client, "cid@stmary.example")
    assert response.status_code == 403
    assert b"in no group that gives access" in response.content
    assert not Membership.objects.filter(user__email="cid@stmary.example").exists()
    event = AuditEvent.objects.get(organization=sso_org, action="auth.sso_refused")
    assert event.details["reason"] == "no_role"
    assert "_auth_user_id" not in client.session


def test_unverified_email_at_the_idp_is_refused(sso_org: Organization, idp: Idp) -> None:
    response = sign_in_via_idp(Client(), "dee@stmary.example")
    assert response.status_code == 403
    assert b"has not verified the address" in response.content
    assert AuditEvent.objects.get(action="auth.sso_refused").details["reason"] == "email_unverified"


def test_email_outside_the_organizations_verified_domains_is_refused(
    sso_org: Organization, idp: Idp
) -> None:
    # The sign-in started with a stmary.example address; the IdP answers for another person.
    client = Client()
    response = start(client, "ana@stmary.example")
    back = log_in_at_idp(response["Location"], email="eve@elsewhere.example")
    response = client.get(back.replace("http://testserver", ""))
    assert response.status_code == 403
    assert b"not in an email domain" in response.content
    assert not Membership.objects.filter(user__email="eve@elsewhere.example").exists()


def test_deactivated_membership_is_not_reactivated_by_sso(
    sso_org: Organization, idp: Idp, make_member: Any
) -> None:
    from django.utils import timezone

    member = make_member(sso_org, Role.MEMBER, email="ana@stmary.example")
    member.deactivated_at = timezone.now()
    member.save()
    response = sign_in_via_idp(Client(), "ana@stmary.example")
    assert response.status_code == 403
    assert b"deactivated" in response.content
    member.refresh_from_db()
    assert member.deactivated_at is not None
    assert not SsoIdentity.objects.exists()


def test_wrong_state_is_refused(sso_org: Organization, idp: Idp) -> None:
    client = Client()
    response = start(client, "ana@stmary.example")
    back = log_in_at_idp(response["Location"], email="ana@stmary.example")
    params = query_of(back)
    response = client.get(
        "/accounts/sso/callback/", {"state": "forged-" + params["state"], "code": params["code"]}
    )
    assert response.status_code == 400
    assert b"Start the sign-in again" in response.content
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.sso_refused").exists()


def test_callback_from_another_browser_is_refused(sso_org: Organization, idp: Idp) -> None:
    response = start(Client(), "ana@stmary.example")
    back = log_in_at_idp(response["Location"], email="ana@stmary.example")
    other = Client()
    assert other.get(back.replace("http://testserver", "")).status_code == 400
    assert "_auth_user_id" not in other.session


def test_replayed_callback_is_refused(sso_org: Organization, idp: Idp) -> None:
    client = Client()
    response = start(client, "ana@stmary.example")
    back = log_in_at_idp(response["Location"], email="ana@stmary.example")
    path = back.replace("http://testserver", "")
    assert client.get(path).status_code == 302
    client.logout()
    again = client.get(path)
    assert again.status_code == 400
    assert "_auth_user_id" not in client.session


def test_replayed_code_is_refused_by_the_idp(sso_org: Organization, idp: Idp) -> None:
    client = Client()
    first = log_in_at_idp(
        start(client, "ana@stmary.example")["Location"], email="ana@stmary.example"
    )
    assert client.get(first.replace("http://testserver", "")).status_code == 302
    client.logout()
    # A new sign-in gets a fresh state; the old, used code is sent with it.
    fresh = query_of(start(client, "ana@stmary.example")["Location"])
    response = client.get(
        "/accounts/sso/callback/", {"state": fresh["state"], "code": query_of(first)["code"]}
    )
    assert response.status_code == 400
    assert b"refused the sign-in code" in response.content
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.filter(action="auth.sso_refused").first()
    assert event is not None and event.details["reason"] == "code_refused"


def test_idp_error_answer_is_shown(sso_org: Organization, idp: Idp) -> None:
    client = Client()
    state = query_of(start(client, "ana@stmary.example")["Location"])["state"]
    response = client.get(
        "/accounts/sso/callback/",
        {"state": state, "error": "access_denied", "error_description": "User cancelled"},
    )
    assert response.status_code == 403
    assert b"access_denied" in response.content


def test_unknown_domain_is_told_to_use_the_password(db: Any) -> None:
    response = Client().post("/accounts/sso/", {"email": "someone@nowhere.example"})
    assert response.status_code == 400
    assert b"not set up for nowhere.example" in response.content


def test_domain_claimed_but_not_verified_does_not_lead_to_the_idp(
    org: Organization, idp: Idp, make_provider: Any
) -> None:
    from tenants.models import EmailDomain

    make_provider(org, idp.issuer)
    EmailDomain.objects.create(organization=org, domain="stmary.example", verification_token="x")
    response = Client().post("/accounts/sso/", {"email": "ana@stmary.example"})
    assert response.status_code == 400


def test_idp_down_at_the_callback_shows_the_unavailable_page(
    sso_org: Organization, idp: Idp, monkeypatch: Any
) -> None:
    from tenants.sso import oidc

    client = Client()
    back = log_in_at_idp(
        start(client, "ana@stmary.example")["Location"], email="ana@stmary.example"
    )

    def down(*args: Any, **kwargs: Any) -> Any:
        raise oidc.IdpUnavailable("The identity provider did not answer (token request).")

    monkeypatch.setattr(oidc, "exchange_code", down)
    response = client.get(back.replace("http://testserver", ""))
    assert response.status_code == 502
    assert b"is not answering" in response.content
    assert "_auth_user_id" not in client.session


def test_answer_naming_another_issuer_is_refused(sso_org: Organization, idp: Idp) -> None:
    client = Client()
    back = log_in_at_idp(
        start(client, "ana@stmary.example")["Location"], email="ana@stmary.example"
    )
    params = query_of(back)
    assert params["iss"] == idp.issuer  # the provider names itself (RFC 9207)
    params["iss"] = "https://other-idp.example"
    response = client.get("/accounts/sso/callback/", params)
    assert response.status_code == 400
    assert b"another identity provider" in response.content
    assert "_auth_user_id" not in client.session


def test_too_many_starts_from_one_address_are_refused(
    sso_org: Organization, idp: Idp, monkeypatch: Any
) -> None:
    from tenants.sso import views

    monkeypatch.setattr(views, "STARTS_PER_MINUTE", 0)
    response = Client().post("/accounts/sso/", {"email": "ana@stmary.example"})
    assert response.status_code == 429
    assert b"Too many sign-in attempts" in response.content


def _with_authenticator_app(org: Organization, email: str, make_member: Any) -> Membership:
    from tests.tenants.test_mfa_support import TotpDeviceFactory

    membership = make_member(org, Role.MEMBER, email=email)
    TotpDeviceFactory(user=membership.user)
    return membership


def test_mfa_done_at_the_idp_counts_and_is_recorded_as_the_factor(
    sso_org: Organization, idp: Idp, make_member: Any
) -> None:
    membership = _with_authenticator_app(sso_org, "fay@stmary.example", make_member)
    client = Client()
    response = sign_in_via_idp(client, "fay@stmary.example")
    # Signed in at once: the ID token says the IdP asked for a second factor (amr pwd + otp).
    assert response.status_code == 302
    assert not response["Location"].startswith("/accounts/mfa/")
    assert client.get(f"/o/{sso_org.slug}/").status_code == 200
    record = UserSession.objects.get(user=membership.user)
    assert record.method == "sso:St. Mary Entra ID"
    assert record.factor.startswith("idp:") and "otp" in record.factor


def test_a_password_only_sign_in_at_the_idp_still_asks_for_the_second_factor(
    sso_org: Organization, idp: Idp, make_member: Any
) -> None:
    membership = _with_authenticator_app(sso_org, "gus@stmary.example", make_member)
    client = Client()
    response = sign_in_via_idp(client, "gus@stmary.example")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/mfa/")
    # Not signed in until the code is given.
    assert client.get(f"/o/{sso_org.slug}/").status_code == 302
    assert not UserSession.objects.filter(user=membership.user).exists()
