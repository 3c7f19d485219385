"""The second step of sign-in, under /accounts/mfa/."""

from django.urls import URLPattern, URLResolver, path

from tenants.mfa import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.verify, name="mfa-verify"),
    path("recovery/", views.recovery, name="mfa-recovery"),
    path("cancel/", views.cancel, name="mfa-cancel"),
    path("webauthn/options/", views.webauthn_options, name="mfa-webauthn-options"),
    path("webauthn/verify/", views.webauthn_verify, name="mfa-webauthn-verify"),
]
