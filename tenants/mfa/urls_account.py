"""A person's own second factors, under /account/factors/."""

from django.urls import URLPattern, URLResolver, path

from tenants.mfa import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.factors, name="mfa-factors"),
    path("totp/add/", views.totp_add, name="mfa-totp-add"),
    path("webauthn/add/", views.webauthn_add, name="mfa-webauthn-add"),
    path(
        "webauthn/options/",
        views.webauthn_register_options,
        name="mfa-webauthn-register-options",
    ),
    path("webauthn/register/", views.webauthn_register, name="mfa-webauthn-register"),
    path(
        "<str:kind>/<int:factor_id>/remove/",
        views.factor_remove,
        name="mfa-factor-remove",
    ),
    path("recovery-codes/", views.recovery_codes, name="mfa-recovery-codes"),
]
