"""Every read of SCIM provisioning, scoped to one organization."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Max, Q, QuerySet

from tenants.models import ApiToken, AuditEvent, Membership, Organization, ScimGroup
from tenants.roles import Scope
from tenants.scim.errors import ScimError
from tenants.scim.filters import Comparison


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def scim_user_list(*, org: Organization, where: list[Comparison]) -> QuerySet[Membership]:
    qs = Membership.objects.for_org(org).select_related("user")
    for comparison in where:
        value = comparison.value
        if comparison.attribute in ("username", "emails.value", "emails"):
            qs = qs.filter(user__email__iexact=str(value)) if value is not None else qs.none()
        elif comparison.attribute == "externalid":
            qs = qs.filter(scim_external_id=str(value) if value is not None else "")
        elif comparison.attribute == "id":
            found = _uuid(value)
            qs = qs.filter(scim_id=found) if found else qs.none()
        elif comparison.attribute == "active":
            if not isinstance(value, bool):
                raise ScimError(400, "active is compared with true or false.", "invalidFilter")
            qs = qs.filter(deactivated_at__isnull=value)
    return qs.order_by("created_at", "id")


def scim_user_get(*, org: Organization, scim_id: str) -> Membership:
    """One member by SCIM id; an unknown id and another organization's answer the same 404."""
    found = _uuid(scim_id)
    membership = (
        Membership.objects.for_org(org).select_related("user").filter(scim_id=found).first()
        if found
        else None
    )
    if membership is None:
        raise ScimError(404, f"User {scim_id} not found.")
    return membership


def scim_users_by_ids(*, org: Organization, scim_ids: list[str]) -> list[Membership]:
    """The members named by ``scim_ids`` (a group's ``members[].value``), in order; an id that
    names no member of this organization is refused with its value."""
    wanted: list[uuid.UUID] = []
    for value in scim_ids:
        found = _uuid(value)
        if found is None:
            raise ScimError(400, f"No user with id {value!r} in this organization.", "invalidValue")
        wanted.append(found)
    by_id = {
        m.scim_id: m
        for m in Membership.objects.for_org(org).select_related("user").filter(scim_id__in=wanted)
    }
    missing = [str(w) for w in wanted if w not in by_id]
    if missing:
        raise ScimError(
            400, f"No user with id {missing[0]!r} in this organization.", "invalidValue"
        )
    unique: dict[uuid.UUID, Membership] = {}
    for w in wanted:
        unique.setdefault(w, by_id[w])
    return list(unique.values())


def scim_group_list(*, org: Organization, where: list[Comparison]) -> QuerySet[ScimGroup]:
    qs = ScimGroup.objects.for_org(org)
    for comparison in where:
        value = comparison.value
        if comparison.attribute == "displayname":
            qs = qs.filter(display_name__iexact=str(value)) if value is not None else qs.none()
        elif comparison.attribute == "externalid":
            qs = qs.filter(external_id=str(value) if value is not None else "")
        elif comparison.attribute == "id":
            found = _uuid(value)
            qs = qs.filter(scim_id=found) if found else qs.none()
        elif comparison.attribute in ("members.value", "members"):
            found = _uuid(value)
            qs = qs.filter(members__scim_id=found).distinct() if found else qs.none()
    return qs.order_by("display_name", "id")


def scim_group_get(*, org: Organization, scim_id: str) -> ScimGroup:
    found = _uuid(scim_id)
    group = ScimGroup.objects.for_org(org).filter(scim_id=found).first() if found else None
    if group is None:
        raise ScimError(404, f"Group {scim_id} not found.")
    return group


def group_memberships(*, groups: list[ScimGroup]) -> dict[int, list[Membership]]:
    """Each group's members, in one query."""
    through = ScimGroup.members.through
    rows = (
        through.objects.filter(scimgroup_id__in=[g.pk for g in groups])
        .select_related("membership__user")
        .order_by("membership__created_at", "membership_id")
    )
    out: dict[int, list[Membership]] = {g.pk: [] for g in groups}
    for row in rows:
        out[row.scimgroup_id].append(row.membership)
    return out


def user_groups(*, memberships: list[Membership]) -> dict[int, list[ScimGroup]]:
    """Each member's SCIM groups, in one query."""
    through = ScimGroup.members.through
    rows = (
        through.objects.filter(membership_id__in=[m.pk for m in memberships])
        .select_related("scimgroup")
        .order_by("scimgroup__display_name")
    )
    out: dict[int, list[ScimGroup]] = {m.pk: [] for m in memberships}
    for row in rows:
        out[row.membership_id].append(row.scimgroup)
    return out


def users_last_modified(*, org: Organization, memberships: list[Membership]) -> dict[int, datetime]:
    """When each member last changed (created, SCIM change, role change), from the audit log."""
    latest = (
        AuditEvent.objects.for_org(org)
        .filter(target_type="membership", target_id__in=[str(m.pk) for m in memberships])
        .values("target_id")
        .annotate(at=Max("created_at"))
        .order_by()
    )
    by_id = {int(row["target_id"]): row["at"] for row in latest}
    out: dict[int, datetime] = {}
    for m in memberships:
        candidates = [m.created_at, by_id.get(m.pk), m.deactivated_at]
        out[m.pk] = max(c for c in candidates if c is not None)
    return out


def scim_token_list(*, org: Organization) -> list[ApiToken]:
    return [
        t
        for t in ApiToken.objects.for_org(org)
        .select_related("created_by")
        .order_by("-created_at", "-id")
        if Scope.SCIM in t.scopes
    ]


def scim_activity(*, org: Organization, limit: int = 10) -> QuerySet[AuditEvent]:
    """The latest provisioning events of the organization: SCIM changes and the role changes
    their groups made."""
    return (
        AuditEvent.objects.for_org(org)
        .filter(
            Q(action__startswith="scim.") | Q(action="member.role_changed", details__source="scim")
        )
        .order_by("-created_at", "-id")[:limit]
    )


def scim_group_rows(*, org: Organization) -> list[ScimGroup]:
    return list(ScimGroup.objects.for_org(org).order_by("display_name", "id"))
