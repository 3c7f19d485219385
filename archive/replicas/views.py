"""Portal action of the disaster-recovery replica: run a drill from the storage page (the panel
itself is the ``{% replica_panel %}`` tag in ``archive.templatetags.replicas``)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from archive.replicas.drill import DRILL_DEFAULT_SAMPLE, replica_drill
from tenants.errors import ServiceError
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

PORTAL_MAX_SAMPLE = 1000


@org_view(Perm.STORAGE_MANAGE)
@require_POST
def drill_run(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    back = reverse("portal-storage", args=[ctx.org.slug]) + "#replica"
    try:
        sample = int(request.POST.get("sample") or DRILL_DEFAULT_SAMPLE)
    except ValueError:
        sample = 0
    if not 1 <= sample <= PORTAL_MAX_SAMPLE:
        messages.error(request, f"Enter a sample size from 1 to {PORTAL_MAX_SAMPLE}.")
        return redirect(back)
    try:
        check = replica_drill(org=ctx.org, sample=sample, actor=ctx.actor)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    if check.missing or check.mismatched:
        messages.error(
            request,
            f"DR drill: {check.missing} missing and {check.mismatched} damaged of "
            f"{check.sampled} sampled replicas; they were queued to be copied again.",
        )
    elif check.sampled == 0:
        messages.info(request, "DR drill: nothing is replicated yet, so there was nothing to read.")
    else:
        messages.success(request, f"DR drill: all {check.sampled} sampled replicas verified.")
    return redirect(back)
