"""Portal pages of storage under ``/o/<slug>/archive/storage/``: the locations, their connection
tests, and the storage quota.

Thin views: a form checks the shape, a service writes (refusing with a ``ServiceError``), a
selector reads. A location id in a URL is looked up in the organization of the URL, so another
tenant's id answers 404.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from archive.common.views import get_or_404
from archive.index import selectors as index_selectors
from archive.locations import selectors, services
from archive.locations.forms import LocationForm, QuotaForm
from archive.models import TIERS, StorageLocation
from tenants.errors import ServiceError
from tenants.forms import form_apply_service_error
from tenants.labels import bytes_label
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm


def _storage_page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    quota_form: QuotaForm | None = None,
    status: int = 200,
) -> HttpResponse:
    tiers = index_selectors.bytes_by_tier(org=ctx.org)
    total = sum(tiers.values())
    config = index_selectors.archive_settings_get(org=ctx.org)
    quota = config.storage_quota_bytes
    if quota_form is None:
        initial = {"quota_gib": Decimal(quota) / Decimal(2**30) if quota else None}
        if initial["quota_gib"] is not None:
            initial["quota_gib"] = initial["quota_gib"].quantize(Decimal("0.001")).normalize()
        quota_form = QuotaForm(initial=initial)
    rows = []
    for location in selectors.location_list(org=ctx.org):
        rows.append(
            {
                "location": location,
                "classes": [
                    (tier, location.storage_class(tier) or "not available") for tier in TIERS
                ],
                "encryption": services.ENCRYPTION_LABELS[
                    services.encryption_mode(location.encryption)
                ].split(" (")[0],
                "in_use": selectors.location_in_use(org=ctx.org, location=location),
            }
        )
    context = {
        "ctx": ctx,
        "active_section": "storage",
        "tiers": [{"tier": t, "bytes": bytes_label(tiers[t]), "raw": tiers[t]} for t in TIERS],
        "total": bytes_label(total),
        "quota": bytes_label(quota) if quota else None,
        "quota_percent": min(100, int(total * 100 / quota)) if quota else None,
        "quota_form": quota_form,
        "rows": rows,
        "has_instances": index_selectors.org_has_instances(org=ctx.org),
    }
    return render(request, "archive/storage.html", context, status=status)


@org_view(Perm.STORAGE_MANAGE)
@require_safe
def storage(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    return _storage_page(request, ctx)


@org_view(Perm.STORAGE_MANAGE)
@require_POST
def storage_quota(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = QuotaForm(request.POST)
    if not form.is_valid():
        return _storage_page(request, ctx, quota_form=form, status=400)
    try:
        services.archive_settings_update(
            org=ctx.org, storage_quota_bytes=form.quota_bytes(), actor=ctx.actor
        )
    except ServiceError as exc:
        form_apply_service_error(form, exc)
        return _storage_page(request, ctx, quota_form=form, status=exc.status)
    quota = form.quota_bytes()
    messages.success(
        request,
        f"Storage quota set to {bytes_label(quota)}." if quota else "Storage quota removed.",
    )
    return redirect("portal-storage", ctx.org.slug)


def _location_form_page(
    request: HttpRequest,
    ctx: PortalContext,
    form: LocationForm,
    location: StorageLocation | None,
    status: int,
) -> HttpResponse:
    context = {
        "ctx": ctx,
        "active_section": "storage",
        "form": form,
        "location": location,
        "has_instances": index_selectors.org_has_instances(org=ctx.org),
        "tiers": TIERS,
    }
    response = render(request, "archive/location_form.html", context, status=status)
    add_never_cache_headers(response)
    return response


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def location_create(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    form = LocationForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                location = services.location_create(
                    org=ctx.org, data=form.to_input(), actor=ctx.actor
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
            else:
                messages.success(
                    request,
                    f"Storage location “{location.name}” added. Test the connection to check "
                    "the bucket and credentials.",
                )
                return redirect("portal-storage", ctx.org.slug)
    return _location_form_page(request, ctx, form, None, status)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def location_edit(request: HttpRequest, ctx: PortalContext, location_id: int) -> HttpResponse:
    location = get_or_404(selectors.location_get, org=ctx.org, location_id=location_id)
    if location.kind == StorageLocation.Kind.PLATFORM:
        messages.info(request, "The platform storage is managed by Strata; it has no settings.")
        return redirect("portal-storage", ctx.org.slug)
    secret_set = bool(location.secret_access_key_encrypted)
    form = LocationForm(
        request.POST or None, initial=LocationForm.initial_for(location), secret_set=secret_set
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                services.location_update(
                    org=ctx.org, location=location, data=form.to_input(), actor=ctx.actor
                )
            except ServiceError as exc:
                form_apply_service_error(form, exc)
                status = exc.status
                location.refresh_from_db()
            else:
                messages.success(request, f"Storage location “{location.name}” saved.")
                return redirect("portal-storage", ctx.org.slug)
    return _location_form_page(request, ctx, form, location, status)


@org_view(Perm.STORAGE_MANAGE)
@require_POST
def location_test(request: HttpRequest, ctx: PortalContext, location_id: int) -> HttpResponse:
    location = get_or_404(selectors.location_get, org=ctx.org, location_id=location_id)
    try:
        location = services.location_test(org=ctx.org, location=location, actor=ctx.actor)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("portal-storage", ctx.org.slug)
    if location.last_test_ok:
        messages.success(
            request, f"“{location.name}”: connection works. {location.last_test_message}"
        )
    else:
        messages.error(
            request, f"“{location.name}”: the connection test failed. {location.last_test_message}"
        )
    return redirect("portal-storage", ctx.org.slug)


@org_view(Perm.STORAGE_MANAGE)
@require_POST
def location_test_clear(request: HttpRequest, ctx: PortalContext, location_id: int) -> HttpResponse:
    location = get_or_404(selectors.location_get, org=ctx.org, location_id=location_id)
    services.location_test_clear(org=ctx.org, location=location, actor=ctx.actor)
    messages.success(request, f"The test result of “{location.name}” was cleared.")
    return redirect("portal-storage", ctx.org.slug)


@org_view(Perm.STORAGE_MANAGE)
@require_http_methods(["GET", "POST"])
def location_delete(request: HttpRequest, ctx: PortalContext, location_id: int) -> HttpResponse:
    location = get_or_404(selectors.location_get, org=ctx.org, location_id=location_id)
    context = {
        "ctx": ctx,
        "active_section": "storage",
        "location": location,
        "in_use": selectors.location_in_use(org=ctx.org, location=location),
    }
    if request.method == "POST":
        name = location.name
        try:
            services.location_delete(org=ctx.org, location=location, actor=ctx.actor)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return render(request, "archive/location_delete.html", context, status=exc.status)
        messages.success(request, f"Storage location “{name}” removed.")
        return redirect("portal-storage", ctx.org.slug)
    return render(request, "archive/location_delete.html", context)
