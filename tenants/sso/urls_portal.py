"""The Security page under /o/<org_slug>/security/: identity provider, email domains."""

from django.urls import URLPattern, URLResolver, path

from tenants.sso import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.security, name="portal-security"),
    path("sso/", views.provider_save, name="portal-security-provider"),
    path("domains/", views.domain_add, name="portal-security-domain-add"),
    path(
        "domains/<int:domain_id>/verify/",
        views.domain_verify,
        name="portal-security-domain-verify",
    ),
    path(
        "domains/<int:domain_id>/remove/",
        views.domain_remove,
        name="portal-security-domain-remove",
    ),
]
