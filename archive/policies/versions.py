"""Versions of an organization's archive policy: every save is a new version, one version is
active (the one the planner applies), and each activation is audited."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import (
    QuerySet,
)

from archive.index.selectors import archive_settings_get
from archive.models import (
    ArchiveSettings,
    PolicyVersion,
)
from archive.policies.validate import rules_validate
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

# --- validation --------------------------------------------------------------------------------


# --- compilation to SQL ------------------------------------------------------------------------


# --- versions ----------------------------------------------------------------------------------


def policy_version_list(*, org: Organization) -> QuerySet[PolicyVersion]:
    return PolicyVersion.objects.for_org(org).select_related("author").order_by("-number")


def policy_version_get(*, org: Organization, number: int | str) -> PolicyVersion:
    try:
        return PolicyVersion.objects.for_org(org).get(number=int(number))
    except (PolicyVersion.DoesNotExist, ValueError, TypeError):
        raise NotFound("Policy version not found.") from None


def policy_active(*, org: Organization) -> PolicyVersion | None:
    return archive_settings_get(org=org).active_policy


def _activate_locked(
    *, org: Organization, actor: Actor, config: ArchiveSettings, version: PolicyVersion
) -> None:
    before = config.active_policy.number if config.active_policy else None
    config.active_policy = version
    config.save(update_fields=["active_policy"])
    audit_record(
        org=org,
        actor=actor,
        action="policy.activated",
        target=version,
        details={"number": version.number, "previous": before},
    )


def policy_save(
    *,
    org: Organization,
    actor: Actor,
    rules: Any,
    note: str = "",
    activate: bool = False,
) -> PolicyVersion:
    """Write the rules as the next version (n + 1), and make it the active one if asked.

    The settings row is locked while the number is taken, so two saves get two numbers.
    """
    normalized = rules_validate(org=org, rules=rules)
    note = (note or "").strip()
    if len(note) > 500:
        raise ValidationFailed(
            "The note is too long.", fields={"note": ["At most 500 characters."]}
        )
    with transaction.atomic():
        config, _ = ArchiveSettings.objects.select_for_update().get_or_create(organization=org)
        last = PolicyVersion.objects.for_org(org).order_by("-number").first()
        version = PolicyVersion.objects.create(
            organization=org,
            number=(last.number if last else 0) + 1,
            rules=normalized,
            note=note,
            author=actor.user if actor.user is not None and actor.user.pk else None,
            author_label=actor.label[:255],
        )
        audit_record(
            org=org,
            actor=actor,
            action="policy.version_created",
            target=version,
            details={"number": version.number, "rules": len(normalized), "note": note},
        )
        if activate:
            _activate_locked(org=org, actor=actor, config=config, version=version)
    return version


def policy_activate(*, org: Organization, actor: Actor, version: PolicyVersion) -> PolicyVersion:
    """Make ``version`` the one the engine applies. Its rules are checked again: the primary
    location or the legal minimum retention may have changed since it was written."""
    if version.organization_id != org.pk:
        raise NotFound("Policy version not found.")
    rules_validate(org=org, rules=version.rules)
    with transaction.atomic():
        config, _ = ArchiveSettings.objects.select_for_update().get_or_create(organization=org)
        if config.active_policy_id != version.pk:
            _activate_locked(org=org, actor=actor, config=config, version=version)
    return version


# --- preview -----------------------------------------------------------------------------------
