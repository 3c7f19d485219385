"""Setting up a SAML 2.0 identity provider: on the Security page and through the REST API, its
metadata fetched from a URL (through the guarded session) or pasted, and refused with a reason
when it cannot be used."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants.models import AuditEvent, IdentityProvider, Organization
from tenants.sso import saml
from tests.saml_idp import SamlIdp


@pytest.fixture(scope="module")
def saml_idp() -> Iterator[SamlIdp]:
    idp = SamlIdp().start()
    try:
        yield idp
    finally:
        idp.stop()


def api(membership: Any) -> APIClient:
    client = APIClient()
    client.force_login(membership.user)
    return client


def provider_url(org: Organization) -> str:
    return f"/api/v1/o/{org.slug}/security/sso/provider/"


def body(**extra: Any) -> dict[str, Any]:
    return {
        "protocol": "saml",
        "name": "St. Mary ADFS",
        "groups_claim": "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
        "role_mapping": {"Strata Radiology": "member"},
        **extra,
    }


def test_api_saves_pasted_metadata_and_shows_what_to_register(
    org: Organization, owner: Any, saml_idp: SamlIdp
) -> None:
    response = api(owner).put(
        provider_url(org), body(saml_metadata_xml=saml_idp.metadata()), format="json"
    )
    assert response.status_code == 200, response.json()
    data = response.json()
    assert data["protocol"] == "saml" and data["has_saml_metadata"] is True
    assert data["saml_sp_entity_id"] == f"http://testserver/accounts/sso/saml/metadata/{org.slug}/"
    assert data["saml_acs_url"] == "http://testserver/accounts/sso/saml/acs/"
    provider = IdentityProvider.objects.get(organization=org)
    assert provider.protocol == "saml" and provider.issuer == "" and not provider.client_id
    event = AuditEvent.objects.get(organization=org, action="sso.provider_update")
    assert event.details["changes"]["saml_metadata_xml"] == "changed"


def test_api_fetches_metadata_from_its_url(
    org: Organization, owner: Any, saml_idp: SamlIdp
) -> None:
    url = f"{saml_idp.base}/metadata"
    response = api(owner).put(provider_url(org), body(saml_metadata_url=url), format="json")
    assert response.status_code == 200, response.json()
    provider = IdentityProvider.objects.get(organization=org)
    assert provider.saml_metadata_url == url
    assert saml.metadata_parse(provider.saml_metadata_xml).sso_url == saml_idp.sso_url


def test_metadata_url_on_a_private_address_is_refused_unless_allowed(
    org: Organization, owner: Any, saml_idp: SamlIdp, settings: Any
) -> None:
    settings.SSO_ALLOW_PRIVATE_ISSUERS = False
    response = api(owner).put(
        provider_url(org), body(saml_metadata_url=f"{saml_idp.base}/metadata"), format="json"
    )
    assert response.status_code == 400
    assert "saml_metadata_url" in str(response.json())
    assert not IdentityProvider.objects.exists()


ENTITY_BOMB = (
    '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&b;"/>'
)
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&x;"/>'
)
NO_IDP = '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="x"/>'


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (ENTITY_BOMB, "not valid XML"),
        (EXTERNAL, "not valid XML"),
        ("<not-closed", "not valid XML"),
        (NO_IDP, "describes no identity provider"),
        ("<a/>", "EntityDescriptor"),
    ],
)
def test_unusable_pasted_metadata_is_refused_with_a_reason(
    org: Organization, owner: Any, xml: str, message: str
) -> None:
    response = api(owner).put(provider_url(org), body(saml_metadata_xml=xml), format="json")
    assert response.status_code == 400
    assert message in str(response.json())
    assert not IdentityProvider.objects.exists()


def test_metadata_without_a_signing_certificate_is_refused(
    org: Organization, owner: Any, saml_idp: SamlIdp
) -> None:
    import re

    stripped = re.sub(r"<ns0:KeyDescriptor.*?</ns0:KeyDescriptor>", "", saml_idp.metadata())
    response = api(owner).put(provider_url(org), body(saml_metadata_xml=stripped), format="json")
    assert response.status_code == 400
    assert "signing certificate" in str(response.json())


def test_oversized_metadata_and_missing_metadata_are_refused(org: Organization, owner: Any) -> None:
    client = api(owner)
    huge = "<x>" + "a" * saml.MAX_METADATA_BYTES + "</x>"
    assert (
        client.put(provider_url(org), body(saml_metadata_xml=huge), format="json").status_code
        == 400
    )
    missing = client.put(provider_url(org), body(), format="json")
    assert missing.status_code == 400
    assert "metadata" in str(missing.json())
    assert not IdentityProvider.objects.exists()


def test_security_page_saves_a_saml_provider_and_shows_entity_id_and_acs(
    org: Organization, owner: Any, saml_idp: SamlIdp
) -> None:
    client = Client()
    client.force_login(owner.user)
    page = client.get(f"/o/{org.slug}/security/")
    assert f"http://testserver/accounts/sso/saml/metadata/{org.slug}/".encode() in page.content
    assert b"http://testserver/accounts/sso/saml/acs/" in page.content
    form = {
        "protocol": "saml",
        "name": "St. Mary Okta",
        "saml_metadata_xml": saml_idp.metadata(),
        "groups_claim": "groups",
        "enabled": "on",
        "map_group_0": "radiology",
        "map_role_0": "member",
    }
    response = client.post(f"/o/{org.slug}/security/sso/", form)
    assert response.status_code == 302, response.content[:2000]
    provider = IdentityProvider.objects.get(organization=org)
    assert provider.protocol == "saml"
    # Saving again without pasting keeps the metadata.
    assert (
        client.post(f"/o/{org.slug}/security/sso/", {**form, "saml_metadata_xml": ""}).status_code
        == 302
    )
    provider.refresh_from_db()
    assert saml.metadata_parse(provider.saml_metadata_xml).sso_url == saml_idp.sso_url
    bad = client.post(f"/o/{org.slug}/security/sso/", {**form, "saml_metadata_xml": NO_IDP})
    assert bad.status_code == 400
    assert b"describes no identity provider" in bad.content
