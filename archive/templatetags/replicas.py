"""``{% replica_panel %}``: the disaster-recovery panel of the storage page.

An inclusion tag, so that the storage view needs no change: it reads the replication status
through ``archive.replicas.selectors`` for the organization of the page (``ctx``).
"""

from __future__ import annotations

from typing import Any

from django import template

from archive.replicas.drill import DRILL_DEFAULT_SAMPLE
from archive.replicas.selectors import drill_list, replication_status
from tenants.roles import Perm

register = template.Library()

DRILLS_SHOWN = 5


def _bytes(value: int) -> str:
    from archive.views import bytes_label

    return bytes_label(value)


def lag_label(seconds: int) -> str:
    if seconds <= 0:
        return "none"
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} days {hours % 24} h"


@register.inclusion_tag("archive/replica_panel.html", takes_context=True)
def replica_panel(context: template.Context) -> dict[str, Any]:
    ctx = context["ctx"]
    status = replication_status(org=ctx.org)
    drills = list(drill_list(org=ctx.org)[:DRILLS_SHOWN])
    return {
        "ctx": ctx,
        "csrf_token": context.get("csrf_token"),
        "status": status,
        "replicated_bytes": _bytes(status.replicated_bytes),
        "pending_bytes": _bytes(status.pending_bytes),
        "failed_bytes": _bytes(status.failed_bytes),
        "lag": lag_label(status.lag_seconds),
        "drills": [
            {"check": d, "ok": not (d.missing or d.mismatched), "bytes": _bytes(d.bytes_read)}
            for d in drills
        ],
        "can_manage": ctx.can(Perm.STORAGE_MANAGE),
        "default_sample": DRILL_DEFAULT_SAMPLE,
    }
