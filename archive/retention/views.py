"""Portal pages of the trash and legal holds under ``/o/<slug>/archive/`` (restores:
``archive.restores.views``).

- Trash: trashed studies with their purge date and a button to take one back out.
- Legal holds: the list; set and lift from the study page, a reason each time (owners/admins).

Thin views: a form checks the shape, a service in ``archive.retention.services``
writes or refuses with a ``ServiceError`` (shown as a message), ids go through selectors scoped
to the organization in the URL (another tenant's id is a 404).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from archive.common.views import get_or_404
from archive.index import selectors as archive_selectors
from archive.retention import selectors, services
from tenants.errors import ServiceError
from tenants.labels import bytes_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, strip=True)


# --- trash -------------------------------------------------------------------------------------


@org_view(Perm.IMAGES_READ)
@require_safe
def trash_list(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    rows = [
        {"study": s, "size": bytes_label(s.total_bytes)}
        for s in selectors.trash_list(org=ctx.org)[:500]
    ]
    config = archive_selectors.archive_settings_get(org=ctx.org)
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "rows": rows,
        "grace_days": config.trash_grace_days,
        "can_untrash": ctx.can(Perm.POLICIES_MANAGE),
    }
    return render(request, "archive/trash.html", context)


@org_view(Perm.POLICIES_MANAGE)
@require_POST
def study_trash(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponse:
    study = get_or_404(archive_selectors.study_get, org=ctx.org, study_id=study_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason to move the study to the trash.")
        return redirect("portal-study", ctx.org.slug, study.pk)
    try:
        study = services.study_trash(
            org=ctx.org, study=study, actor=ctx.actor, reason=form.cleaned_data["reason"]
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("portal-study", ctx.org.slug, study.pk)
    assert study.purge_after is not None
    messages.success(
        request,
        f"Study moved to the trash; it is deleted for good on {study.purge_after:%Y-%m-%d} "
        "unless taken back out before.",
    )
    return redirect("portal-trash", ctx.org.slug)


@org_view(Perm.POLICIES_MANAGE)
@require_POST
def study_untrash(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponse:
    study = get_or_404(selectors.trashed_study_get, org=ctx.org, study_id=study_id)
    try:
        services.study_untrash(
            org=ctx.org, study=study, actor=ctx.actor, reason=request.POST.get("reason", "")
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("portal-trash", ctx.org.slug)
    messages.success(request, "Study taken out of the trash: it is searchable and readable again.")
    return redirect("portal-study", ctx.org.slug, study.pk)


# --- legal holds -------------------------------------------------------------------------------


@org_view(Perm.IMAGES_READ)
@require_safe
def hold_list(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    holds = list(selectors.hold_list(org=ctx.org)[:500])
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "active_holds": [h for h in holds if h.lifted_at is None],
        "lifted_holds": [h for h in holds if h.lifted_at is not None],
        "can_manage": ctx.can(Perm.HOLDS_MANAGE),
    }
    return render(request, "archive/holds.html", context)


@org_view(Perm.HOLDS_MANAGE)
@require_POST
def study_hold(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponse:
    study = get_or_404(archive_selectors.study_get, org=ctx.org, study_id=study_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason for the legal hold.")
        return redirect("portal-study", ctx.org.slug, study.pk)
    try:
        services.legal_hold_set(
            org=ctx.org, study=study, actor=ctx.actor, reason=form.cleaned_data["reason"]
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Legal hold set: the study cannot be deleted until it is lifted.")
    return redirect("portal-study", ctx.org.slug, study.pk)


@org_view(Perm.HOLDS_MANAGE)
@require_POST
def hold_lift(request: HttpRequest, ctx: PortalContext, hold_id: int) -> HttpResponse:
    hold = get_or_404(selectors.hold_get, org=ctx.org, hold_id=hold_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason to lift the legal hold.")
        return redirect("portal-study", ctx.org.slug, hold.study_id)
    try:
        services.legal_hold_lift(
            org=ctx.org, hold=hold, actor=ctx.actor, reason=form.cleaned_data["reason"]
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Legal hold lifted.")
    return redirect("portal-study", ctx.org.slug, hold.study_id)
