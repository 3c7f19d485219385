"""Portal pages of DICOM connections under ``/o/<slug>/archive/dicom/``: where the listener
listens, the organization's AE titles and destinations (with the C-ECHO test), and what each
association did (``archive.dimse.activity``); one association's page with all its operations.
Another organization's association answers 404.

The AE titles' and destinations' own forms are ``archive.ae_titles.views``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from archive.ae_titles import selectors as ae_selectors
from archive.common.views import get_or_404
from archive.dimse import activity
from archive.models import DicomAssociation, DicomOperation
from tenants.labels import bytes_label, duration_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

ASSOCIATIONS_SHOWN = 25
OPERATIONS_SHOWN = 5  # per association on the connections page
OPERATIONS_PAGE = 100  # on an association's page
DEFAULT_SCP_HOST = "localhost"
DEFAULT_SCP_PORT = 11112

KIND_LABELS = dict(DicomOperation.Kind.choices)
OUTCOME_LABELS = dict(DicomOperation.Outcome.choices)
# Badge classes of portal.css.
OUTCOME_BADGES = {
    "success": "badge-succeeded",
    "warning": "badge-warning",
    "failure": "badge-failed",
    "cancelled": "badge-neutral",
}
END_BADGES = {
    "open": "badge-active",
    "released": "badge-neutral",
    "aborted": "badge-warning",
    "ended": "badge-neutral",
}
# Kinds in the order a summary lists them.
KIND_ORDER = ["echo", "store", "find", "move", "get", "commit"]


class ActivityFilterForm(forms.Form):
    ae_title = forms.CharField(
        label="AE title", max_length=16, required=False, help_text="Called or calling."
    )
    kind = forms.ChoiceField(
        label="Operation", required=False, choices=[("", "Any")] + DicomOperation.Kind.choices
    )
    outcome = forms.ChoiceField(
        label="Outcome", required=False, choices=[("", "Any")] + DicomOperation.Outcome.choices
    )
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


@dataclass
class OperationView:
    """One operation as the pages show it."""

    operation: DicomOperation
    label: str
    summary: str
    outcome: str
    badge: str
    duration: str


def _plural(count: int, word: str, plural: str = "") -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    elapsed = (end - start).total_seconds()
    if elapsed < 1:
        return f"{max(elapsed, 0) * 1000:.0f} ms"
    return duration_label(int(elapsed))


def _query(operation: DicomOperation) -> str:
    parts = [p for p in (operation.model, operation.level) if p]
    if operation.keys:
        parts.append("keys " + ", ".join(operation.keys))
    return " · ".join(parts)


def _summary(operation: DicomOperation) -> str:
    """What the operation did, in one line (no patient data: only key names and counts)."""
    kind = operation.kind
    completed, failed = operation.completed or 0, operation.failed or 0
    if kind == DicomOperation.Kind.ECHO:
        return f"{completed} answered"
    if kind == DicomOperation.Kind.STORE:
        text = f"{completed} stored"
        if failed:
            text += f", {failed} refused"
        if operation.bytes:
            text += f" · {bytes_label(operation.bytes)}"
        return text
    if kind == DicomOperation.Kind.FIND:
        text = _query(operation)
        if operation.outcome == DicomOperation.Outcome.FAILURE and not operation.matches:
            return text  # refused: nothing was searched
        matches = _plural(operation.matches or 0, "match", "matches")
        return f"{text} → {matches}" if text else matches
    if kind in (DicomOperation.Kind.MOVE, DicomOperation.Kind.GET):
        text = _query(operation)
        if operation.destination_ae:
            text += f" → {operation.destination_ae}"
        if operation.matches is not None:
            text += f" · {completed} of {operation.matches} sent"
            if failed:
                text += f", {failed} failed"
            if operation.warning:
                text += f", {operation.warning} warning"
        if operation.bytes:
            text += f" · {bytes_label(operation.bytes)}"
        return text.strip(" ·")
    if kind == DicomOperation.Kind.COMMIT:
        text = _plural(operation.matches or 0, "instance")
        commitment = operation.commitment
        if commitment is None:
            return text
        result = commitment.result or {}
        if commitment.state == "reported":
            committed = result.get("committed", 0)
            refused = len(result.get("failed") or [])
            text += f" · reported: {committed} committed, {refused} failed"
        elif commitment.state == "failed":
            text += " · the report could not be delivered"
        else:
            text += " · report pending"
        return text
    return ""


def operation_view(operation: DicomOperation) -> OperationView:
    return OperationView(
        operation=operation,
        label=KIND_LABELS.get(operation.kind, operation.kind),
        summary=_summary(operation),
        outcome=OUTCOME_LABELS.get(operation.outcome, operation.outcome),
        badge=OUTCOME_BADGES.get(operation.outcome, "badge-neutral"),
        duration=_seconds(operation.started_at, operation.finished_at),
    )


def counts_line(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """The association's counters per kind: label, total, and the non-success ones."""
    line = []
    for kind in KIND_ORDER:
        outcomes = counts.get(kind) if isinstance(counts, dict) else None
        if not isinstance(outcomes, dict) or not outcomes:
            continue
        total = sum(v for v in outcomes.values() if isinstance(v, int))
        others = [
            f"{count} {OUTCOME_LABELS.get(name, name).lower()}"
            for name, count in sorted(outcomes.items())
            if name != "success" and isinstance(count, int) and count
        ]
        line.append({"label": KIND_LABELS[kind], "total": total, "others": ", ".join(others)})
    return line


