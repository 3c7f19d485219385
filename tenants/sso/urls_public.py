"""Sign-in by single sign-on, under /accounts/sso/: discovery by email, start, callback."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
