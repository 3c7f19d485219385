"""Portal pages of restores under ``/o/<slug>/archive/``: in progress and recent, with progress,
the reason of a timed-out one and what triggered a prefetch (with this month's prefetch cost
against the prefetch rule's cap); a bulk restore of a study starts only after its estimate (cost
on the plan, time until readable) is shown.

Thin views: a service in ``archive.restores.services`` writes or refuses with a ``ServiceError``
(shown as a message), ids go through selectors scoped to the organization in the URL (another
tenant's id is a 404).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_safe

from archive.common.views import get_or_404
from archive.index import selectors as archive_selectors
from archive.models import RestoreRequest, Study
from archive.restores import selectors, services
from tenants.errors import ServiceError
from tenants.labels import bytes_label, duration_label, money_label, person_name_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

RECENT_RESTORES = 50


def study_title(study: Study) -> str:
    """A study as a person recognises it among a patient's others: ``Curie, Marie · patient
    PAT10001 · accession ACC1 · 2026-12-07 · CR STUDY`` (a description alone, "CR STUDY", names
    no one)."""
    parts = [
        person_name_label(study.patient_name) or "(no patient name)",
        f"patient {study.patient_id}" if study.patient_id else "",
        f"accession {study.accession_number}" if study.accession_number else "",
        study.study_date.isoformat() if study.study_date else "",
        study.study_description,
    ]
    return " · ".join(p for p in parts if p)


def restore_row(restore: RestoreRequest) -> dict[str, Any]:
    total = restore.instances_total or 0
    percent = int(restore.instances_ready * 100 / total) if total else 100
    return {
        "restore": restore,
        "study_title": study_title(restore.study) if restore.study is not None else "",
        "size": bytes_label(restore.bytes_total),
        "percent": percent,
        "open": restore.state == RestoreRequest.State.IN_PROGRESS,
    }


def estimate_labels(estimate: selectors.RestoreEstimate) -> dict[str, str]:
    return {
        "size": bytes_label(estimate.bytes),
        "cost": money_label(estimate.amount, estimate.currency),
        "time": duration_label(estimate.typical_seconds),
    }


@org_view(Perm.IMAGES_READ)
@require_safe
def restore_list(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    qs = selectors.restore_list(org=ctx.org)
    open_rows = [restore_row(r) for r in qs.filter(state=RestoreRequest.State.IN_PROGRESS)]
    recent = [
        restore_row(r) for r in qs.exclude(state=RestoreRequest.State.IN_PROGRESS)[:RECENT_RESTORES]
    ]
    summary = selectors.prefetch_summary(org=ctx.org)
    prefetch = None
    if summary is not None:
        prefetch = {
            "rule": summary.rule,
            "count": summary.count,
            "month_cost": money_label(summary.month_cost, summary.currency),
            "cap": money_label(summary.rule.monthly_cap, summary.currency),
            "reached": summary.month_cost >= summary.rule.monthly_cap,
        }
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "open_rows": open_rows,
        "recent_rows": recent,
        "recent_shown": RECENT_RESTORES,
        "prefetch": prefetch,
    }
    return render(request, "archive/restores.html", context)


@org_view(Perm.IMAGES_READ)
@require_safe
def restore_detail(request: HttpRequest, ctx: PortalContext, restore_id: int) -> HttpResponse:
    restore = get_or_404(selectors.restore_get, org=ctx.org, restore_id=restore_id)
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "row": restore_row(restore),
        "restore": restore,
        "retry_after": duration_label(selectors.retry_after_seconds(restore))
        if restore.state == RestoreRequest.State.IN_PROGRESS
        else None,
        "sop_uids": selectors.restore_instance_uids(org=ctx.org, restore=restore, limit=50),
        "estimated_cost": money_label(
            restore.estimated_cost,
            selectors.meter_price(org=ctx.org, meter=selectors.RESTORE_METER, quantity=0).currency,
            places=4,
        )
        if restore.estimated_cost is not None
        else "",
    }
    return render(request, "archive/restores_detail.html", context)


@org_view(Perm.IMAGES_READ)
@require_http_methods(["GET", "POST"])
def study_restore(request: HttpRequest, ctx: PortalContext, study_id: int) -> HttpResponse:
    """GET: what restoring the study brings back, costs and takes. POST: start it."""
    study = get_or_404(archive_selectors.study_get, org=ctx.org, study_id=study_id)
    if request.method == "POST":
        try:
            restore = services.restore_bulk(org=ctx.org, actor=ctx.actor, study=study)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return redirect("portal-study", ctx.org.slug, study.pk)
        messages.success(
            request,
            f"Restore {restore.pk} started: the images are readable once it is ready.",
        )
        return redirect("portal-restore", ctx.org.slug, restore.pk)
    try:
        estimate = selectors.restore_estimate(org=ctx.org, study=study)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("portal-study", ctx.org.slug, study.pk)
    context = {
        "ctx": ctx,
        "active_section": "studies",
        "study": study,
        "study_title": study_title(study),
        "estimate": estimate,
        "labels": estimate_labels(estimate),
    }
    return render(request, "archive/restores_confirm.html", context)
