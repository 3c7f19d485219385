"""SCIM 2.0 endpoints under /scim/v2/ (authenticated by a token with the scim scope)."""

from django.urls import URLPattern, URLResolver, path, re_path

from tenants.scim import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("Users", apis.UserListView.as_view(), name="scim-users"),
    path("Users/<str:scim_id>", apis.UserDetailView.as_view(), name="scim-user"),
    path("Groups", apis.GroupListView.as_view(), name="scim-groups"),
    path("Groups/<str:scim_id>", apis.GroupDetailView.as_view(), name="scim-group"),
    path(
        "ServiceProviderConfig",
        apis.ServiceProviderConfigView.as_view(),
        name="scim-service-provider-config",
    ),
    path("ResourceTypes", apis.ResourceTypeListView.as_view(), name="scim-resource-types"),
    path(
        "ResourceTypes/<str:name>",
        apis.ResourceTypeDetailView.as_view(),
        name="scim-resource-type",
    ),
    path("Schemas", apis.SchemaListView.as_view(), name="scim-schemas"),
    path("Schemas/<str:schema_id>", apis.SchemaDetailView.as_view(), name="scim-schema"),
    re_path(r"^.*$", apis.not_found),
]
