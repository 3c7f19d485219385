"""The policy engine: plan tier moves and trash studies by the organization's active policy.

Planning is one ``INSERT INTO archive_tiermove ... SELECT`` over the compiled selection
(archive.policies.sql.move_selection), bounded by ``limit`` rows: no instance passes through Python.
The NOT EXISTS filter in the selection makes planning idempotent: a rerun plans only what is not
planned yet. Two planners racing over the same instances cannot both win: the partial unique
constraint "one open move per instance" fails the later statement, which plans nothing and is
simply tried again (no ON CONFLICT clause: its speculative insertion costs a third of the time of
planning a million moves).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from archive.models import PolicyVersion, Study, TierMove
from archive.policies.sql import move_rules, move_selection, trash_selection
from archive.policies.versions import policy_active
from archive.retention.services import study_trash
from tenants.context import Actor
from tenants.errors import Conflict
from tenants.models import Organization

logger = logging.getLogger(__name__)

# A quarter of a million moves per statement: a few seconds of one transaction at most, and few
# enough statements that the per-statement joins do not dominate a pass over a large index.
DEFAULT_BATCH = 250_000
TRASH_BATCH = 500
# A pass over the index that stops half way resumes within this time, else starts over.
CURSOR_TTL = 3600

_COLUMNS = (
    "organization_id, instance_id, study_id, origin, policy_version_id, rule_index, from_tier, "
    "to_tier, from_location_id, to_location_id, size_bytes, state, attempts, error, planned_at, "
    "claimed_by"
)


def _cursor_key(org: Organization, version: PolicyVersion) -> str:
    return f"archive:plan-cursor:{org.pk}:{version.pk}"


def moves_plan_sql(
    *, org: Organization, version: PolicyVersion, limit: int, now: datetime, after_id: int = 0
) -> tuple[str, list[Any]]:
    """The statement that plans up to ``limit`` moves for ``version`` among instances with an id
    above ``after_id``, in id order (for EXPLAIN too).

    On PostgreSQL it answers one row (inserted, selected, last selected id); on SQLite it
    returns the inserted instance ids (SQLite has no INSERT inside WITH).
    """
    candidates: Any = move_selection(org=org, rules=version.rules, now=now)
    if after_id:
        candidates = candidates.filter(id__gt=after_id)
    selection = candidates.order_by("id").values_list(
        "id", "study_id", "location_id", "size_bytes", "tier", "rule_index"
    )[:limit]
    select_sql, select_params = selection.query.sql_with_params()
    whens: list[str] = []
    case_params: list[Any] = []
    for i, rule in move_rules(version.rules):
        whens.append("WHEN %s THEN %s")
        case_params += [i, rule["action"]["tier"]]
    planned_at = connection.ops.adapt_datetimefield_value(now)
    # The rule CASE is evaluated once per row inside the selection; the outer CASE only maps the
    # rule's position to its tier. "WHERE 1 = 1" keeps SQLite from reading ON CONFLICT as a join
    # constraint. Only the table name and the compiled selection are formatted in; every value
    # is a parameter.
    insert = (
        f"INSERT INTO {TierMove._meta.db_table} ({_COLUMNS}) "  # noqa: S608
        f"SELECT %s, c.id, c.study_id, %s, %s, c.rule_index, c.tier, "
        f"CASE c.rule_index {' '.join(whens)} END, c.location_id, c.location_id, c.size_bytes, "
        f"%s, 0, '', %s, '' FROM {{source}} c WHERE 1 = 1"
    )
    insert_params = [
        org.pk,
        TierMove.Origin.POLICY.value,
        version.pk,
        *case_params,
        TierMove.State.PLANNED.value,
        planned_at,
    ]
    if connection.vendor == "postgresql":
        sql = (
            f"WITH c AS MATERIALIZED ({select_sql}), "  # noqa: S608
            f"ins AS ({insert.format(source='c')} RETURNING 1) "
            "SELECT (SELECT COUNT(*) FROM ins), (SELECT COUNT(*) FROM c), "
            "(SELECT COALESCE(MAX(id), 0) FROM c)"
        )
        return sql, [*select_params, *insert_params]
    sql = insert.format(source=f"({select_sql})") + " RETURNING instance_id"
    return sql, [*insert_params, *select_params]


def moves_plan_batch(
    *, org: Organization, version: PolicyVersion, limit: int, now: datetime, after_id: int = 0
) -> tuple[int, int | None]:
    """Plan up to ``limit`` moves among instances above ``after_id``, in id order.

    Returns (moves planned, id to continue after; None when the selection ran out).
    """
    sql, params = moves_plan_sql(org=org, version=version, limit=limit, now=now, after_id=after_id)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            if connection.vendor == "postgresql":
                inserted, selected, last_id = cursor.fetchone()
            else:
                ids = [row[0] for row in cursor.fetchall()]
                inserted = selected = len(ids)
                last_id = max(ids, default=0)
    except IntegrityError:
        # Another planner planned some of these instances meanwhile (see the module docstring):
        # nothing was written; the same batch is selected again on the next call.
        logger.info("planning batch of org %s lost a race with another planner", org.pk)
        return 0, after_id
    return int(inserted), (int(last_id) if selected >= limit else None)


def moves_plan(
    *, org: Organization, limit: int = DEFAULT_BATCH, now: datetime | None = None
) -> int:
    """Plan up to ``limit`` tier moves by the active policy; returns how many were planned.

    Fewer than ``limit`` means the selection is exhausted for now. Safe to run concurrently and
    repeatedly: an instance never gets a second open move. Successive calls continue in
    instance id order after the previous batch (a cursor in the cache, per policy version), so
    a pass over a large index reads it once; when a pass ends, the next call starts over, which
    picks up instances that became due since. Losing the cursor costs time, never correctness.
    """
    version = policy_active(org=org)
    if version is None or not move_rules(version.rules) or limit <= 0:
        return 0
    key = _cursor_key(org, version)
    after_id = int(cache.get(key) or 0)
    planned, next_after = moves_plan_batch(
        org=org, version=version, limit=limit, now=now or timezone.now(), after_id=after_id
    )
    if next_after is None:
        cache.delete(key)
    else:
        cache.set(key, next_after, timeout=CURSOR_TTL)
    if planned:
        logger.info(
            "planned %s tier moves for org %s (policy v%s)", planned, org.pk, version.number
        )
    return planned


def studies_trash_due(
    *, org: Organization, limit: int = TRASH_BATCH, now: datetime | None = None
) -> int:
    """Send the studies the active policy's delete rules select to the trash (up to ``limit``).

    Each study goes through ``archive.retention.services.study_trash`` (audited, legal hold re-checked
    under its row lock); a study held or trashed meanwhile is skipped. Returns how many went.
    """
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
