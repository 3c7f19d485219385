"""SCIM 2.0 endpoints under /scim/v2/ (authenticated by a token with the scim scope)."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
