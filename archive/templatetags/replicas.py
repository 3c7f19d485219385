"""``{% replica_panel %}``: the disaster-recovery panel of the storage page.

An inclusion tag, so that the storage view needs no change: it reads the replication status
through ``archive.replicas.selectors`` for the organization of the page (``ctx``).
"""

from __future__ import annotations

from typing import Any

from django import template

from archive.replicas.drill import DRILL_DEFAULT_SAMPLE
from archive.replicas.selectors import drill_list, replication_status
from tenants.labels import bytes_label, duration_label
from tenants.roles import Perm

register = template.Library()

DRILLS_SHOWN = 5


@register.inclusion_tag("archive/replica_panel.html", takes_context=True)
def replica_panel(context: template.Context) -> dict[str, Any]:
    ctx = context["ctx"]
    status = replication_status(org=ctx.org)
    drills = list(drill_list(org=ctx.org)[:DRILLS_SHOWN])
    return {
        "ctx": ctx,
        "csrf_token": context.get("csrf_token"),
        "status": status,
        "replicated_bytes": bytes_label(status.replicated_bytes),
        "pending_bytes": bytes_label(status.pending_bytes),
        "failed_bytes": bytes_label(status.failed_bytes),
        "lag": duration_label(status.lag_seconds) if status.lag_seconds > 0 else "none",
        "drills": [
            {"check": d, "ok": not (d.missing or d.mismatched), "bytes": bytes_label(d.bytes_read)}
            for d in drills
        ],
        "can_manage": ctx.can(Perm.STORAGE_MANAGE),
        "default_sample": DRILL_DEFAULT_SAMPLE,
    }
