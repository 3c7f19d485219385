"""Platform staff endpoints: plans, subscriptions, voids and credit notes. Staff sessions only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.invoicing import invoice_compute
from billing.metering import record_usage
from billing.meters import GIB
from billing.models import CreditNote, Invoice, PricePlan, Subscription
from billing.rollups import rollup_run
from billing.services import invoice_finalize
from tenants.context import Actor
from tenants.roles import Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
PLAN = {
    "code": "enterprise",
    "name": "Enterprise",
    "currency": "eur",
    "monthly_minimum": "1000.00",
    "prices": [
        {"meter": "storage", "tier": "hot", "model": "per_unit", "unit_price": "0.02"},
        {
            "meter": "egress.bytes",
            "model": "graduated",
            "included_quantity": "500",
            "tiers": [
                {"up_to": "1000", "unit_price": "0.05"},
                {"up_to": None, "unit_price": "0.04"},
            ],
        },
    ],
}


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def staff(api_client):
    api_client.force_login(UserFactory(email="ops@strata.example", is_staff=True))
    return api_client


@pytest.fixture
def invoice(org) -> Invoice:
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 2), idempotency_key="e"
    )
    rollup_run(now=at(2026, 5, 1))
    return invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM, now=at(2026, 5, 2))


def platform_calls(org, invoice) -> list[tuple[str, str, dict]]:
    return [
        ("get", "/api/v1/platform/plans/", {}),
        ("post", "/api/v1/platform/plans/", PLAN),
        (
            "post",
            f"/api/v1/platform/organizations/{org.pk}/subscription/",
            {"plan_code": "standard", "starts_at": "2026-06-01T00:00:00Z"},
        ),
        ("post", f"/api/v1/platform/invoices/{invoice.pk}/void/", {"reason": "wrong plan"}),
        (
            "post",
            f"/api/v1/platform/invoices/{invoice.pk}/credit-notes/",
            {"amount": "1.00", "reason": "goodwill"},
        ),
    ]


def test_staff_creates_and_lists_plans(staff):
    response = staff.post("/api/v1/platform/plans/", PLAN, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["code"], body["currency"], body["monthly_minimum"]) == (
        "enterprise",
        "EUR",
        "1000.00",
    )
    assert [(p["meter"], p["tier"], p["model"]) for p in body["prices"]] == [
        ("egress.bytes", "", "graduated"),
        ("storage", "hot", "per_unit"),
    ]
    listed = staff.get("/api/v1/platform/plans/").json()["results"]
    assert [p["code"] for p in listed] == ["enterprise", "standard"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": "standard"}, "code"),
        ({"currency": "euro"}, "currency"),
        ({"prices": [{"meter": "teleport"}]}, "prices.meter"),
        ({"prices": [{"meter": "storage", "model": "graduated"}]}, "tiers"),
        ({"prices": [{"meter": "egress.bytes", "unit_price": "-1"}]}, "unit_price"),
        ({"prices": [{"meter": "egress.bytes"}, {"meter": "egress.bytes"}]}, "prices"),
    ],
)
def test_bad_plans_are_400_and_nothing_is_written(staff, change, field):
    before = PricePlan.objects.count()
    response = staff.post("/api/v1/platform/plans/", {**PLAN, **change}, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert PricePlan.objects.count() == before


def test_staff_changes_an_organizations_plan_from_an_hour(staff, org):
    staff.post("/api/v1/platform/plans/", PLAN, format="json")
    response = staff.post(
        f"/api/v1/platform/organizations/{org.pk}/subscription/",
        {"plan_code": "enterprise", "starts_at": "2026-04-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["plan_code"] == "enterprise"
    assert Subscription.objects.for_org(org).get().plan.code == "enterprise"
    assert invoice_compute(org=org, period_start=at(2026, 4, 1)).currency == "EUR"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"plan_code": "nope", "starts_at": "2026-04-01T00:00:00Z"}, "plan_code"),
        ({"plan_code": "standard", "starts_at": "2026-04-01T00:00:00"}, "starts_at"),
        ({"plan_code": "standard", "starts_at": "2026-04-01T00:30:00Z"}, "starts_at"),
        ({"plan_code": "standard"}, "starts_at"),
    ],
)
def test_bad_subscription_changes_are_400(staff, org, payload, field):
    response = staff.post(
        f"/api/v1/platform/organizations/{org.pk}/subscription/", payload, format="json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not Subscription.objects.exists()


def test_a_plan_change_into_an_invoiced_month_is_409(staff, org, invoice):
    response = staff.post(
        f"/api/v1/platform/organizations/{org.pk}/subscription/",
        {"plan_code": "standard", "starts_at": "2026-04-15T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "period_finalized"


def test_subscription_for_an_unknown_organization_is_404(staff):
    response = staff.post(
        "/api/v1/platform/organizations/999999/subscription/",
        {"plan_code": "standard", "starts_at": "2026-04-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 404


def test_staff_voids_an_invoice_once(staff, invoice):
    path = f"/api/v1/platform/invoices/{invoice.pk}/void/"
    response = staff.post(path, {"reason": "wrong plan"}, format="json")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["void_reason"]) == ("void", "wrong plan")
    again = staff.post(path, {"reason": "again"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_void"


def test_void_needs_a_reason(staff, invoice):
    response = staff.post(
        f"/api/v1/platform/invoices/{invoice.pk}/void/", {"reason": "  "}, format="json"
    )
    assert response.status_code == 400
    assert "reason" in response.json()["error"]["fields"]
    assert Invoice.objects.get(pk=invoice.pk).status == "finalized"


def test_staff_issues_credit_notes_up_to_the_invoice_total(staff, invoice):
    path = f"/api/v1/platform/invoices/{invoice.pk}/credit-notes/"
    response = staff.post(path, {"amount": "4.00", "reason": "goodwill"}, format="json")
    assert response.status_code == 201
    assert response.json()["amount"] == "4.00"
    assert response.json()["invoice"] == invoice.number
    too_much = staff.post(path, {"amount": "1.00", "reason": "more"}, format="json")
    assert too_much.status_code == 400  # 4.50 invoiced, 4.00 already credited
    assert "amount" in too_much.json()["error"]["fields"]
    assert CreditNote.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"amount": "-1", "reason": "x"}, "amount"),
        ({"amount": "0", "reason": "x"}, "amount"),
        ({"amount": "1.00"}, "reason"),
    ],
)
def test_bad_credit_notes_are_400(staff, invoice, payload, field):
    response = staff.post(
        f"/api/v1/platform/invoices/{invoice.pk}/credit-notes/", payload, format="json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not CreditNote.objects.exists()


def test_credit_note_on_a_void_invoice_is_409(staff, invoice):
    staff.post(f"/api/v1/platform/invoices/{invoice.pk}/void/", {"reason": "x"}, format="json")
    response = staff.post(
        f"/api/v1/platform/invoices/{invoice.pk}/credit-notes/",
        {"amount": "1.00", "reason": "goodwill"},
        format="json",
    )
    assert response.status_code == 409


@pytest.mark.parametrize("suffix", ["void/", "credit-notes/"])
def test_unknown_invoice_is_404(staff, suffix):
    response = staff.post(
        f"/api/v1/platform/invoices/999999/{suffix}", {"reason": "x", "amount": "1"}, format="json"
    )
    assert response.status_code == 404


@pytest.mark.parametrize("call", range(5))
def test_non_staff_owner_gets_403_and_nothing_changes(api_client, org, owner, invoice, call):
    method, path, payload = platform_calls(org, invoice)[call]
    api_client.force_login(owner.user)
    response = getattr(api_client, method)(path, payload, format="json")
    assert response.status_code == 403
    assert "Strata staff" in response.json()["error"]["message"]
    assert PricePlan.objects.count() == 1
    assert not Subscription.objects.exists()
    assert Invoice.objects.get(pk=invoice.pk).status == "finalized"
    assert not CreditNote.objects.exists()


@pytest.mark.parametrize("call", range(5))
def test_tokens_never_reach_the_platform_api(token_client, org, invoice, call):
    method, path, payload = platform_calls(org, invoice)[call]
    client = token_client(org)  # every scope, admin included
    response = getattr(client, method)(path, payload, format="json")
    assert response.status_code == 403
    assert PricePlan.objects.count() == 1
    assert not CreditNote.objects.exists()


@pytest.mark.parametrize("call", range(5))
def test_anonymous_platform_calls_are_401(api_client, org, invoice, call):
    method, path, payload = platform_calls(org, invoice)[call]
    assert getattr(api_client, method)(path, payload, format="json").status_code == 401


def test_platform_api_also_answers_under_an_organization_slug(staff, org):
    response = staff.get(f"/api/v1/o/{org.slug}/platform/plans/")
    assert response.status_code == 200


def test_staff_without_membership_cannot_read_an_organizations_invoices(staff, org, invoice):
    response = staff.get(f"/api/v1/o/{org.slug}/invoices/{invoice.pk}/")
    assert response.status_code == 404


def test_a_staff_user_who_is_also_an_owner_uses_both_apis(api_client, org, make_member):
    membership = make_member(org, Role.OWNER, email="owner-staff@stmary.example")
    membership.user.is_staff = True
    membership.user.save()
    api_client.force_login(membership.user)
    assert api_client.get("/api/v1/platform/plans/").status_code == 200
    assert api_client.get(f"/api/v1/o/{org.slug}/invoices/").status_code == 200
    assert api_client.get(f"/api/v1/o/{org.slug}/usage/").status_code == 200
