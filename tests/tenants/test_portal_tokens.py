"""API tokens page: create (secret shown once), validation, revoke."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role


@pytest.fixture
def client(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def tokens_url(org: Organization) -> str:
    return reverse("portal-tokens", args=[org.slug])


def test_created_token_secret_is_shown_once(
    client: Client, org: Organization, owner: Membership
) -> None:
    response = client.post(
        tokens_url(org), {"name": "Radiology PACS", "scopes": ["dicom:read", "dicom:write"]}
    )
    assert response.status_code == 302
    assert response["Location"] == tokens_url(org) + "#main"
    token = ApiToken.objects.for_org(org).get()
    assert token.name == "Radiology PACS"
    assert token.scopes == ["dicom:read", "dicom:write"]
    assert token.created_by == owner.user
    assert token.expires_at is None

    first = client.get(tokens_url(org))
    content = first.content.decode()
    secret = content.split('id="new-token-secret" class="secret-value">', 1)[1].split("</code>", 1)[
        0
    ]
    assert secret.startswith(f"strata_{token.prefix}_")
    assert "only time the secret is shown" in content
    assert "no-store" in first["Cache-Control"]
    # The secret shown is the real one.
    assert services.token_authenticate(raw=secret).pk == token.pk

    second = client.get(tokens_url(org))
    assert second.status_code == 200
    assert secret not in second.content.decode()
    assert "new-token-secret" not in second.content.decode()
    # The token itself stays listed, by prefix only.
    assert f"strata_{token.prefix}_…" in second.content.decode()


def test_token_creation_is_audited(client: Client, org: Organization, owner: Membership) -> None:
    client.post(tokens_url(org), {"name": "Billing export", "scopes": ["usage:read"]})
    event = AuditEvent.objects.for_org(org).get(action="token.created")
    assert event.actor_user == owner.user
    assert event.details["scopes"] == ["usage:read"]


def test_a_new_secret_is_not_shown_in_another_organization(
    client: Client, org: Organization, other_org: Organization, owner: Membership
) -> None:
    Membership.objects.create(user=owner.user, organization=other_org, role=Role.OWNER)
    client.post(tokens_url(org), {"name": "PACS", "scopes": ["dicom:read"]})
    assert "new-token-secret" not in client.get(tokens_url(other_org)).content.decode()
    assert "new-token-secret" in client.get(tokens_url(org)).content.decode()


def test_expiry_date_becomes_midnight_utc(client: Client, org: Organization) -> None:
    day = date.today() + timedelta(days=30)
    client.post(
        tokens_url(org), {"name": "Temp", "scopes": ["dicom:read"], "expires_at": day.isoformat()}
    )
    token = ApiToken.objects.for_org(org).get()
    assert token.expires_at == datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"name": "", "scopes": ["dicom:read"]}, "name", "This field is required."),
        ({"name": "x" * 101, "scopes": ["dicom:read"]}, "name", "at most 100 characters"),
        ({"name": "PACS"}, "scopes", "This field is required."),
        ({"name": "PACS", "scopes": ["root"]}, "scopes", "Select a valid choice."),
        (
            {"name": "PACS", "scopes": ["dicom:read"], "expires_at": "tomorrow"},
            "expires_at",
            "Enter a valid date.",
        ),
        (
            {
                "name": "PACS",
                "scopes": ["dicom:read"],
                "expires_at": (date.today() - timedelta(days=1)).isoformat(),
            },
            "expires_at",
            "The expiry must be in the future.",
        ),
    ],
)
def test_invalid_token_form_is_a_400_with_field_errors(
    data: dict[str, object], field: str, message: str, client: Client, org: Organization
) -> None:
    response = client.post(tokens_url(org), data)
    assert response.status_code == 400
    content = response.content.decode()
    assert f'id="id_{field}_error"' in content
    assert message in content
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.filter(action="token.created").exists()
    assert "new-token-secret" not in content


def test_token_list_shows_details(
    client: Client,
    org: Organization,
    owner: Membership,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    token, secret = make_token(org, ["usage:read"], name="Finance")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    content = client.get(tokens_url(org)).content.decode()
    assert "Finance" in content
    assert f"strata_{token.prefix}_…" in content
    assert "usage:read" in content
    assert "badge-active" in content
    assert secret not in content


def test_revoke_token(
    client: Client, org: Organization, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, _ = make_token(org)
    response = client.post(reverse("portal-token-revoke", args=[org.slug, token.pk]), follow=True)
    assert response.redirect_chain == [(tokens_url(org), 302)]
    assert "was revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.state == "revoked"
    assert AuditEvent.objects.for_org(org).filter(action="token.revoked").count() == 1
    # A revoked token has no revoke button any more.
    assert (
        reverse("portal-token-revoke", args=[org.slug, token.pk]) not in response.content.decode()
    )
