"""The beat job that finalizes ended months: one task per organization, each safe to rerun."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.utils import timezone

from billing import services, tasks
from billing.metering import storage_delta
from billing.meters import GIB
from billing.models import Invoice
from billing.rollups import rollup_run
from saas.celery import app
from tenants.models import Organization

pytestmark = pytest.mark.django_db

APRIL = datetime(2026, 4, 1, tzinfo=UTC)
# Three days of grace after April: its invoice is due from May 4th.
NOW = datetime(2026, 5, 4, 1, tzinfo=UTC)


@pytest.fixture
def april_usage(org: Organization, other_org: Organization, settings: Any, monkeypatch) -> None:
    settings.BILLING_GRACE_DAYS = 3
    for one in (org, other_org):
        storage_delta(org=one, tier="hot", delta_bytes=GIB, at=APRIL, idempotency_key="hot")
    rollup_run(now=datetime(2026, 5, 1, tzinfo=UTC))
    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def first_org_fails(org: Organization, monkeypatch) -> None:
    real = services.invoice_compute

    def compute(*, org: Organization, period_start: datetime) -> Any:
        if org.slug == "st-mary":
            raise RuntimeError("pricing data unreadable")
        return real(org=org, period_start=period_start)

    monkeypatch.setattr(services, "invoice_compute", compute)


def finalized(org: Organization) -> list[datetime]:
    return list(
        Invoice.objects.for_org(org)
        .filter(status=Invoice.Status.FINALIZED)
        .values_list("period_start", flat=True)
    )


def test_beat_queues_one_finalization_per_organization_with_usage(
    org, other_org, april_usage, monkeypatch
):
    Organization.objects.create(name="Idle Clinic", slug="idle")  # no usage, nothing to invoice
    queued: list[tuple[int, ...]] = []
    monkeypatch.setattr(tasks.billing_finalize_due, "apply_async", lambda args: queued.append(args))

    assert tasks.billing_finalize_due() == 2

    assert queued == [(org.pk,), (other_org.pk,)]


def test_one_organizations_failed_finalization_does_not_stop_anothers(
    org, other_org, april_usage, first_org_fails, monkeypatch
):
    queued: list[tuple[int, ...]] = []
    monkeypatch.setattr(tasks.billing_finalize_due, "apply_async", lambda args: queued.append(args))
    tasks.billing_finalize_due()

    # Each queued message runs on its own, as a worker runs it.
    for (org_id,) in queued:
        if org_id == org.pk:
            with pytest.raises(RuntimeError):
                tasks.billing_finalize_due(org_id)
        else:
            assert tasks.billing_finalize_due(org_id) == 1

    assert finalized(org) == []
    assert finalized(other_org) == [APRIL]


def test_finalizing_every_organization_in_one_run_skips_a_failing_one(
    org, other_org, april_usage, first_org_fails
):
    created = services.invoices_finalize_due()

    assert [invoice.organization_id for invoice in created] == [other_org.pk]
    assert finalized(other_org) == [APRIL]


def test_running_the_beat_job_twice_finalizes_each_month_once(org, other_org, april_usage):
    tasks.billing_finalize_due()
    tasks.billing_finalize_due()
    assert tasks.billing_finalize_due(org.pk) == 0

    assert finalized(org) == [APRIL]
    assert finalized(other_org) == [APRIL]


def test_a_closed_organization_is_not_finalized_by_a_message_queued_before_it_closed(
    org, april_usage
):
    Organization.objects.filter(pk=org.pk).update(status=Organization.Status.CLOSED)

    assert tasks.billing_finalize_due(org.pk) == 0
    assert finalized(org) == []


def test_the_beat_schedule_still_names_the_task():
    assert tasks.billing_finalize_due.name == "billing.tasks.billing_finalize_due"
    assert app.conf.beat_schedule["billing-finalize"]["task"] == tasks.billing_finalize_due.name
