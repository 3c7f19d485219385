from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from django.core import mail

from billing.invoicing import invoice_compute
from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Budget, BudgetAlert, Invoice, InvoiceLine
from billing.rollups import rollup_run
from billing.services import (
    budget_check,
    budget_set,
    credit_note_create,
    invoice_finalize,
    invoice_void,
    invoices_finalize_due,
    plan_create,
    subscription_change,
)
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import WebhookDelivery
from tenants.services import webhook_endpoint_create

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def april_usage(org) -> None:
    storage_delta(
        org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="hot"
    )
    record_usage(
        org=org,
        meter="egress.bytes",
        quantity=150 * GIB,
        at=at(2026, 4, 10),
        idempotency_key="egress",
    )
    rollup_run(now=at(2026, 5, 1))


def test_draft_invoice_prices_storage_and_egress_with_the_default_plan(org):
    april_usage(org)
    draft = invoice_compute(org=org, period_start=at(2026, 4, 1))
    lines = {(ln.meter, ln.tier): ln for ln in draft.lines}
    hot = lines[("storage", "hot")]
    assert hot.quantity == D(10)  # 10 GiB for all 720 hours of April = 10 GiB-months
    assert hot.unit == "GiB-month"
    assert hot.amount == D("0.23")
    egress = lines[("egress.bytes", "")]
    assert egress.amount == D("4.50")  # 100 GiB included, 50 x 0.09
    assert draft.total == D("4.73")
    assert draft.currency == "USD"


def test_finalize_numbers_freezes_and_emits(org, receiver, django_capture_on_commit_callbacks):
    april_usage(org)
    webhook_endpoint_create(
        org=org, url=receiver.url, actor=SYSTEM, event_types=["invoice.finalized"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert invoice.number == "INV-2026-000001"
    assert invoice.total == sum(line.amount for line in invoice.lines.all())
    assert invoice.total == D("4.73")
    assert len(receiver.requests) == 1
    assert WebhookDelivery.objects.get().event.type == "invoice.finalized"
    with pytest.raises(Conflict) as err:
        invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert err.value.code == "already_finalized"
    invoice.total = D("1.00")
    with pytest.raises(PermissionError):
        invoice.save()
    line = invoice.lines.first()
    line.amount = D("0")
    with pytest.raises(PermissionError):
        line.save()


def test_numbers_are_sequential_across_organizations(org, other_org):
    april_usage(org)
    record_usage(
        org=other_org, meter="api.requests", quantity=5000, at=at(2026, 4, 3), idempotency_key="a"
    )
    rollup_run(now=at(2026, 5, 1))
    first = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    second = invoice_finalize(org=other_org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert (first.number, second.number) == ("INV-2026-000001", "INV-2026-000002")


def test_open_month_cannot_be_finalized(org):
    with pytest.raises(Conflict) as err:
        invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM, now=at(2026, 4, 20))
    assert err.value.code == "period_open"


def test_crash_during_finalization_leaves_no_invoice(org, monkeypatch):
    april_usage(org)

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(InvoiceLine.objects, "bulk_create", crash)
    with pytest.raises(RuntimeError):
        invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert not Invoice.objects.exists()
    monkeypatch.undo()
    invoice = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert invoice.number == "INV-2026-000001"  # the crashed attempt used no number


def test_late_event_before_finalization_updates_the_draft(org):
    april_usage(org)
    before = invoice_compute(org=org, period_start=at(2026, 4, 1)).total
    record_usage(
        org=org, meter="egress.bytes", quantity=10 * GIB, at=at(2026, 4, 28), idempotency_key="late"
    )
    rollup_run(now=at(2026, 5, 1))
    assert invoice_compute(org=org, period_start=at(2026, 4, 1)).total == before + D("0.90")


def test_late_event_after_finalization_is_an_adjustment_on_the_next_invoice(org):
    april_usage(org)
    april = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    record_usage(
        org=org, meter="egress.bytes", quantity=10 * GIB, at=at(2026, 4, 28), idempotency_key="late"
    )
    rollup_run(now=at(2026, 6, 1))
    april.refresh_from_db()
    assert april.total == D("4.73")  # frozen
    may = invoice_finalize(org=org, period_start=at(2026, 5, 1), actor=SYSTEM)
    adjustments = list(may.lines.filter(kind="adjustment"))
    assert [a.amount for a in adjustments] == [D("0.90")]
    assert "April 2026" in adjustments[0].description
    # not billed again on June's invoice
    rollup_run(now=at(2026, 7, 1))
    june = invoice_finalize(org=org, period_start=at(2026, 6, 1), actor=SYSTEM)
    assert not june.lines.filter(kind="adjustment").exists()


def test_mid_month_plan_change_prorates_by_time(org):
    premium = plan_create(
        code="flat",
        name="Flat",
        currency="USD",
        actor=SYSTEM,
        prices=[{"meter": "storage", "tier": "hot", "model": "per_unit", "unit_price": "0.046"}],
    )
    storage_delta(org=org, tier="hot", delta_bytes=30 * GIB, at=at(2026, 4, 1), idempotency_key="h")
    rollup_run(now=at(2026, 5, 1))
    subscription_change(org=org, plan=premium, starts_at=at(2026, 4, 16), actor=SYSTEM)
    draft = invoice_compute(org=org, period_start=at(2026, 4, 1))
    hot = [ln for ln in draft.lines if ln.meter == "storage"]
    # 30 GiB for 15 days = 15 GiB-months on each plan
    assert [(ln.plan_code, ln.quantity, ln.amount) for ln in hot] == [
        ("standard", D(15), D("0.35")),  # 15 x 0.023 = 0.345 -> 0.35
        ("flat", D(15), D("0.69")),
    ]


def test_minimum_commitment_tops_up(org):
    plan = plan_create(
        code="committed",
        name="Committed",
        currency="EUR",
        actor=SYSTEM,
        monthly_minimum=D("100.00"),
        prices=[{"meter": "egress.bytes", "model": "per_unit", "unit_price": "0.10"}],
    )
    subscription_change(org=org, plan=plan, starts_at=at(2026, 4, 1), actor=SYSTEM)
    record_usage(
        org=org, meter="egress.bytes", quantity=100 * GIB, at=at(2026, 4, 2), idempotency_key="e"
    )
    rollup_run(now=at(2026, 5, 1))
    draft = invoice_compute(org=org, period_start=at(2026, 4, 1))
    assert draft.currency == "EUR"
    assert draft.subtotal == D("10.00")
    assert draft.minimum_adjustment == D("90.00")
    assert draft.total == D("100.00")


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ([{"meter": "nope"}], "meter"),
        ([{"meter": "storage", "tier": "glacier"}], "tier"),
        ([{"meter": "storage", "model": "magic"}], "model"),
        ([{"meter": "storage", "model": "graduated"}], "tiers"),
        ([{"meter": "egress.bytes", "unit_price": "-1"}], "unit_price"),
        ([{"meter": "egress.bytes"}, {"meter": "egress.bytes"}], "prices"),
    ],
)
def test_bad_plans_are_refused(prices, field):
    with pytest.raises(ValidationFailed) as err:
        plan_create(code="bad", name="Bad", currency="USD", prices=prices, actor=SYSTEM)
    assert field in err.value.fields


