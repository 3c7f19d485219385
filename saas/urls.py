from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from archive.reconcile.views import platform_reconciliations
from saas import health, views
from tenants.views import PasswordResetView

api_v1 = [
    path("", include("tenants.urls_api")),
    path("", include("billing.urls_api")),
    path("", include("archive.urls_api")),
]

_READ = ["get", "head"]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    # The schema and its two readers answer GET (and HEAD) only: DRF's OPTIONS would render its
    # metadata with the readers' HTML renderers, which have no template for it.
    path("api/schema/", SpectacularAPIView.as_view(http_method_names=_READ), name="api-schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", http_method_names=_READ),
        name="api-docs",
    ),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="api-schema", http_method_names=_READ),
        name="api-redoc",
    ),
    path("api/v1/", include(api_v1)),
    path("api/v1/o/<slug:org_slug>/", include(api_v1)),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/sso/", include("tenants.sso.urls_public")),
    path("accounts/mfa/", include("tenants.mfa.urls_public")),
    path("scim/v2/", include("tenants.scim.urls")),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password-reset/",
        PasswordResetView.as_view(),
        name="password_reset",
    ),
    path(
        "accounts/password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("", views.home, name="portal-home"),
    path("account/", include("tenants.urls_account")),
    # Strata staff only: every organization's latest consistency check.
    path(
        "platform/reconciliations/",
        platform_reconciliations,
        name="platform-reconciliations",
    ),
    path("invitations/<str:secret>/", include("tenants.urls_invitation")),
    path("o/<slug:org_slug>/", views.dashboard, name="portal-dashboard"),
    path("o/<slug:org_slug>/", include("tenants.urls_portal")),
    path("o/<slug:org_slug>/billing/", include("billing.urls_portal")),
    path("o/<slug:org_slug>/archive/", include("archive.urls_portal")),
    path("dicomweb/", include("archive.dicomweb.urls")),
]

handler404 = "saas.views.not_found"
handler500 = "saas.views.server_error"
