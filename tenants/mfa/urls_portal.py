"""The organization's second-factor policy, under /o/<org_slug>/security/mfa/."""

from django.urls import URLPattern, URLResolver, path

from tenants.mfa import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.policy, name="portal-security-mfa"),
]