def test_void_and_credit_note(org, owner):
    april_usage(org)
    invoice = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    note = credit_note_create(
        org=org, invoice=invoice, amount=D("1.00"), reason="goodwill", actor=SYSTEM
    )
    assert note.number.startswith("CN-")
    with pytest.raises(ValidationFailed):
        credit_note_create(
            org=org, invoice=invoice, amount=D("10.00"), reason="too much", actor=SYSTEM
        )
    with pytest.raises(ValidationFailed):
        invoice_void(org=org, invoice=invoice, reason="  ", actor=SYSTEM)
    invoice_void(org=org, invoice=invoice, reason="wrong plan", actor=SYSTEM)
    with pytest.raises(Conflict):
        invoice_void(org=org, invoice=invoice, reason="again", actor=SYSTEM)
    # the month can be reissued after a void
    reissued = invoice_finalize(org=org, period_start=at(2026, 4, 1), actor=SYSTEM)
    assert reissued.number == "INV-2026-000002"


def test_beat_job_finalizes_ended_months_after_grace(org):
    april_usage(org)
    from datetime import timedelta

    assert invoices_finalize_due(now=at(2026, 5, 2), grace=timedelta(days=3)) == []
    created = invoices_finalize_due(now=at(2026, 5, 4, 1), grace=timedelta(days=3))
    assert [i.period_start for i in created] == [at(2026, 4, 1)]
    assert invoices_finalize_due(now=at(2026, 5, 5), grace=timedelta(days=3)) == []


def test_budget_alerts_fire_once_per_threshold(
    org, owner, make_member, django_capture_on_commit_callbacks
):
    billing = make_member(org, "billing", email="finance@stmary.example")
    budget_set(org=org, monthly_amount="5.00", thresholds=[50, 80, 100], actor=SYSTEM)
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 2), idempotency_key="e"
    )  # 4.50
    rollup_run(now=at(2026, 4, 3))
    with django_capture_on_commit_callbacks(execute=True):
        fired = budget_check(org=org, now=at(2026, 4, 3))
    actual = sorted(a.threshold for a in fired if a.kind == "actual")
    assert actual == [50, 80]
    assert sorted(a.threshold for a in fired if a.kind == "forecast") == [50, 80, 100]
    assert {tuple(m.to) for m in mail.outbox} >= {(owner.user.email, billing.user.email)} or all(
        billing.user.email in m.to for m in mail.outbox
    )
    assert budget_check(org=org, now=at(2026, 4, 3, 5)) == []
    assert BudgetAlert.objects.for_org(org).count() == 5


@pytest.mark.parametrize(
    ("amount", "thresholds", "field"),
    [
        ("-5", [50], "monthly_amount"),
        ("abc", [50], "monthly_amount"),
        ("10", [], "thresholds"),
        ("10", ["x"], "thresholds"),
        ("10", [0], "thresholds"),
    ],
)
def test_bad_budgets_are_refused(org, amount, thresholds, field):
    with pytest.raises(ValidationFailed) as err:
        budget_set(org=org, monthly_amount=amount, thresholds=thresholds, actor=SYSTEM)
    assert field in err.value.fields
    assert not Budget.objects.exists()
