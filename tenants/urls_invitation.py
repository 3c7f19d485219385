"""The public invitation page, mounted at ``/invitations/<secret>/``."""

from django.urls import URLPattern, path

from tenants import views

urlpatterns: list[URLPattern] = [
    path("", views.invitation_accept, name="invitation-accept"),
]