def _association_row(association: DicomAssociation) -> dict[str, Any]:
    return {
        "association": association,
        "counts": counts_line(association.counts),
        "end_badge": END_BADGES.get(association.end, "badge-neutral"),
        "outcome_badge": OUTCOME_BADGES.get(association.outcome, "badge-neutral"),
        "outcome": OUTCOME_LABELS.get(association.outcome, ""),
        "duration": _seconds(association.started_at, association.ended_at),
    }


@org_view(Perm.IMAGES_READ)
@require_safe
def connections_page(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = ActivityFilterForm(request.GET or None)
    status = 200
    rows: list[dict[str, Any]] = []
    older: int | None = None
    filtered = False
    if form.is_bound and not form.is_valid():
        status = 400
    else:
        data = form.cleaned_data if form.is_bound else {}
        filters = {name: data.get(name) or "" for name in ("ae_title", "kind", "outcome")}
        filtered = any(filters.values())
        associations = activity.association_list(org=ctx.org, **filters)
        if data.get("before"):
            associations = associations.filter(pk__lt=data["before"])
        shown = list(associations[: ASSOCIATIONS_SHOWN + 1])
        if len(shown) > ASSOCIATIONS_SHOWN:
            shown = shown[:ASSOCIATIONS_SHOWN]
            older = shown[-1].pk
        recent = activity.operations_recent(
            org=ctx.org,
            association_ids=[a.pk for a in shown],
            per_association=OPERATIONS_SHOWN + 1,
        )
        for association in shown:
            operations = recent.get(association.pk, [])
            row = _association_row(association)
            row["operations"] = [operation_view(o) for o in operations[:OPERATIONS_SHOWN]]
            row["more"] = len(operations) > OPERATIONS_SHOWN
            rows.append(row)
    aes = list(ae_selectors.ae_list(org=ctx.org))
    context = {
        "ctx": ctx,
        "active_section": "dicom",
        "scp_host": getattr(settings, "DICOM_SCP_HOST", DEFAULT_SCP_HOST),
        "scp_port": getattr(settings, "DICOM_SCP_PORT", DEFAULT_SCP_PORT),
        "aes": aes,
        "destinations": list(ae_selectors.destination_list(org=ctx.org)),
        "calling_ae": ae_selectors.calling_ae_title(org=ctx.org),
        "can_manage_aes": ctx.can(Perm.STORAGE_MANAGE),
        "form": form,
        "rows": rows,
        "older": older,
        "filtered": filtered,
        "first_page": not (form.is_bound and form.cleaned_data.get("before"))
        if status == 200
        else True,
        "retention_days": settings.DIMSE_ACTIVITY_RETENTION_DAYS,
        "operations_shown": OPERATIONS_SHOWN,
    }
    return render(request, "archive/dicom_connections.html", context, status=status)


class OperationPageForm(forms.Form):
    kind = forms.ChoiceField(
        label="Operation", required=False, choices=[("", "Any")] + DicomOperation.Kind.choices
    )
    outcome = forms.ChoiceField(
        label="Outcome", required=False, choices=[("", "Any")] + DicomOperation.Outcome.choices
    )
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


@org_view(Perm.IMAGES_READ)
@require_safe
def association_page(request: HttpRequest, ctx: PortalContext, association_id: int) -> HttpResponse:
    association = get_or_404(activity.association_get, org=ctx.org, association_id=association_id)
    form = OperationPageForm(request.GET or None)
    status = 200
    operations: list[OperationView] = []
    older: int | None = None
    if form.is_bound and not form.is_valid():
        status = 400
    else:
        data = form.cleaned_data if form.is_bound else {}
        found = activity.operations_of(
            org=ctx.org,
            association=association,
            kind=data.get("kind") or "",
            outcome=data.get("outcome") or "",
        )
        if data.get("before"):
            found = found.filter(pk__lt=data["before"])
        page = list(found[: OPERATIONS_PAGE + 1])
        if len(page) > OPERATIONS_PAGE:
            page = page[:OPERATIONS_PAGE]
            older = page[-1].pk
        operations = [operation_view(o) for o in page]
    context = {
        "ctx": ctx,
        "active_section": "dicom",
        "row": _association_row(association),
        "association": association,
        "operations": operations,
        "form": form,
        "older": older,
    }
    return render(request, "archive/dicom_association.html", context, status=status)
