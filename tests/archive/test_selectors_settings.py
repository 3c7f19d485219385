"""The one way archive settings are read: ``archive_settings_get`` gives the organization's stored
row, or an unsaved row with the model's defaults, never another organization's settings."""

from __future__ import annotations

import pytest

from archive.index.selectors import archive_settings_get, archive_settings_org_ids_with_policy
from archive.models import ArchiveSettings, PolicyVersion
from tenants.models import Organization

pytestmark = pytest.mark.django_db

KNOBS = (
    "storage_quota_bytes",
    "active_policy_id",
    "retention_minimum_days",
    "trash_grace_days",
    "restore_days",
    "restore_timeout_hours",
    "moves_per_minute",
)


def _knobs(config: ArchiveSettings) -> dict[str, object]:
    return {name: getattr(config, name) for name in KNOBS}


@pytest.mark.parametrize("by_id", [False, True])
def test_without_a_stored_row_gives_the_model_defaults_unsaved(
    org: Organization, by_id: bool
) -> None:
    config = archive_settings_get(org=org.pk if by_id else org)

    assert config.pk is None
    assert config.organization_id == org.pk
    assert _knobs(config) == _knobs(ArchiveSettings())
    assert _knobs(config) == {
        "storage_quota_bytes": None,
        "active_policy_id": None,
        "retention_minimum_days": None,
        "trash_grace_days": 30,
        "restore_days": 7,
        "restore_timeout_hours": 72,
        "moves_per_minute": 6000,
    }
    assert config.active_policy is None
    assert not ArchiveSettings.objects.exists()


@pytest.mark.parametrize("by_id", [False, True])
def test_with_a_stored_row_gives_its_values(org: Organization, by_id: bool) -> None:
    version = PolicyVersion.objects.create(organization=org, number=1, rules=[])
    stored = ArchiveSettings.objects.create(
        organization=org,
        storage_quota_bytes=10 * 2**30,
        active_policy=version,
        retention_minimum_days=3650,
        trash_grace_days=7,
        restore_days=2,
        restore_timeout_hours=24,
        moves_per_minute=5,
    )

    config = archive_settings_get(org=org.pk if by_id else org)

    assert config.pk == stored.pk
    assert _knobs(config) == _knobs(stored)
    assert config.active_policy == version


def test_another_organizations_settings_are_never_returned(
    org: Organization, other_org: Organization
) -> None:
    ArchiveSettings.objects.create(
        organization=other_org, storage_quota_bytes=1, trash_grace_days=1, moves_per_minute=1
    )

    config = archive_settings_get(org=org)

    assert config.pk is None
    assert config.organization_id == org.pk
    assert (config.storage_quota_bytes, config.trash_grace_days, config.moves_per_minute) == (
        None,
        30,
        6000,
    )


def test_the_policy_beat_sees_only_active_organizations_with_an_active_policy(
    org: Organization, other_org: Organization
) -> None:
    suspended = Organization.objects.create(
        name="Closed Wing", slug="closed-wing", status=Organization.Status.SUSPENDED
    )
    for each in (org, suspended):
        version = PolicyVersion.objects.create(organization=each, number=1, rules=[])
        ArchiveSettings.objects.create(organization=each, active_policy=version)
    ArchiveSettings.objects.create(organization=other_org)

    assert archive_settings_org_ids_with_policy() == [org.pk]
