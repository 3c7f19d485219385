"""Portal pages under ``/o/<org_slug>/``; every view takes the organization from the URL."""

from django.urls import URLPattern, URLResolver, include, path

from tenants import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("security/", include("tenants.sso.urls_portal")),
    path("security/mfa/", include("tenants.mfa.urls_portal")),
    path("security/scim/", include("tenants.scim.urls_portal")),
    path("members/", views.members, name="portal-members"),
    path("members/invite/", views.invitation_create, name="portal-invitation-create"),
    path("members/<int:membership_id>/role/", views.member_role, name="portal-member-role"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="portal-member-remove"),
    path(
        "members/<int:membership_id>/sessions/end/",
        views.member_sessions_end,
        name="portal-member-sessions-end",
    ),
    path(
        "invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="portal-invitation-revoke",
    ),
    path("tokens/", views.tokens, name="portal-tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="portal-token-revoke"),
    path("tokens/origins/", views.cors_origins, name="portal-cors-origins"),
    path(
        "tokens/origins/<int:origin_id>/remove/",
        views.cors_origin_remove,
        name="portal-cors-origin-remove",
    ),
    path("webhooks/", views.webhooks, name="portal-webhooks"),
    path("webhooks/new/", views.webhook_create, name="portal-webhook-create"),
    path("webhooks/<int:endpoint_id>/", views.webhook_detail, name="portal-webhook-detail"),
    path("webhooks/<int:endpoint_id>/edit/", views.webhook_edit, name="portal-webhook-edit"),
    path("webhooks/<int:endpoint_id>/state/", views.webhook_toggle, name="portal-webhook-toggle"),
    path("webhooks/<int:endpoint_id>/rotate/", views.webhook_rotate, name="portal-webhook-rotate"),
    path("webhooks/<int:endpoint_id>/test/", views.webhook_test, name="portal-webhook-test"),
    path("webhooks/<int:endpoint_id>/delete/", views.webhook_delete, name="portal-webhook-delete"),
    path("audit/", views.audit, name="portal-audit"),
    path("audit/export.csv", views.audit_export, name="portal-audit-export"),
    path("audit/<int:event_id>/", views.audit_detail, name="portal-audit-detail"),
]
