"""The signed-in person's own account, under ``/account/``: not scoped to an organization."""

from django.urls import URLPattern, URLResolver, include, path

from tenants import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("factors/", include("tenants.mfa.urls_account")),
    path("", views.account, name="portal-account"),
    path(
        "sessions/<int:session_id>/end/",
        views.account_session_end,
        name="portal-account-session-end",
    ),
    path(
        "sessions/end-others/",
        views.account_sessions_end_others,
        name="portal-account-sessions-end-others",
    ),
]
