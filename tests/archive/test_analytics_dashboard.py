"""The dashboard's archive overview: bytes per tier (now and over time), moves and restores in
progress, and who sees it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from archive.locations.selectors import location_primary
from archive.models import Instance, RestoreRequest, TierMove
from billing.metering import storage_delta
from billing.rollups import rollup_run
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.archive.analytics_helpers import add_study

pytestmark = pytest.mark.django_db

MIB = 2**20


@pytest.fixture
def archive_org(org: Organization) -> Organization:
    now = timezone.now()
    add_study(org, study_date=now.date(), received=now, series=[("CT", 3, 2 * MIB)])
    cold = add_study(
        org, study_date=now.date(), received=now, series=[("MR", 2, 5 * MIB)], tier="cold"
    )
    location = location_primary(org)
    for instance in Instance.objects.for_org(org).filter(study=cold)[:1]:
        TierMove.objects.create(
            organization=org,
            instance=instance,
            study=cold,
            from_tier="cold",
            to_tier="archive",
            from_location=location,
            to_location=location,
            size_bytes=instance.size_bytes,
            state=TierMove.State.COPYING,
        )
    done = Instance.objects.for_org(org).filter(study=cold).order_by("id").last()
    assert done is not None
    TierMove.objects.create(
        organization=org,
        instance=done,
        study=cold,
        from_tier="hot",
        to_tier="cold",
        from_location=location,
        to_location=location,
        size_bytes=1,
        state=TierMove.State.DONE,
    )
    RestoreRequest.objects.create(
        organization=org,
        scope=RestoreRequest.Scope.STUDY,
        study=cold,
        days=7,
        bytes_total=10 * MIB,
        timeout_at=now + timedelta(hours=72),
    )
    RestoreRequest.objects.create(
        organization=org,
        scope=RestoreRequest.Scope.STUDY,
        study=cold,
        days=7,
        bytes_total=MIB,
        timeout_at=now,
        state=RestoreRequest.State.READY,
    )
    storage_delta(
        org=org, tier="hot", delta_bytes=6 * MIB, at=now - timedelta(days=3), idempotency_key="t:1"
    )
    storage_delta(
        org=org,
        tier="cold",
        delta_bytes=10 * MIB,
        at=now - timedelta(days=2),
        idempotency_key="t:2",
    )
    rollup_run(now=now)
    return org


def _dashboard(org: Organization, make_member: Callable[..., Membership], role: str) -> str:
    client = Client()
    client.force_login(make_member(org, role).user)
    response = client.get(f"/o/{org.slug}/")
    assert response.status_code == 200
    return response.content.decode()


def test_archive_overview(
    archive_org: Organization, make_member: Callable[..., Membership]
) -> None:
    page = _dashboard(archive_org, make_member, Role.OWNER)
    assert 'id="archive-overview"' in page
    assert "16 MiB stored" in page
    overview = page[page.index('id="archive-overview"') :]
    assert '<li class="stat" data-tier="hot">' in overview and "6 MiB" in overview
    assert "10 MiB" in overview
    moves = overview[overview.index('id="moves-in-progress"') :]
    assert '<span class="stat-value">1</span>' in moves[:300] and "5 MiB" in moves[:300]
    restores = overview[overview.index('id="restores-in-progress"') :]
    assert '<span class="stat-value">1</span>' in restores[:300] and "10 MiB" in restores[:300]
    # Bytes per tier over time: the ledger's rollups as a stacked chart.
    assert "Bytes stored per tier at the end of each day" in overview
    assert "/archive/analytics/" in overview


def test_no_archive_overview_without_image_access(
    archive_org: Organization, make_member: Callable[..., Membership]
) -> None:
    assert 'id="archive-overview"' not in _dashboard(archive_org, make_member, Role.BILLING)


def test_other_organizations_moves_do_not_count(
    archive_org: Organization, other_org: Organization, make_member: Callable[..., Membership]
) -> None:
    page = _dashboard(other_org, make_member, Role.OWNER)
    moves = page[page.index('id="moves-in-progress"') :]
    assert '<span class="stat-value">0</span>' in moves[:300]
    assert "No storage recorded" in page
