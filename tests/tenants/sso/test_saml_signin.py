"""Sign-in by SAML 2.0 against pysaml2's own IdP (tests/saml_idp), browserless: the Django test
client is Strata's browser; the IdP builds signed Responses with the variations each refusal
needs."""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from tenants.models import AuditEvent, IdentityProvider, Membership, Organization, SsoIdentity
from tenants.roles import Role
from tenants.sso import views
from tenants.sso.models import SamlAssertionUse
from tests.saml_idp import NAMEID_PERSISTENT, Account, SamlIdp
from tests.tenants.sso.conftest import MAPPING, verified_domain

ACS = "http://testserver/accounts/sso/saml/acs/"
ANA = Account("ana@stmary.example", "ana@stmary.example", ["radiology"])
BEN = Account("ben@stmary.example", "ben@stmary.example", ["pacs-admins", "radiology"])
CID = Account("cid@stmary.example", "cid@stmary.example", ["cafeteria"])


@pytest.fixture(scope="module")
def saml_idp() -> Iterator[SamlIdp]:
    idp = SamlIdp().start()
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture
def saml_org(org: Organization, saml_idp: SamlIdp) -> Organization:
    verified_domain(org, "stmary.example")
    IdentityProvider.objects.create(
        organization=org,
        protocol=IdentityProvider.Protocol.SAML,
        name="St. Mary ADFS",
        saml_metadata_xml=saml_idp.metadata(),
        groups_claim="groups",
        role_mapping=dict(MAPPING),
    )
    return org


def entity_id(org: Organization) -> str:
    return f"http://testserver/accounts/sso/saml/metadata/{org.slug}/"


def start(client: Client, email: str, saml_idp: SamlIdp) -> tuple[str, str]:
    """Start the sign-in; the AuthnRequest's id and the RelayState the IdP is asked to return."""
    response = client.post("/accounts/sso/", {"email": email})
    assert response.status_code == 302, response.content[:500]
    location = response["Location"]
    assert location.startswith(saml_idp.sso_url + "?")
    query = parse_qs(urlsplit(location).query)
    request_xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15).decode()
    match = re.search(r'\sID="([^"]+)"', request_xml)
    assert match is not None
    assert f'AssertionConsumerServiceURL="{ACS}"' in request_xml
    return match.group(1), query["RelayState"][0]


def post_acs(client: Client, saml_response: str, relay_state: str) -> Any:
    return client.post(
        "/accounts/sso/saml/acs/", {"SAMLResponse": saml_response, "RelayState": relay_state}
    )


def sign_in(
    client: Client, org: Organization, saml_idp: SamlIdp, account: Account = ANA, **variation: Any
) -> Any:
    request_id, relay_state = start(client, account.email, saml_idp)
    args: dict[str, Any] = {
        "account": account,
        "in_response_to": request_id,
        "acs_url": ACS,
        "sp_entity_id": entity_id(org),
        **variation,
    }
    return post_acs(client, saml_idp.response(**args), relay_state)


def refusals(org: Organization) -> list[str]:
    return [
        e.details["reason"]
        for e in AuditEvent.objects.filter(organization=org, action="auth.sso_refused")
    ]


