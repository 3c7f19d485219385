"""Who may read billing through the API: roles, token scopes, and other tenants (always 404)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Invoice
from billing.rollups import rollup_run
from billing.services import invoice_finalize
from tenants.context import Actor
from tenants.roles import Role, Scope

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")

# Every organization-scoped read; {invoice} and {line} are filled with the org's own ids.
READ_PATHS = [
    "usage/",
    "usage/export.csv",
    "usage/report.pdf",
    "invoices/",
    "invoices/draft/",
    "invoices/draft.csv",
    "invoices/draft.pdf",
    "invoices/{invoice}/",
    "invoices/{invoice}.csv",
    "invoices/{invoice}.pdf",
    "invoices/{invoice}/lines/{line}/rollups/",
    "budget/",
    "budget/alerts/",
    "price-plan/",
]
OBJECT_PATHS = [p for p in READ_PATHS if "{invoice}" in p]


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def invoice(org) -> Invoice:
    storage_delta(org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="h")
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 2), idempotency_key="e"
    )
    rollup_run(now=at(2026, 5, 1))
    return invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM, now=at(2026, 5, 2))


def fill(path: str, invoice: Invoice) -> str:
    return path.format(invoice=invoice.pk, line=invoice.lines.order_by("position")[0].pk)


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR])
def test_billing_roles_and_auditors_read_usage_and_invoices(
    api_client, org, make_member, invoice, role, path
):
    api_client.force_login(make_member(org, role).user)
    response = api_client.get(f"/api/v1/o/{org.slug}/{fill(path, invoice)}")
    assert response.status_code == 200, response.content[:300]


@pytest.mark.parametrize("path", READ_PATHS)
def test_plain_member_gets_403_naming_the_permission(api_client, org, make_member, invoice, path):
    api_client.force_login(make_member(org, Role.MEMBER).user)
    response = api_client.get(f"/api/v1/o/{org.slug}/{fill(path, invoice)}")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert error["fields"]["permission"] == ["invoices.view"]
    assert "invoices.view" in error["message"]


@pytest.mark.parametrize("path", READ_PATHS)
def test_usage_read_token_reads(token_client, org, invoice, path):
    client = token_client(org, [Scope.USAGE_READ])
    assert client.get(f"/api/v1/{fill(path, invoice)}").status_code == 200


@pytest.mark.parametrize("path", READ_PATHS)
def test_dicom_read_token_gets_403_naming_the_scope(token_client, org, invoice, path):
    client = token_client(org, [Scope.DICOM_READ])
    response = client.get(f"/api/v1/{fill(path, invoice)}")
    assert response.status_code == 403
    assert "usage:read" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", OBJECT_PATHS)
def test_other_tenants_token_gets_404_for_our_invoice(token_client, other_org, invoice, path):
    client = token_client(other_org)
    response = client.get(f"/api/v1/{fill(path, invoice)}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", READ_PATHS)
def test_member_of_another_organization_gets_404_at_our_slug(
    api_client, org, other_org, make_member, invoice, path
):
    api_client.force_login(make_member(other_org, Role.OWNER).user)
    response = api_client.get(f"/api/v1/o/{org.slug}/{fill(path, invoice)}")
    assert response.status_code == 404


@pytest.mark.parametrize("path", OBJECT_PATHS)
def test_our_invoice_id_under_the_other_organizations_slug_is_404(
    api_client, org, other_org, make_member, invoice, path
):
    # An owner of both organizations still only sees an invoice under its own organization.
    membership = make_member(other_org, Role.OWNER, email="both@example.org")
    make_member(org, Role.OWNER, email="both@example.org")
    api_client.force_login(membership.user)
    response = api_client.get(f"/api/v1/o/{other_org.slug}/{fill(path, invoice)}")
    assert response.status_code == 404


def test_a_line_of_another_invoice_is_404(token_client, org, invoice):
    record_usage(
        org=org, meter="egress.bytes", quantity=GIB, at=at(2026, 5, 2), idempotency_key="may"
    )
    rollup_run(now=at(2026, 6, 1))
    may = invoice_finalize(org=org, period_start=at(2026, 5, 1), actor=SYSTEM, now=at(2026, 6, 2))
    client = token_client(org)
    path = f"/api/v1/invoices/{invoice.pk}/lines/{may.lines.order_by('position')[0].pk}/rollups/"
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", READ_PATHS)
def test_anonymous_caller_gets_401(api_client, org, invoice, path):
    response = api_client.get(f"/api/v1/o/{org.slug}/{fill(path, invoice)}")
    assert response.status_code == 401


def test_invoice_ids_must_be_integers(token_client, org):
    assert token_client(org).get("/api/v1/invoices/abc/").status_code == 404
