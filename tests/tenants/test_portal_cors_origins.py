"""Portal page of the allowed browser origins (CORS): add, refuse bad origins, remove, who may."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, CorsOrigin, Membership, Organization
from tenants.roles import Role


@pytest.fixture
def client(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def page_url(org: Organization) -> str:
    return reverse("portal-cors-origins", args=[org.slug])


def remove_url(org: Organization, row: CorsOrigin) -> str:
    return reverse("portal-cors-origin-remove", args=[org.slug, row.pk])


def test_empty_page_says_nothing_is_allowed(client: Client, org: Organization) -> None:
    response = client.get(page_url(org))

    assert response.status_code == 200
    content = response.content.decode()
    assert "No origin is allowed" in content
    assert "Allow origin" in content


def test_tokens_page_links_to_the_origins(client: Client, org: Organization) -> None:
    content = client.get(reverse("portal-tokens", args=[org.slug])).content.decode()

    assert page_url(org) in content


def test_add_an_origin(client: Client, org: Organization, owner: Membership) -> None:
    response = client.post(
        page_url(org), {"origin": " https://OHIF.stmary.example ", "description": "OHIF"}
    )

    assert response.status_code == 302
    assert response["Location"] == page_url(org) + "#main"
    row = CorsOrigin.objects.for_org(org).get()
    assert (row.origin, row.description) == ("https://ohif.stmary.example", "OHIF")
    event = AuditEvent.objects.for_org(org).get(action="cors_origin.added")
    assert event.actor_user == owner.user
    assert event.details == {"origin": "https://ohif.stmary.example", "description": "OHIF"}
    page = client.get(page_url(org)).content.decode()
    assert "https://ohif.stmary.example" in page
    assert "may now call the APIs" in page


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("https://ohif.stmary.example/viewer/", "no path"),
        ("https://*.stmary.example", "Wildcards"),
        ("file://ohif", "Only http and https"),
        ("", "This field is required"),
    ],
)
def test_bad_origin_is_refused_with_the_reason_and_nothing_saved(
    client: Client, org: Organization, origin: str, reason: str
) -> None:
    response = client.post(page_url(org), {"origin": origin})

    assert response.status_code == 400
    assert reason in response.content.decode()
    assert not CorsOrigin.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="cors_origin.").exists()


def test_duplicate_origin_is_refused(client: Client, org: Organization) -> None:
    client.post(page_url(org), {"origin": "https://ohif.stmary.example"})

    response = client.post(page_url(org), {"origin": "https://ohif.stmary.example:443"})

    assert response.status_code == 409
    assert "already allowed" in response.content.decode()
    assert CorsOrigin.objects.for_org(org).count() == 1


def test_remove_an_origin(client: Client, org: Organization) -> None:
    row = services.cors_origin_add(
        org=org, actor=Actor.system("tests"), origin="https://ohif.stmary.example"
    )

    response = client.post(remove_url(org, row))

    assert response.status_code == 302
    assert not CorsOrigin.objects.filter(pk=row.pk).exists()
    event = AuditEvent.objects.for_org(org).get(action="cors_origin.removed")
    assert event.details == {"origin": "https://ohif.stmary.example"}
    assert client.get(remove_url(org, row)).status_code == 405


@pytest.mark.parametrize("role", [Role.MEMBER, Role.BILLING, Role.AUDITOR])
def test_only_owners_and_admins_see_or_change_the_origins(
    org: Organization, make_member: Callable[..., Membership], role: str
) -> None:
    row = services.cors_origin_add(
        org=org, actor=Actor.system("tests"), origin="https://ohif.stmary.example"
    )
    client = Client()
    client.force_login(make_member(org, role).user)

    assert client.get(page_url(org)).status_code == 403
    assert client.post(page_url(org), {"origin": "https://x.example"}).status_code == 403
    assert client.post(remove_url(org, row)).status_code == 403
    assert list(CorsOrigin.objects.values_list("origin", flat=True)) == [row.origin]


def test_admin_may_manage_the_origins(
    org: Organization, make_member: Callable[..., Membership]
) -> None:
    client = Client()
    client.force_login(make_member(org, Role.ADMIN).user)

    assert client.get(page_url(org)).status_code == 200
    assert client.post(page_url(org), {"origin": "https://x.example"}).status_code == 302


def test_another_organization_cannot_see_or_remove_the_origins(
    client: Client, org: Organization, other_org: Organization
) -> None:
    theirs = services.cors_origin_add(
        org=other_org, actor=Actor.system("tests"), origin="https://pacs.other.example"
    )

    assert client.get(page_url(other_org)).status_code == 404
    assert client.post(page_url(other_org), {"origin": "https://x.example"}).status_code == 404
    # Their origin's id under our own organization: 404 too, and nothing changes.
    assert client.post(remove_url(org, theirs)).status_code == 404
    assert CorsOrigin.objects.filter(pk=theirs.pk).exists()
    assert "pacs.other.example" not in client.get(page_url(org)).content.decode()
