"""The demo hospital's access history: studies over two years, reads, a first active policy."""

from __future__ import annotations

import pytest

from archive.analytics.curve import access_curve
from archive.analytics.simulator import simulate
from archive.demo import DEMO_ACTOR, INITIAL_POLICY, demo_access_history
from archive.models import AccessEvent, ArchiveSettings, Instance, Study
from tenants.models import Organization

pytestmark = pytest.mark.django_db


def test_demo_history_makes_the_curve_and_the_simulator_meaningful(org: Organization) -> None:
    result = demo_access_history(org=org, studies=40)
    assert result.studies == 40 and result.reads > 40 and result.policy == 1
    ages = sorted(s.created_at for s in Study.objects.for_org(org))
    assert (ages[-1] - ages[0]).days > 365  # spread over the past two years
    assert not Instance.objects.for_org(org).filter(received_at__gt=ages[-1]).exists()
    curve = access_curve(org=org)
    week, year = curve.point(7), curve.point(365)
    assert week is not None and year is not None and week.studies_read > 0
    assert (week.study_fraction or 0) > (year.study_fraction or 0)
    settings = ArchiveSettings.objects.get(organization=org)
    assert settings.active_policy is not None and settings.active_policy.rules == INITIAL_POLICY
    sim = simulate(org=org)
    active, hot = sim.scenario("active"), sim.scenario("all_hot")
    assert active is not None and hot is not None and active.total <= hot.total


def test_demo_history_is_idempotent(org: Organization) -> None:
    demo_access_history(org=org, studies=5)
    counts = (Study.objects.for_org(org).count(), AccessEvent.objects.for_org(org).count())
    again = demo_access_history(org=org, studies=5)
    assert again.skipped
    assert (Study.objects.for_org(org).count(), AccessEvent.objects.for_org(org).count()) == counts
    assert AccessEvent.objects.for_org(org).filter(actor_label=DEMO_ACTOR).exists()
