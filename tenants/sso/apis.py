"""REST API of single sign-on settings: the identity provider and the email domains.

Owners only (``security.manage``), and only from a signed-in session: an API token acts for the
organization, not for a person, and whoever can map IdP groups to roles can make themselves an
owner, so no token may read or change these settings (403 ``session_required``).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.errors import PermissionMissing
from tenants.models import ApiToken, EmailDomain, IdentityProvider
from tenants.rest import OldestFirstPagination, OrgAPIView, error_responses_for, paginated
from tenants.roles import Perm, Role
from tenants.sso import selectors, services
from tenants.sso.views import callback_url

_errors = error_responses_for(
    {
        403: "Not an owner (`security.manage`), or called with an API token "
        "(`session_required`): these settings are changed from a signed-in session only.",
        409: "The email domain is claimed already, or verified by another organization "
        "(`domain_taken`), or is the last verified domain while SSO is required.",
    }
)
_TAG = ["single sign-on"]


class _SecurityApi(OrgAPIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if isinstance(request.auth, ApiToken):
            raise PermissionMissing(
                "Single sign-on settings are changed by an owner signed in to the portal; an API "
                "token cannot read or change them.",
                code="session_required",
            )
        super().initial(request, *args, **kwargs)


class ProviderOutputSerializer(serializers.Serializer):
    configured = serializers.BooleanField()
    protocol = serializers.CharField()
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    issuer = serializers.CharField()
    client_id = serializers.CharField()
    has_client_secret = serializers.BooleanField(help_text="The secret itself is never returned.")
    scopes = serializers.CharField()
    groups_claim = serializers.CharField()
    role_mapping = serializers.DictField(child=serializers.ChoiceField(choices=Role.choices))
    sso_required = serializers.BooleanField()
    redirect_uri = serializers.CharField(help_text="Register this at the identity provider.")

    class Meta:
        ref_name = "SsoProvider"


def _provider_data(provider: IdentityProvider | None, redirect_uri: str) -> dict[str, Any]:
    if provider is None:
        return {
            "configured": False,
            "protocol": "oidc",
            "name": "",
            "enabled": False,
            "issuer": "",
            "client_id": "",
            "has_client_secret": False,
            "scopes": "openid email profile",
            "groups_claim": "groups",
            "role_mapping": {},
            "sso_required": False,
            "redirect_uri": redirect_uri,
        }
    return {
        "configured": True,
        "protocol": provider.protocol,
        "name": provider.name,
        "enabled": provider.enabled,
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "has_client_secret": bool(provider.client_secret_encrypted),
        "scopes": provider.scopes,
        "groups_claim": provider.groups_claim,
        "role_mapping": provider.role_mapping,
        "sso_required": provider.sso_required,
        "redirect_uri": redirect_uri,
    }


class ProviderApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "PUT": Perm.SECURITY_MANAGE}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        issuer = serializers.CharField(max_length=500)
        client_id = serializers.CharField(max_length=255)
        client_secret = serializers.CharField(
            max_length=1000,
            required=False,
            allow_blank=True,
            write_only=True,
            help_text="Omit or leave empty to keep the stored secret.",
        )
        scopes = serializers.CharField(
            max_length=255, required=False, default="openid email profile"
        )
        groups_claim = serializers.CharField(max_length=100, required=False, default="groups")
        role_mapping = serializers.DictField(
            child=serializers.ChoiceField(choices=Role.choices), allow_empty=True
        )
        sso_required = serializers.BooleanField(required=False, default=False)
        enabled = serializers.BooleanField(required=False, default=True)

        class Meta:
            ref_name = "SsoProviderUpdate"

    @extend_schema(
        tags=_TAG,
        summary="The organization's OpenID Connect provider",
        responses={200: ProviderOutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        provider = selectors.provider_get(org=self.org)
        return Response(_provider_data(provider, callback_url(request._request)))

    @extend_schema(
        tags=_TAG,
        summary="Set the organization's OpenID Connect provider",
        request=InputSerializer,
        responses={200: ProviderOutputSerializer, **_errors(400)},
    )
    def put(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        data["client_secret"] = data.get("client_secret") or None
        provider = services.provider_update(org=self.org, actor=self.actor, **data)
        return Response(_provider_data(provider, callback_url(request._request)))


class DomainOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    domain = serializers.CharField()
    verified = serializers.SerializerMethodField()
    verified_at = serializers.DateTimeField(allow_null=True)
    verified_by = serializers.CharField()
    txt_record_name = serializers.SerializerMethodField()
    txt_record_value = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "SsoEmailDomain"

    def get_verified(self, obj: EmailDomain) -> bool:
        return obj.verified_at is not None

    def get_txt_record_name(self, obj: EmailDomain) -> str:
        return services.domain_txt_name(obj)

    def get_txt_record_value(self, obj: EmailDomain) -> str:
        return services.domain_txt_value(obj)


class DomainListApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "POST": Perm.SECURITY_MANAGE}
    pagination_class = OldestFirstPagination

    class InputSerializer(serializers.Serializer):
        domain = serializers.CharField(max_length=253)

        class Meta:
            ref_name = "SsoEmailDomainCreate"

    @extend_schema(
        tags=_TAG,
        summary="List the organization's email domains",
        responses={200: DomainOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            view=self,
            request=request,
            queryset=selectors.domain_list(org=self.org),
            serializer_class=DomainOutputSerializer,
        )

    @extend_schema(
        tags=_TAG,
        summary="Claim an email domain",
        description="Publish the TXT record the answer names, then verify.",
        request=InputSerializer,
        responses={201: DomainOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        record = services.domain_add(
            org=self.org, actor=self.actor, domain=serializer.validated_data["domain"]
        )
        return Response(DomainOutputSerializer(record).data, status=status.HTTP_201_CREATED)


class DomainDetailApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "DELETE": Perm.SECURITY_MANAGE}

    @extend_schema(
        tags=_TAG,
        summary="One email domain",
        responses={200: DomainOutputSerializer, **_errors()},
    )
    def get(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        return Response(DomainOutputSerializer(record).data)

    @extend_schema(
        tags=_TAG,
        summary="Remove an email domain",
        responses={204: None, **_errors(409)},
    )
    def delete(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        services.domain_remove(org=self.org, actor=self.actor, domain=record)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DomainVerifyApi(_SecurityApi):
    permissions_required = {"POST": Perm.SECURITY_MANAGE}

    @extend_schema(
        tags=_TAG,
        summary="Verify an email domain by its DNS TXT record",
        request=None,
        responses={200: DomainOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        record = services.domain_verify_dns(org=self.org, actor=self.actor, domain=record)
        return Response(DomainOutputSerializer(record).data)
