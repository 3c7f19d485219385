"""REST API for an organization's second-factor policy."""

from django.urls import URLPattern, URLResolver, path

from tenants.mfa import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("", apis.MfaPolicyApi.as_view(), name="api-security-mfa"),
]
