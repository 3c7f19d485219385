from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.services import token_authenticate

pytestmark = pytest.mark.django_db


def test_create_organization_and_token_print_secret_on_last_line():
    call_command(
        "create_organization",
        "riverside",
        name="Riverside Hospital",
        owner_email="cio@riverside.example",
    )
    org = Organization.objects.get(slug="riverside")
    assert Membership.objects.get(organization=org).user.email == "cio@riverside.example"
    out = StringIO()
    call_command(
        "create_token",
        org="riverside",
        name="pacs",
        scopes="dicom:read,dicom:write",
        stdout=out,
        stderr=StringIO(),
    )
    secret = out.getvalue().strip().splitlines()[-1]
    token = token_authenticate(raw=secret)
    assert token.organization == org
    assert token.scopes == ["dicom:read", "dicom:write"]
    assert (
        AuditEvent.objects.for_org(org)
        .filter(action="token.created", actor_label__contains="create_token")
        .exists()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"org": "missing", "name": "x", "scopes": "admin"}, "No organization"),
        ({"org": "st-mary", "name": "x", "scopes": "root"}, "Unknown scope"),
        ({"org": "st-mary", "name": "x", "scopes": "admin", "expires_at": "tomorrow"}, "ISO 8601"),
        (
            {"org": "st-mary", "name": "x", "scopes": "admin", "expires_at": "2001-01-01T00:00:00"},
            "future",
        ),
    ],
)
def test_create_token_bad_input(org, kwargs, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_token", **kwargs, stdout=StringIO(), stderr=StringIO())
    assert not ApiToken.objects.exists()


def test_create_organization_duplicate_slug(org):
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_organization", org.slug, name="Dup", owner_email="a@b.example")


def test_seed_demo_is_idempotent():
    call_command("seed_demo", quiet=True, history_studies=12)
    call_command("seed_demo", quiet=True, history_studies=12)
    assert Organization.objects.filter(slug__startswith="demo-").count() == 2
    owner = get_user_model().objects.get(email="owner@demo-hospital.example")
    assert owner.check_password("strata-demo-2026")
    assert Membership.objects.filter(user=owner).count() == 2


@pytest.mark.parametrize("count", [0, -5, 5001])
def test_seed_demo_refuses_a_history_size_out_of_range(count: int) -> None:
    with pytest.raises(CommandError, match="--history-studies must be between 1 and 5,000"):
        call_command("seed_demo", quiet=True, history_studies=count)
    assert not Organization.objects.filter(slug__startswith="demo-").exists()
