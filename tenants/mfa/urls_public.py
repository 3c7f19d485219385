"""The second step of sign-in, under /accounts/mfa/."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
