"""The SCIM token section of the Security page, under /o/<org_slug>/security/scim/."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
