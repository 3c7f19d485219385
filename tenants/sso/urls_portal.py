"""The Security page under /o/<org_slug>/security/: identity provider, email domains."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
