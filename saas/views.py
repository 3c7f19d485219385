from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from saas.portal import PortalContext, org_view
from tenants.selectors import memberships_for_user


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True


@login_required
def home(request: HttpRequest) -> HttpResponse:
    memberships = list(memberships_for_user(user=request.user))
    if len(memberships) == 1:
        return redirect("portal-dashboard", memberships[0].organization.slug)
    return render(request, "saas/home.html", {"memberships": memberships})


@org_view()
def dashboard(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    return render(request, "saas/dashboard.html", {"ctx": ctx})


def not_found(request: HttpRequest, exception: Any = None) -> HttpResponse:
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse(
            {"error": {"code": "not_found", "message": "Not found.", "fields": {}}}, status=404
        )
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Internal error.", "fields": {}}},
            status=500,
        )
    return render(request, "500.html", status=500)
