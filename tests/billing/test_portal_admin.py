"""Platform staff's admin for billing: every organization's records, revenue per month, and the
invoice actions that go through billing.services (audited)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import (
    Budget,
    BudgetAlert,
    CreditNote,
    Invoice,
    PricePlan,
    Rollup,
    StorageDelta,
    Subscription,
    UsageEvent,
)
from billing.rollups import rollup_run
from billing.services import (
    budget_set,
    credit_note_create,
    invoice_finalize,
    invoice_void,
    subscription_change,
)
from tenants.context import Actor
from tenants.models import AuditEvent, Organization
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
STAFF_EMAIL = "ops@strata.example"


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


@pytest.fixture
def staff_client(client: Client) -> Client:
    staff: Any = UserFactory(
        email=STAFF_EMAIL, username=STAFF_EMAIL, is_staff=True, is_superuser=True
    )
    client.force_login(staff)
    return client


def finalize(org: Organization, month: int, egress_gib: int) -> Invoice:
    storage_delta(
        org=org,
        tier="hot",
        delta_bytes=10 * GIB,
        at=at(2026, month, 1),
        idempotency_key=f"h{month}",
    )
    record_usage(
        org=org,
        meter="egress.bytes",
        quantity=egress_gib * GIB,
        at=at(2026, month, 10),
        idempotency_key=f"e{month}",
    )
    rollup_run(now=at(2026, month + 1, 1))
    return invoice_finalize(
        org=org, period_start=at(2026, month, 1), actor=SYSTEM, now=at(2026, month + 1, 2)
    )


@pytest.fixture
def invoice(org: Organization) -> Invoice:
    return finalize(org, 4, 150)  # 4.73 USD


@pytest.fixture
def records(org: Organization, invoice: Invoice) -> None:
    budget_set(org=org, monthly_amount="100", thresholds=[50], actor=SYSTEM)
    BudgetAlert.objects.create(
        organization=org,
        month=at(2026, 4, 1).date(),
        threshold=50,
        kind=BudgetAlert.Kind.ACTUAL,
        amount=Decimal("60.00"),
        budget_amount=Decimal("100.00"),
    )
    credit_note_create(
        org=org, invoice=invoice, amount=Decimal("1.00"), reason="Goodwill", actor=SYSTEM
    )
    plan = PricePlan.objects.get(is_default=True)
    subscription_change(org=org, plan=plan, starts_at=at(2026, 6, 1), actor=SYSTEM)


MODELS = [
    PricePlan,
    Subscription,
    Invoice,
    CreditNote,
    Budget,
    BudgetAlert,
    Rollup,
    UsageEvent,
    StorageDelta,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_staff_see_every_changelist_and_object(
    model: type, staff_client: Client, records: None
) -> None:
    meta = model._meta  # type: ignore[attr-defined]
    changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    assert staff_client.get(changelist).status_code == 200
    obj = model.objects.order_by("pk").first()  # type: ignore[attr-defined]
    change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    response = staff_client.get(change)
    assert response.status_code == 200
    # Read-only: no save button, no add or delete.
    assert b'name="_save"' not in response.content
    add = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
    assert staff_client.get(add).status_code == 403
    delete = reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[obj.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403


def test_metering_rows_cannot_be_changed_in_admin(staff_client: Client, records: None) -> None:
    event = UsageEvent.objects.first()
    assert event is not None
    url = reverse("admin:billing_usageevent_change", args=[event.pk])
    response = staff_client.post(url, {"quantity": "1"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.quantity == 150 * GIB


def test_admin_is_for_staff_only(client: Client, owner: object, records: None) -> None:
    client.force_login(owner.user)  # type: ignore[attr-defined]
    response = client.get(reverse("admin:billing_invoice_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_invoice_changelist_shows_revenue_per_month(
    staff_client: Client, org: Organization, other_org: Organization, records: None
) -> None:
    finalize(other_org, 4, 250)  # 13.73 USD
    void = finalize(other_org, 5, 110)
    invoice_void(org=other_org, invoice=void, reason="Wrong plan", actor=SYSTEM)

    response = staff_client.get(reverse("admin:billing_invoice_changelist"))
    body = response.content.decode()
    summary = response.context["revenue_summary"]
    assert summary == [
        {
            "period_start": at(2026, 4, 1),
            "currency": "USD",
            "invoices": 2,
            "total": Decimal("18.46"),
            "credited": Decimal("1.00"),
            "net": Decimal("17.46"),
        }
    ]  # May's only invoice is void: no revenue
    assert 'id="revenue-summary"' in body
    assert "Revenue per month" in body
    assert "2026-04" in body
    assert "17.46" in body

    filtered = staff_client.get(
        reverse("admin:billing_invoice_changelist"), {"organization__id__exact": other_org.pk}
    )
    assert filtered.context["revenue_filtered"] is True
    assert [row["total"] for row in filtered.context["revenue_summary"]] == [Decimal("13.73")]


def test_void_action_asks_for_a_reason_then_voids_through_the_service(
    staff_client: Client, org: Organization, invoice: Invoice
) -> None:
    changelist = reverse("admin:billing_invoice_changelist")
    selection = {"action": "void_invoices", "_selected_action": [invoice.pk]}

    ask = staff_client.post(changelist, {**selection, "index": "0"})
    assert ask.status_code == 200
    assert b"Void 1 invoice" in ask.content
    assert invoice.number.encode() in ask.content

    missing = staff_client.post(changelist, {**selection, "apply": "1", "reason": ""})
    assert missing.status_code == 400
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED

    done = staff_client.post(changelist, {**selection, "apply": "1", "reason": "Duplicate"})
    assert done.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert invoice.void_reason == "Duplicate"
    event = AuditEvent.objects.for_org(org).get(action="invoice.voided")
    assert event.actor_label == STAFF_EMAIL

    again = staff_client.post(
        changelist, {**selection, "apply": "1", "reason": "Again"}, follow=True
    )
    assert b"already void" in again.content


def test_credit_note_action_issues_through_the_service(
    staff_client: Client, org: Organization, invoice: Invoice
) -> None:
    changelist = reverse("admin:billing_invoice_changelist")
    selection = {"action": "issue_credit_note", "_selected_action": [invoice.pk]}

    too_much = staff_client.post(
        changelist, {**selection, "apply": "1", "amount": "10.00", "reason": "Outage"}
    )
    assert too_much.status_code == 400
    assert b"remain creditable" in too_much.content
    assert not CreditNote.objects.exists()

    done = staff_client.post(
        changelist, {**selection, "apply": "1", "amount": "2.50", "reason": "Outage"}
    )
    assert done.status_code == 302
    note = CreditNote.objects.get()
    assert (note.invoice_id, note.amount, note.reason) == (invoice.pk, Decimal("2.50"), "Outage")
    assert note.created_by is not None and note.created_by.email == STAFF_EMAIL
    event = AuditEvent.objects.for_org(org).get(action="invoice.credit_note_issued")
    assert event.actor_label == STAFF_EMAIL


def test_credit_note_action_needs_exactly_one_invoice(
    staff_client: Client, org: Organization, invoice: Invoice
) -> None:
    second = finalize(org, 5, 120)
    response = staff_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": "issue_credit_note", "_selected_action": [invoice.pk, second.pk], "index": "0"},
        follow=True,
    )
    assert b"Select exactly one invoice" in response.content
    assert not CreditNote.objects.exists()
