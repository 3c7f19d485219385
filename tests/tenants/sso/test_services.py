"""Single sign-on settings: the provider (validated, secret encrypted, audited) and email
domains (claimed by any organization, verified by one)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from tenants import crypto
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import AuditEvent, EmailDomain, Organization, ScimGroup
from tenants.sso import services
from tests.tenants.sso.conftest import verified_domain

ACTOR = Actor.system("tests")


def save(org: Organization, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "name": "Entra ID",
        "issuer": "https://login.microsoftonline.com/tenant-id/v2.0",
        "client_id": "app-id",
        "client_secret": "s3cret-value",
        "role_mapping": {"radiology": "member"},
    }
    values.update(overrides)
    return services.provider_update(org=org, actor=ACTOR, **values)


def test_provider_secret_is_stored_encrypted_and_audited_without_its_value(org: Any) -> None:
    provider = save(org)
    assert "s3cret-value" not in provider.client_secret_encrypted
    assert crypto.decrypt(provider.client_secret_encrypted) == "s3cret-value"
    event = AuditEvent.objects.get(organization=org, action="sso.provider_update")
    assert "s3cret-value" not in str(event.details)
    assert event.details["changes"]["client_secret"] == "changed"


def test_empty_secret_keeps_the_stored_one(org: Any) -> None:
    first = save(org).client_secret_encrypted
    assert save(org, client_secret=None, name="Renamed").client_secret_encrypted == first


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"issuer": "ftp://idp.example"}, "issuer"),
        ({"issuer": "https://idp.example/?x=1"}, "issuer"),
        ({"issuer": ""}, "issuer"),
        ({"client_id": " "}, "client_id"),
        ({"client_secret": None}, "client_secret"),
        ({"scopes": "email profile"}, "scopes"),
        ({"role_mapping": {"radiology": "superuser"}}, "role_mapping"),
        ({"role_mapping": {}}, "role_mapping"),
        ({"role_mapping": {"": "member"}}, "role_mapping"),
        ({"sso_required": True}, "sso_required"),
        ({"name": ""}, "name"),
    ],
)
def test_provider_bad_input_is_refused_with_the_field(
    org: Any, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        save(org, **overrides)
    assert field in exc.value.fields
    assert not AuditEvent.objects.filter(action="sso.provider_update").exists()


def test_private_issuer_is_refused_when_not_allowed(org: Any, settings: Any) -> None:
    settings.SSO_ALLOW_PRIVATE_ISSUERS = False
    with pytest.raises(ValidationFailed) as exc:
        save(org, issuer="http://127.0.0.1:9000")
    assert "issuer" in exc.value.fields


def test_sso_required_needs_a_verified_domain(org: Any) -> None:
    verified_domain(org, "stmary.example")
    assert save(org, sso_required=True).sso_required


def test_domain_add_normalizes_and_gives_a_txt_record(org: Any) -> None:
    record = services.domain_add(org=org, actor=ACTOR, domain=" @StMary.Example. ")
    assert record.domain == "stmary.example"
    assert services.domain_txt_name(record) == "_strata-verification.stmary.example"
    assert services.domain_txt_value(record).endswith(record.verification_token)
    assert AuditEvent.objects.filter(action="sso.domain_add").count() == 1


@pytest.mark.parametrize("value", ["", "not a domain", "localhost", "a..b.example", "x" * 300])
def test_domain_add_refuses_what_is_not_a_domain(org: Any, value: str) -> None:
    with pytest.raises(ValidationFailed):
        services.domain_add(org=org, actor=ACTOR, domain=value)


def test_domain_added_twice_is_a_conflict(org: Any) -> None:
    services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
    with pytest.raises(Conflict):
        services.domain_add(org=org, actor=ACTOR, domain="stmary.example")


def test_two_organizations_may_claim_a_domain_but_only_one_may_verify_it(
    org: Any, other_org: Any
) -> None:
    mine = services.domain_add(org=org, actor=ACTOR, domain="shared.example")
    theirs = services.domain_add(org=other_org, actor=ACTOR, domain="shared.example")
    services.domain_verify_dns(
        org=org, actor=ACTOR, domain=mine, lookup=lambda name: [services.domain_txt_value(mine)]
    )
    with pytest.raises(Conflict) as exc:
        services.domain_verify_dns(
            org=other_org,
            actor=ACTOR,
            domain=theirs,
            lookup=lambda name: [services.domain_txt_value(theirs)],
        )
    assert exc.value.code == "domain_taken"
    theirs.refresh_from_db()
    assert theirs.verified_at is None
    with pytest.raises(Conflict):
        services.domain_verify_staff(domain=theirs, actor=ACTOR)
    # Once verified elsewhere, a new claim is refused outright.
    third = Organization.objects.create(name="Third", slug="third")
    with pytest.raises(Conflict):
        services.domain_add(org=third, actor=ACTOR, domain="shared.example")


def test_dns_verification_checks_the_txt_record_name_and_value(org: Any) -> None:
    record = services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        return ["v=spf1 -all", "strata-domain-verification=wrong"]

    with pytest.raises(ValidationFailed) as exc:
        services.domain_verify_dns(org=org, actor=ACTOR, domain=record, lookup=lookup)
    assert exc.value.code == "txt_not_found"
    assert asked == ["_strata-verification.stmary.example"]
    record.refresh_from_db()
    assert record.verified_at is None
    services.domain_verify_dns(
        org=org, actor=ACTOR, domain=record, lookup=lambda n: [services.domain_txt_value(record)]
    )
    record.refresh_from_db()
    assert record.verified_by == EmailDomain.VerifiedBy.DNS
    assert AuditEvent.objects.filter(action="sso.domain_verify").count() == 1


def test_dns_verification_of_another_tenants_domain_is_not_found(org: Any, other_org: Any) -> None:
    record = services.domain_add(org=other_org, actor=ACTOR, domain="other.example")
    with pytest.raises(NotFound):
        services.domain_verify_dns(org=org, actor=ACTOR, domain=record, lookup=lambda n: [])


def test_last_verified_domain_cannot_be_removed_while_sso_is_required(org: Any) -> None:
    record = verified_domain(org, "stmary.example")
    save(org, sso_required=True)
    with pytest.raises(Conflict):
        services.domain_remove(org=org, actor=ACTOR, domain=record)
    assert EmailDomain.objects.filter(pk=record.pk).exists()
    save(org, sso_required=False)
    services.domain_remove(org=org, actor=ACTOR, domain=record)
    assert not EmailDomain.objects.filter(pk=record.pk).exists()
    assert AuditEvent.objects.filter(action="sso.domain_remove").count() == 1


def test_staff_verification_is_recorded_as_staff(org: Any) -> None:
    record = services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
    services.domain_verify_staff(domain=record, actor=ACTOR)
    record.refresh_from_db()
    assert record.verified_by == EmailDomain.VerifiedBy.STAFF
    assert record.verified_at is not None and record.verified_at <= timezone.now()


def test_storage_credentials_use_the_same_secret_box() -> None:
    from archive.storage import credentials

    assert credentials.decrypt(crypto.encrypt("x")) == "x"
    assert crypto.decrypt(credentials.encrypt("y")) == "y"


# --- the end of a sign-in, with verified claims --------------------------------------------------


def sso_claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "sub-ana", "email": "ana@stmary.example", "groups": ["radiology"], **overrides}


@pytest.fixture
def provider(org: Organization) -> Any:
    verified_domain(org, "stmary.example")
    return save(org, role_mapping={"radiology": "member", "boss": "owner"})


def test_address_relinked_to_another_subject_is_refused_and_the_refusal_is_kept(
    org: Organization, provider: Any
) -> None:
    services.sso_sign_in_complete(provider=provider, claims=sso_claims(), actor=ACTOR)
    with pytest.raises(services.SsoRefused) as exc:
        services.sso_sign_in_complete(
            provider=provider, claims=sso_claims(sub="sub-someone-else"), actor=ACTOR
        )
    assert exc.value.reason == "subject_changed"
    event = AuditEvent.objects.get(action="auth.sso_refused")
    assert event.details["reason"] == "subject_changed"
    assert event.organization_id == org.pk


def test_the_last_owner_is_not_demoted_by_the_group_mapping(
    org: Organization, provider: Any
) -> None:
    result = services.sso_sign_in_complete(
        provider=provider, claims=sso_claims(groups=["boss"]), actor=ACTOR
    )
    assert result.membership.role == "owner"
    again = services.sso_sign_in_complete(provider=provider, claims=sso_claims(), actor=ACTOR)
    assert again.membership.role == "owner"


def test_owner_only_when_a_group_maps_to_owner_explicitly(org: Organization, provider: Any) -> None:
    result = services.sso_sign_in_complete(
        provider=provider, claims=sso_claims(groups=["radiology", "unmapped"]), actor=ACTOR
    )
    assert result.membership.role == "member"


def test_groups_claim_as_a_single_string_is_read(org: Organization, provider: Any) -> None:
    result = services.sso_sign_in_complete(
        provider=provider, claims=sso_claims(groups="radiology"), actor=ACTOR
    )
    assert result.created_user and result.membership.role == "member"


def test_a_new_role_mapping_applies_at_once_to_members_provisioned_by_scim(
    org: Organization, owner: Any, make_member: Any
) -> None:
    save(org)
    member = make_member(org, "member", email="ana@stmary.example")
    group = ScimGroup.objects.create(organization=org, display_name="pacs-admins")
    group.members.add(member)
    # The group maps to no role yet: the member keeps the member role.
    member.refresh_from_db()
    assert member.role == "member"

    save(org, role_mapping={"radiology": "member", "pacs-admins": "admin"})
    member.refresh_from_db()
    assert member.role == "admin"
    change = AuditEvent.objects.filter(organization=org, action="member.role_changed").first()
    assert change is not None and change.details["role"] == {"from": "member", "to": "admin"}
