"""Portal page "Access analytics": the re-read curve by modality and the cost simulator for the
active policy. Readable with ``images.read`` or ``policies.manage``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from archive.analytics.charts import access_curve_chart
from archive.analytics.simulator import simulate
from tenants.portal import PortalContext, org_view
from tenants.roles import PERMISSION_DESCRIPTIONS, Perm

READ_PERMISSIONS = (Perm.IMAGES_READ, Perm.POLICIES_MANAGE)


def _forbidden(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    return render(
        request,
        "saas/forbidden.html",
        {
            "ctx": ctx,
            "permission": Perm.IMAGES_READ,
            "permission_text": PERMISSION_DESCRIPTIONS[Perm.IMAGES_READ],
        },
        status=403,
    )


@org_view()
@require_GET
def analytics(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if not any(ctx.can(p) for p in READ_PERMISSIONS):
        return _forbidden(request, ctx)
    simulation = simulate(org=ctx.org)
    curve = simulation.curve
    rows = []
    for modality, points in [("All modalities", curve.overall), *sorted(curve.by_modality.items())]:
        rows.append({"modality": modality or "Other", "points": points})
    context: dict[str, Any] = {
        "ctx": ctx,
        "active_section": "policies",
        "curve": curve,
        "curve_rows": rows,
        "studies_chart": access_curve_chart(curve, measure="studies"),
        "bytes_chart": access_curve_chart(curve, measure="bytes"),
        "simulation": simulation,
        "can_manage_policies": ctx.can(Perm.POLICIES_MANAGE),
    }
    return render(request, "archive/analytics.html", context)
