"""REST API for an organization's single sign-on settings."""

from django.urls import URLPattern, URLResolver, path

from tenants.sso import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("provider/", apis.ProviderApi.as_view(), name="api-sso-provider"),
    path("domains/", apis.DomainListApi.as_view(), name="api-sso-domains"),
    path("domains/<int:domain_id>/", apis.DomainDetailApi.as_view(), name="api-sso-domain"),
    path(
        "domains/<int:domain_id>/verify/",
        apis.DomainVerifyApi.as_view(),
        name="api-sso-domain-verify",
    ),
]
