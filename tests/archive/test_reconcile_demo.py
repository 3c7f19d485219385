"""The consistency check after the demo seed: the demo organizations' index, storage ledger and
objects must agree, as they must in production."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.models import Organization
from tests.archive.reconcile_helpers import assert_reconciled

pytestmark = pytest.mark.django_db


def demo_organizations() -> list[Organization]:
    demo = list(Organization.objects.filter(slug__startswith="demo-").order_by("slug"))
    assert [o.slug for o in demo] == ["demo-hospital", "demo-imaging-center"]
    return demo


def test_the_demo_seed_reconciles() -> None:
    """What ``make run`` seeds: the demo hospitals, the hospital's year and today's images."""
    call_command("seed_demo", quiet=True, history_studies=4)
    for org in demo_organizations():
        assert_reconciled(org)
    call_command("seed_demo", quiet=True, history_studies=4)  # run again: nothing added
    for org in demo_organizations():
        assert_reconciled(org)


def test_seed_usage_never_puts_a_simulated_ledger_on_the_demo() -> None:
    """``make run`` seeds the demo alone; seed_usage refuses the hospital, whose year is its own."""
    call_command("seed_demo", quiet=True, history_studies=4)
    with pytest.raises(CommandError, match="never on top of an archive"):
        call_command("seed_usage", org="demo-hospital", months=1, stdout=io.StringIO())
    for org in demo_organizations():
        assert_reconciled(org)
