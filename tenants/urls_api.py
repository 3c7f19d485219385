"""The REST API, mounted twice by saas.urls: at /api/v1/ (the organization comes from the bearer
token) and at /api/v1/o/<org_slug>/ (a signed-in session names the organization)."""

from django.urls import URLPattern, URLResolver, include, path

from tenants import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("security/sso/", include("tenants.sso.urls_api")),
    path("security/mfa/", include("tenants.mfa.urls_api")),
    path("organization/", apis.OrganizationApi.as_view(), name="api-organization"),
    path("members/", apis.MemberListApi.as_view(), name="api-members"),
    path("members/<int:member_id>/", apis.MemberDetailApi.as_view(), name="api-member"),
    path("invitations/", apis.InvitationListApi.as_view(), name="api-invitations"),
    path(
        "invitations/<int:invitation_id>/",
        apis.InvitationDetailApi.as_view(),
        name="api-invitation",
    ),
    path("tokens/", apis.TokenListApi.as_view(), name="api-tokens"),
    path("tokens/<int:token_id>/", apis.TokenDetailApi.as_view(), name="api-token"),
    path("audit-events/", apis.AuditEventListApi.as_view(), name="api-audit-events"),
    path("audit-events/export.csv", apis.AuditEventExportApi.as_view(), name="api-audit-export"),
    path(
        "audit-events/<int:event_id>/", apis.AuditEventDetailApi.as_view(), name="api-audit-event"
    ),
    path("sessions/", apis.SessionListApi.as_view(), name="api-sessions"),
    path("sessions/<int:session_id>/", apis.SessionDetailApi.as_view(), name="api-session"),
    path("cors-origins/", apis.CorsOriginListApi.as_view(), name="api-cors-origins"),
    path(
        "cors-origins/<int:origin_id>/", apis.CorsOriginDetailApi.as_view(), name="api-cors-origin"
    ),
    path("webhooks/", apis.WebhookListApi.as_view(), name="api-webhooks"),
    path("webhooks/<int:webhook_id>/", apis.WebhookDetailApi.as_view(), name="api-webhook"),
    path("webhooks/<int:webhook_id>/test/", apis.WebhookTestApi.as_view(), name="api-webhook-test"),
    path(
        "webhooks/<int:webhook_id>/rotate-secret/",
        apis.WebhookRotateSecretApi.as_view(),
        name="api-webhook-rotate-secret",
    ),
    path(
        "webhooks/<int:webhook_id>/deliveries/",
        apis.WebhookDeliveryListApi.as_view(),
        name="api-webhook-deliveries",
    ),
    path(
        "webhook-event-types/",
        apis.WebhookEventTypeListApi.as_view(),
        name="api-webhook-event-types",
    ),
    path(
        "platform/organizations/",
        apis.PlatformOrganizationListApi.as_view(),
        name="api-platform-organizations",
    ),
    path(
        "platform/organizations/<int:organization_id>/",
        apis.PlatformOrganizationDetailApi.as_view(),
        name="api-platform-organization",
    ),
]
