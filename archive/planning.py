"""The policy engine: plan tier moves and trash studies by the organization's active policy.

Planning is one ``INSERT INTO archive_tiermove ... SELECT`` over the compiled selection
(archive.policies.move_selection), bounded by ``limit`` rows: no instance passes through Python.
The partial unique constraint "one open move per instance" together with the NOT EXISTS filter in
the selection makes planning idempotent: a rerun plans only what is not planned yet.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from archive.models import PolicyVersion, Study, TierMove
from archive.policies import move_rules, move_selection, policy_active, trash_selection
from tenants.context import Actor
from tenants.errors import Conflict
from tenants.models import Organization

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 50_000
TRASH_BATCH = 500

_COLUMNS = (
    "organization_id, instance_id, study_id, origin, policy_version_id, rule_index, from_tier, "
    "to_tier, from_location_id, to_location_id, size_bytes, state, attempts, error, planned_at, "
    "claimed_by"
)


def moves_plan_sql(
    *, org: Organization, version: PolicyVersion, limit: int, now: datetime
) -> tuple[str, list[Any]]:
    """The INSERT ... SELECT that plans up to ``limit`` moves for ``version`` (for EXPLAIN too)."""
    candidates: Any = move_selection(org=org, rules=version.rules, now=now)
    selection = candidates.values_list(
        "id", "study_id", "location_id", "size_bytes", "tier", "rule_index"
    )[:limit]
    select_sql, select_params = selection.query.sql_with_params()
    whens: list[str] = []
    case_params: list[Any] = []
    for i, rule in move_rules(version.rules):
        whens.append("WHEN %s THEN %s")
        case_params += [i, rule["action"]["tier"]]
    planned_at = connection.ops.adapt_datetimefield_value(now)
    # The selection sits in a derived table with its LIMIT, so the rule CASE is evaluated once
    # per row. "WHERE 1 = 1" keeps SQLite from reading ON CONFLICT as a join constraint.
    # Only the table name and the compiled selection are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {TierMove._meta.db_table} ({_COLUMNS}) "  # noqa: S608
        f"SELECT %s, c.id, c.study_id, %s, %s, c.rule_index, c.tier, "
        f"CASE c.rule_index {' '.join(whens)} END, c.location_id, c.location_id, c.size_bytes, "
        f"%s, 0, '', %s, '' FROM ({select_sql}) c WHERE 1 = 1 ON CONFLICT DO NOTHING"
    )
    params = [
        org.pk,
        TierMove.Origin.POLICY.value,
        version.pk,
        *case_params,
        TierMove.State.PLANNED.value,
        planned_at,
        *select_params,
    ]
    return sql, params


def moves_plan(
    *, org: Organization, limit: int = DEFAULT_BATCH, now: datetime | None = None
) -> int:
    """Plan up to ``limit`` tier moves by the active policy; returns how many were planned.

    Fewer than ``limit`` means the selection is exhausted for now. Safe to run concurrently and
    repeatedly: an instance never gets a second open move.
    """
    version = policy_active(org=org)
    if version is None or not move_rules(version.rules) or limit <= 0:
        return 0
    sql, params = moves_plan_sql(org=org, version=version, limit=limit, now=now or timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        planned = max(cursor.rowcount, 0)
    if planned:
        logger.info(
            "planned %s tier moves for org %s (policy v%s)", planned, org.pk, version.number
        )
    return planned


def studies_trash_due(
    *, org: Organization, limit: int = TRASH_BATCH, now: datetime | None = None
) -> int:
    """Send the studies the active policy's delete rules select to the trash (up to ``limit``).

    Each study goes through ``archive.retention.study_trash`` (audited, legal hold re-checked
    under its row lock); a study held or trashed meanwhile is skipped. Returns how many went.
    """
    from archive.retention import study_trash

    version = policy_active(org=org)
    if version is None:
        return 0
    now = now or timezone.now()
    ids = list(
        trash_selection(org=org, rules=version.rules, now=now)
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    actor = Actor.system(f"archive policy v{version.number}")
    trashed = 0
    for study in Study.objects.for_org(org).filter(pk__in=ids).order_by("id"):
        try:
            study_trash(
                org=org,
                study=study,
                actor=actor,
                reason=f"Retention rule of archive policy v{version.number}",
            )
        except Conflict as exc:  # held or trashed since the selection ran
            logger.info("study %s of org %s not trashed: %s", study.pk, org.pk, exc.code)
            continue
        trashed += 1
    return trashed
