"""The consistency check after the demo seed: the demo organizations' index, storage ledger and
objects must agree, as they must in production."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from tenants.models import Organization
from tests.archive.reconcile_helpers import assert_reconciled

pytestmark = pytest.mark.django_db


def demo_organizations() -> list[Organization]:
    demo = list(Organization.objects.filter(slug__startswith="demo-").order_by("slug"))
    assert [o.slug for o in demo] == ["demo-hospital", "demo-imaging-center"]
    return demo


def test_the_demo_seed_reconciles() -> None:
    call_command("seed_demo", quiet=True, history_studies=4)
    for org in demo_organizations():
        assert_reconciled(org)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "Known difference (issue 15, 'one truth'): seed_usage records a simulated history's "
        "storage ledger deltas (tens of TB in hot, warm, cold and archive) for studies the index "
        "does not hold, so the demo hospital's ledger is far above its index and its stores "
        "(ledger_mismatch in every tier). Strict: this fails as soon as the demo's history is "
        "made of index rows, ledger deltas and objects together; then remove the mark."
    ),
)
def test_the_demo_with_its_usage_history_reconciles() -> None:
    """What ``make run`` seeds: the demo hospitals, then a usage history for the hospital."""
    call_command("seed_demo", quiet=True, history_studies=4)
    call_command("seed_usage", org="demo-hospital", months=1, stdout=io.StringIO())
    for org in demo_organizations():
        assert_reconciled(org)