def test_signed_assertion_signs_in_a_new_member_with_the_mapped_role(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    client = Client()
    response = sign_in(client, saml_org, saml_idp)
    assert response.status_code == 302, response.content[:800]
    membership = Membership.objects.get(organization=saml_org, user__email="ana@stmary.example")
    assert membership.role == Role.MEMBER
    assert SsoIdentity.objects.get(user=membership.user).subject == "ana@stmary.example"
    assert client.get(f"/o/{saml_org.slug}/").status_code == 200
    login = AuditEvent.objects.get(organization=saml_org, action="auth.login")
    assert login.details["method"] == "sso:St. Mary ADFS"
    assert SamlAssertionUse.objects.filter(organization=saml_org).count() == 1


def test_signed_response_is_accepted_too_and_the_strongest_role_wins(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    response = sign_in(Client(), saml_org, saml_idp, BEN, sign="response")
    assert response.status_code == 302, response.content[:800]
    assert Membership.objects.get(user__email="ben@stmary.example").role == Role.ADMIN


def test_email_comes_from_the_mail_attribute_when_the_name_id_is_persistent(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    account = Account("a1b2c3-opaque", "dora@stmary.example", ["radiology"], NAMEID_PERSISTENT)
    response = sign_in(Client(), saml_org, saml_idp, account)
    assert response.status_code == 302, response.content[:800]
    identity = SsoIdentity.objects.get(user__email="dora@stmary.example")
    assert identity.subject == "a1b2c3-opaque"


@pytest.mark.parametrize(
    ("variation", "reason"),
    [
        ({"sign": "none"}, "bad_signature"),
        ({"other_key": True}, "bad_signature"),
        ({"other_key": True, "sign": "both"}, "bad_signature"),
        (
            {"audience": "http://testserver/accounts/sso/saml/metadata/other-clinic/"},
            "wrong_audience",
        ),
        ({"lifetime_minutes": -10}, "expired"),
        ({"in_response_to": "id-of-another-request"}, "wrong_in_response_to"),
        ({"destination": "https://elsewhere.example/acs"}, "wrong_destination"),
    ],
)
def test_bad_answers_are_refused_audited_and_sign_nobody_in(
    saml_org: Organization, saml_idp: SamlIdp, variation: dict[str, Any], reason: str
) -> None:
    client = Client()
    response = sign_in(client, saml_org, saml_idp, **variation)
    assert response.status_code == 400
    assert b"could not be signed in" in response.content
    assert refusals(saml_org) == [reason]
    assert not Membership.objects.filter(user__email="ana@stmary.example").exists()
    assert client.get(f"/o/{saml_org.slug}/").status_code in (302, 404)


def test_the_same_answer_posted_again_is_refused(saml_org: Organization, saml_idp: SamlIdp) -> None:
    client = Client()
    request_id, relay_state = start(client, ANA.email, saml_idp)
    answer = saml_idp.response(
        account=ANA, in_response_to=request_id, acs_url=ACS, sp_entity_id=entity_id(saml_org)
    )
    assert post_acs(client, answer, relay_state).status_code == 302
    # The RelayState is unknown now, so the ACS first posts the fields again from its own page.
    assert post_acs(client, answer, relay_state).status_code == 200
    again = client.post(
        "/accounts/sso/saml/acs/",
        {"SAMLResponse": answer, "RelayState": relay_state, "same_site": "1"},
    )
    assert again.status_code == 400
    assert refusals(saml_org) == []  # the RelayState is gone: no organization to audit for
    assert AuditEvent.objects.filter(action="auth.sso_refused", organization=None).count() == 1


def test_a_used_assertion_id_is_refused_even_when_its_request_is_still_pending(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    """A second process holding a copy of the session still knows the request; the assertion
    ID store refuses the replay."""
    client = Client()
    request_id, relay_state = start(client, ANA.email, saml_idp)
    pending = dict(client.session[views.SAML_PENDING_SESSION_KEY])
    answer = saml_idp.response(
        account=ANA, in_response_to=request_id, acs_url=ACS, sp_entity_id=entity_id(saml_org)
    )
    assert post_acs(client, answer, relay_state).status_code == 302
    replayer = Client()
    replayer.post("/accounts/sso/", {"email": ANA.email})  # a session of its own
    session = replayer.session
    session[views.SAML_PENDING_SESSION_KEY] = pending
    session.save()
    response = post_acs(replayer, answer, relay_state)
    assert response.status_code == 400
    assert b"used already" in response.content
    assert refusals(saml_org) == ["replayed"]


def test_answer_posted_from_the_idps_site_is_reposted_from_ours(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    """Browsers keep the SameSite=Lax session cookie off a cross-site POST: the ACS posts the
    same fields once more from its own page, and without a session that second post is refused."""
    client = Client()
    request_id, relay_state = start(client, ANA.email, saml_idp)
    answer = saml_idp.response(
        account=ANA, in_response_to=request_id, acs_url=ACS, sp_entity_id=entity_id(saml_org)
    )
    cookieless = Client()
    page = post_acs(cookieless, answer, relay_state)
    assert page.status_code == 200
    assert b'name="same_site" value="1"' in page.content
    refused = cookieless.post(
        "/accounts/sso/saml/acs/",
        {"SAMLResponse": answer, "RelayState": relay_state, "same_site": "1"},
    )
    assert refused.status_code == 400
    # The browser that started the sign-in still can finish it.
    assert post_acs(client, answer, relay_state).status_code == 302


def test_group_mapping_to_no_role_is_refused_and_audited(
    saml_org: Organization, saml_idp: SamlIdp
) -> None:
    response = sign_in(Client(), saml_org, saml_idp, CID)
    assert response.status_code == 403
    assert b"no group that gives access" in response.content
    assert refusals(saml_org) == ["no_role"]
    assert not Membership.objects.filter(user__email="cid@stmary.example").exists()


def test_deactivated_member_is_refused(
    saml_org: Organization, saml_idp: SamlIdp, make_member: Any
) -> None:
    member = make_member(saml_org, Role.MEMBER, email="ana@stmary.example")
    member.deactivated_at = timezone.now()
    member.save()
    response = sign_in(Client(), saml_org, saml_idp)
    assert response.status_code == 403
    assert b"deactivated" in response.content
    assert refusals(saml_org) == ["deactivated"]


def test_post_without_a_started_sign_in_is_refused(saml_org: Organization) -> None:
    response = Client().post("/accounts/sso/saml/acs/", {"RelayState": "nothing", "same_site": "1"})
    assert response.status_code == 400
    assert Client().get("/accounts/sso/saml/acs/").status_code == 405


def test_garbage_answer_is_refused_without_error(saml_org: Organization, saml_idp: SamlIdp) -> None:
    client = Client()
    _, relay_state = start(client, ANA.email, saml_idp)
    bomb = base64.b64encode(
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><r>&b;</r>'
    ).decode()
    response = post_acs(client, bomb, relay_state)
    assert response.status_code == 400
    assert refusals(saml_org) == ["invalid"]


def test_sp_metadata_names_the_entity_id_and_the_acs(saml_org: Organization) -> None:
    response = Client().get(f"/accounts/sso/saml/metadata/{saml_org.slug}/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/samlmetadata+xml"
    body = response.content.decode()
    assert f'entityID="{entity_id(saml_org)}"' in body
    assert f'Location="{ACS}"' in body


def test_sp_metadata_of_an_org_without_saml_is_404(
    saml_org: Organization, other_org: Organization
) -> None:
    assert Client().get(f"/accounts/sso/saml/metadata/{other_org.slug}/").status_code == 404
    IdentityProvider.objects.create(
        organization=other_org, name="OIDC", issuer="https://idp.example", client_id="x"
    )
    assert Client().get(f"/accounts/sso/saml/metadata/{other_org.slug}/").status_code == 404
    assert Client().get("/accounts/sso/saml/metadata/no-such-org/").status_code == 404


def test_unusable_stored_metadata_shows_the_idp_unavailable_page(
    saml_org: Organization,
) -> None:
    IdentityProvider.objects.filter(organization=saml_org).update(saml_metadata_xml="<broken")
    response = Client().post("/accounts/sso/", {"email": ANA.email})
    assert response.status_code == 502
    assert b"SAML metadata cannot be used" in response.content
