"""The SCIM token section of the Security page, under /o/<org_slug>/security/scim/."""

from django.urls import URLPattern, URLResolver, path

from tenants.scim import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.scim_settings, name="portal-scim"),
    path("tokens/<int:token_id>/revoke/", views.scim_token_revoke, name="portal-scim-token-revoke"),
]
