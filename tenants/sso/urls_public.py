"""Sign-in by single sign-on, under /accounts/sso/: discovery by email, start, callback."""

from django.urls import URLPattern, URLResolver, path

from tenants.sso import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.sso_start, name="sso-start"),
    path("callback/", views.sso_callback, name="sso-callback"),
    path("saml/acs/", views.saml_acs, name="sso-saml-acs"),
    path("saml/metadata/<slug:org_slug>/", views.saml_metadata, name="sso-saml-metadata"),
    path("staff/domains/", views.staff_domains, name="sso-staff-domains"),
]
