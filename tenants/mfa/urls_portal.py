"""The organization's second-factor policy, under /o/<org_slug>/security/mfa/."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
