"""Portal pages for the listener's AE titles and the organization's destinations (add, edit,
delete; a destination's C-ECHO test), reached from the DICOM connections page
(``archive.dimse.views``), where the lists and the connection details are shown. Their URLs
under ``ingest/`` (before that page existed) redirect to the same page under ``dicom/``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponsePermanentRedirect,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from archive.ae_titles import selectors, services
from archive.ae_titles.forms import AEForm, DestinationForm
from archive.common.views import get_or_404
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm


def _ae_titles_redirect(ctx: PortalContext) -> HttpResponse:
    return redirect(reverse("portal-dicom", args=[ctx.org.slug]) + "#ae-titles")


def moved(request: HttpRequest, org_slug: str, section: str, rest: str) -> HttpResponse:
    """An AE title or destination URL of the Ingest page's days (``ingest/<section>/<rest>``):
    308 to the same page under ``dicom/``, keeping the method and body (a form left open in a
    tab still posts); the page itself checks who may see it."""
    target = f"{reverse('portal-dicom', args=[org_slug])}{section}/{rest}"
    query = request.META.get("QUERY_STRING", "")
    return HttpResponsePermanentRedirect(
        f"{target}?{query}" if query else target, preserve_request=True
    )


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def ae_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = AEForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                ae = services.ae_create(
                    org=ctx.org,
                    ae_title=form.cleaned_data["ae_title"],
                    allowed_calling_ae_titles=form.calling(),
                    allowed_networks=form.networks(),
                    allow_any_caller=form.cleaned_data["allow_any_caller"],
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(request, f"AE title {ae.ae_title} added.")
                return _ae_titles_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "form": form, "ae": None}
    return render(request, "archive/ae_form.html", context, status=status)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def ae_edit(request: HttpRequest, ctx: PortalContext, ae_id: int) -> HttpResponse:
    ae = get_or_404(selectors.ae_get, org=ctx.org, ae_id=ae_id)
    initial = {
        "ae_title": ae.ae_title,
        "allowed_calling_ae_titles": "\n".join(ae.allowed_calling_ae_titles),
        "allowed_networks": "\n".join(ae.allowed_networks),
        "allow_any_caller": ae.allow_any_caller,
    }
    form = AEForm(request.POST or None, initial=initial, editing=True)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                services.ae_update(
                    org=ctx.org,
                    ae=ae,
                    allowed_calling_ae_titles=form.calling(),
                    allowed_networks=form.networks(),
                    allow_any_caller=form.cleaned_data["allow_any_caller"],
                    actor=ctx.actor,
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
                ae.refresh_from_db()
            else:
                messages.success(request, f"AE title {ae.ae_title} saved.")
                return _ae_titles_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "form": form, "ae": ae}
    return render(request, "archive/ae_form.html", context, status=status)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def ae_delete(request: HttpRequest, ctx: PortalContext, ae_id: int) -> HttpResponse:
    ae = get_or_404(selectors.ae_get, org=ctx.org, ae_id=ae_id)
    if request.method == "POST":
        title = ae.ae_title
        services.ae_delete(org=ctx.org, ae=ae, actor=ctx.actor)
        messages.success(request, f"AE title {title} deleted; the listener refuses it from now on.")
        return _ae_titles_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "ae": ae}
    return render(request, "archive/ae_delete.html", context)


# --- destinations ----------------------------------------------------------------------------


def _destinations_redirect(ctx: PortalContext) -> HttpResponse:
    return redirect(reverse("portal-dicom", args=[ctx.org.slug]) + "#destinations")


def _destination_values(form: DestinationForm) -> dict[str, Any]:
    data = form.cleaned_data
    return {
        "ae_title": data["ae_title"],
        "host": data["host"],
        "port": data["port"],
        "tls": data["tls"],
        "description": data.get("description") or "",
    }


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def destination_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = DestinationForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                destination = services.destination_create(
                    org=ctx.org, actor=ctx.actor, **_destination_values(form)
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(
                    request,
                    f"Destination {destination.ae_title} added. Use “Test” to check that it "
                    "answers.",
                )
                return _destinations_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "form": form, "destination": None}
    return render(request, "archive/destination_form.html", context, status=status)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def destination_edit(request: HttpRequest, ctx: PortalContext, destination_id: int) -> HttpResponse:
    destination = get_or_404(selectors.destination_get, org=ctx.org, destination_id=destination_id)
    initial = {
        "ae_title": destination.ae_title,
        "host": destination.host,
        "port": destination.port,
        "tls": destination.tls,
        "description": destination.description,
    }
    form = DestinationForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                services.destination_update(
                    org=ctx.org,
                    destination=destination,
                    actor=ctx.actor,
                    **_destination_values(form),
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
                destination.refresh_from_db()
            else:
                messages.success(request, f"Destination {destination.ae_title} saved.")
                return _destinations_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "form": form, "destination": destination}
    return render(request, "archive/destination_form.html", context, status=status)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def destination_delete(
    request: HttpRequest, ctx: PortalContext, destination_id: int
) -> HttpResponse:
    destination = get_or_404(selectors.destination_get, org=ctx.org, destination_id=destination_id)
    if request.method == "POST":
        title = destination.ae_title
        services.destination_delete(org=ctx.org, destination=destination, actor=ctx.actor)
        messages.success(
            request, f"Destination {title} deleted; C-MOVE requests naming it are refused now."
        )
        return _destinations_redirect(ctx)
    context = {"ctx": ctx, "active_section": "dicom", "destination": destination}
    return render(request, "archive/destination_delete.html", context)


@org_view(Perm.STORAGE_MANAGE)
@require_POST
def destination_echo(request: HttpRequest, ctx: PortalContext, destination_id: int) -> HttpResponse:
    destination = get_or_404(selectors.destination_get, org=ctx.org, destination_id=destination_id)
    destination = services.destination_echo(org=ctx.org, destination=destination, actor=ctx.actor)
    if destination.last_echo_ok:
        messages.success(request, destination.last_echo_message)
    else:
        messages.error(
            request,
            f"The test of {destination.ae_title} failed. {destination.last_echo_message}",
        )
    return _destinations_redirect(ctx)
